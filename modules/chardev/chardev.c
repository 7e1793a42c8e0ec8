// SPDX-License-Identifier: GPL-2.0-only
/*
 * chardev: a character device that says how often it has been opened.
 *
 * The major number is chosen by the kernel (alloc_chrdev_region()) and
 * shows in /proc/devices as "chardev".  A device class makes udev create
 * /dev/chardev, readable and writable by everyone.
 *
 *	$ cat /dev/chardev
 *	chardev: opened 3 times
 *
 * Each open gets its own copy of the message, so every reader sees it once
 * and then end of file.  Writing is not supported and fails with EINVAL.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/version.h>

#define CHARDEV_NAME "chardev"
#define CHARDEV_MSG_LEN 64

struct chardev_msg {
	size_t len;
	char text[CHARDEV_MSG_LEN];
};

static dev_t chardev_devt;
static struct cdev chardev_cdev;
static struct class *chardev_class;
static struct device *chardev_device;
static atomic_t chardev_opens = ATOMIC_INIT(0);

static int chardev_open(struct inode *inode, struct file *file)
{
	struct chardev_msg *msg;
	int opens;

	msg = kmalloc(sizeof(*msg), GFP_KERNEL);
	if (!msg)
		return -ENOMEM;

	opens = atomic_inc_return(&chardev_opens);
	msg->len = scnprintf(msg->text, sizeof(msg->text),
			     CHARDEV_NAME ": opened %d times\n", opens);
	file->private_data = msg;

	return nonseekable_open(inode, file);
}

static int chardev_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static ssize_t chardev_read(struct file *file, char __user *buf,
			    size_t count, loff_t *ppos)
{
	struct chardev_msg *msg = file->private_data;

	/* Copies what is left after *ppos and advances it: 0 means EOF. */
	return simple_read_from_buffer(buf, count, ppos, msg->text, msg->len);
}

static ssize_t chardev_write(struct file *file, const char __user *buf,
			     size_t count, loff_t *ppos)
{
	return -EINVAL;
}

static const struct file_operations chardev_fops = {
	.owner = THIS_MODULE,
	.open = chardev_open,
	.release = chardev_release,
	.read = chardev_read,
	.write = chardev_write,
};

/* Called when udev asks for the node's name and mode: make it 0666. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
static char *chardev_devnode(const struct device *dev, umode_t *mode)
#else
static char *chardev_devnode(struct device *dev, umode_t *mode)
#endif
{
	if (mode)
		*mode = 0666;
	return NULL;
}

static int __init chardev_start(void)
{
	int ret;

	ret = alloc_chrdev_region(&chardev_devt, 0, 1, CHARDEV_NAME);
	if (ret) {
		pr_err("cannot allocate a major number: error %d\n", ret);
		return ret;
	}

	cdev_init(&chardev_cdev, &chardev_fops);
	chardev_cdev.owner = THIS_MODULE;
	ret = cdev_add(&chardev_cdev, chardev_devt, 1);
	if (ret) {
		pr_err("cannot add the character device: error %d\n", ret);
		goto err_region;
	}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	chardev_class = class_create(CHARDEV_NAME);
#else
	chardev_class = class_create(THIS_MODULE, CHARDEV_NAME);
#endif
	if (IS_ERR(chardev_class)) {
		ret = PTR_ERR(chardev_class);
		pr_err("cannot create class %s: error %d\n", CHARDEV_NAME, ret);
		goto err_cdev;
	}
	chardev_class->devnode = chardev_devnode;

	chardev_device = device_create(chardev_class, NULL, chardev_devt, NULL,
				       CHARDEV_NAME);
	if (IS_ERR(chardev_device)) {
		ret = PTR_ERR(chardev_device);
		pr_err("cannot create /dev/%s: error %d\n", CHARDEV_NAME, ret);
		goto err_class;
	}

	pr_info("registered with dynamic major %d, /dev/%s ready\n",
		MAJOR(chardev_devt), CHARDEV_NAME);
	return 0;

err_class:
	class_destroy(chardev_class);
err_cdev:
	cdev_del(&chardev_cdev);
err_region:
	unregister_chrdev_region(chardev_devt, 1);
	return ret;
}

static void __exit chardev_stop(void)
{
	device_destroy(chardev_class, chardev_devt);
	class_destroy(chardev_class);
	cdev_del(&chardev_cdev);
	unregister_chrdev_region(chardev_devt, 1);
	pr_info("unregistered major %d after %d opens\n",
		MAJOR(chardev_devt), atomic_read(&chardev_opens));
}

module_init(chardev_start);
module_exit(chardev_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 7: a character device with a dynamic major");
