// SPDX-License-Identifier: GPL-2.0-only
/*
 * memory: a character device on a fixed major that remembers one byte.
 *
 * The device registers major 60 (set aside for local, experimental use)
 * unless the "major" parameter says otherwise:
 *
 *	modprobe memory major=61
 *
 * A write keeps the last byte it was given and returns success for all of
 * them; a read returns that single byte, once per open, then end of file:
 *
 *	# printf abc > /dev/memory
 *	$ cat /dev/memory
 *	c
 *
 * Until the first write there is nothing to return: reads give end of file
 * at once.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#define MEMORY_NAME "memory"
#define MEMORY_EMPTY (-1)

static int major = 60;
module_param(major, int, 0444);
MODULE_PARM_DESC(major, "Major device number to register (1-511)");

/* The last byte written as 0..255, or MEMORY_EMPTY before any write. */
static atomic_t memory_byte = ATOMIC_INIT(MEMORY_EMPTY);

static struct class *memory_class;
static struct device *memory_device;

static int memory_open(struct inode *inode, struct file *file)
{
	return nonseekable_open(inode, file);
}

static ssize_t memory_read(struct file *file, char __user *buf,
			   size_t count, loff_t *ppos)
{
	int value = atomic_read(&memory_byte);
	unsigned char byte;

	if (value == MEMORY_EMPTY)
		return 0;

	byte = value;
	/* One byte at offset 0; anything after it is end of file. */
	return simple_read_from_buffer(buf, count, ppos, &byte, 1);
}

static ssize_t memory_write(struct file *file, const char __user *buf,
			    size_t count, loff_t *ppos)
{
	unsigned char byte;

	if (!count)
		return 0;

	/* Only the last byte is kept; the others are accepted and dropped. */
	if (get_user(byte, (const unsigned char __user *)buf + count - 1))
		return -EFAULT;

	atomic_set(&memory_byte, byte);
	return count;
}

static const struct file_operations memory_fops = {
	.owner = THIS_MODULE,
	.open = memory_open,
	.read = memory_read,
	.write = memory_write,
};

/* Called when udev asks for the node's name and mode: make it 0666. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
static char *memory_devnode(const struct device *dev, umode_t *mode)
#else
static char *memory_devnode(struct device *dev, umode_t *mode)
#endif
{
	if (mode)
		*mode = 0666;
	return NULL;
}

static int __init memory_start(void)
{
	int ret;

	/* 0 would ask register_chrdev() for a dynamic major: not here. */
	if (major <= 0 || major >= CHRDEV_MAJOR_MAX) {
		pr_err("major %d is out of range (1-%d)\n", major,
		       CHRDEV_MAJOR_MAX - 1);
		return -EINVAL;
	}

	ret = register_chrdev(major, MEMORY_NAME, &memory_fops);
	if (ret < 0) {
		pr_err("cannot register major %d: error %d (in use? see /proc/devices)\n",
		       major, ret);
		return ret;
	}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	memory_class = class_create(MEMORY_NAME);
#else
	memory_class = class_create(THIS_MODULE, MEMORY_NAME);
#endif
	if (IS_ERR(memory_class)) {
		ret = PTR_ERR(memory_class);
		pr_err("cannot create class %s: error %d\n", MEMORY_NAME, ret);
		goto err_chrdev;
	}
	memory_class->devnode = memory_devnode;

	memory_device = device_create(memory_class, NULL, MKDEV(major, 0),
				      NULL, MEMORY_NAME);
	if (IS_ERR(memory_device)) {
		ret = PTR_ERR(memory_device);
		pr_err("cannot create /dev/%s: error %d\n", MEMORY_NAME, ret);
		goto err_class;
	}

	pr_info("registered on major %d, /dev/%s ready\n", major, MEMORY_NAME);
	return 0;

err_class:
	class_destroy(memory_class);
err_chrdev:
	unregister_chrdev(major, MEMORY_NAME);
	return ret;
}

static void __exit memory_stop(void)
{
	device_destroy(memory_class, MKDEV(major, 0));
	class_destroy(memory_class);
	unregister_chrdev(major, MEMORY_NAME);
	pr_info("unregistered major %d\n", major);
}

module_init(memory_start);
module_exit(memory_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 10: a char device on a fixed major, keeps one byte");
