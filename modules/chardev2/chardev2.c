// SPDX-License-Identifier: GPL-2.0-only
/*
 * chardev2: a character device whose message is set and read with ioctl().
 *
 * The device keeps one message of up to 63 bytes, shared by all its users.
 * read() and write() see it as a file's content would be seen, ioctl() sees
 * it as a C string; the requests are in chardev2.h, which user space
 * includes as well:
 *
 *	$ printf kmodlab > /dev/chardev2
 *	$ cat /dev/chardev2
 *	kmodlab
 *
 *	struct chardev2_msg msg = { "hello" };
 *	int fd = open("/dev/chardev2", O_RDWR);
 *
 *	ioctl(fd, CHARDEV2_IOC_SET_MSG, &msg);	the message is "hello"
 *	ioctl(fd, CHARDEV2_IOC_GET_MSG, &msg);	msg.text is "hello"
 *	ioctl(fd, CHARDEV2_IOC_GET_BYTE, 1);	returns 'e' (101)
 *
 * write() replaces the message with the bytes written; more than 63 are
 * refused with EINVAL, and so is a SET_MSG text without a NUL in its 64
 * bytes.  SET_MSG and XCHG_MSG change the message, so they need a file
 * opened for writing (else EBADF).  GET_BYTE takes an index below the
 * message's length (else EINVAL).  Any other request fails with ENOTTY,
 * which is what an ioctl a driver does not know must return.
 *
 * The major number is dynamic: user space finds the device by its name,
 * and the requests do not depend on the major.  A mutex serialises the
 * users of the message, so any number of processes may hold the device
 * open and call it at once.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "chardev2.h"

#define CHARDEV2_NAME "chardev2"
#define CHARDEV2_GREETING "hello from chardev2\n"

/* The message: len bytes of text, always followed by zeroes. */
static DEFINE_MUTEX(chardev2_lock);
static struct chardev2_msg chardev2_message = { .text = CHARDEV2_GREETING };
static size_t chardev2_len = sizeof(CHARDEV2_GREETING) - 1;

static atomic_t chardev2_ioctls = ATOMIC_INIT(0);

static dev_t chardev2_devt;
static struct cdev chardev2_cdev;
static struct class *chardev2_class;
static struct device *chardev2_device;

/* Replace the message with len bytes of text (len < CHARDEV2_MSG_SIZE). */
static void chardev2_set(const char *text, size_t len)
{
	memset(&chardev2_message, 0, sizeof(chardev2_message));
	memcpy(chardev2_message.text, text, len);
	chardev2_len = len;
}

static ssize_t chardev2_read(struct file *file, char __user *buf,
			     size_t count, loff_t *ppos)
{
	struct chardev2_msg copy;
	size_t len;

	mutex_lock(&chardev2_lock);
	copy = chardev2_message;
	len = chardev2_len;
	mutex_unlock(&chardev2_lock);

	/* The message from *ppos on, then end of file. */
	return simple_read_from_buffer(buf, count, ppos, copy.text, len);
}

static ssize_t chardev2_write(struct file *file, const char __user *buf,
			      size_t count, loff_t *ppos)
{
	char text[CHARDEV2_MSG_SIZE];

	if (count >= CHARDEV2_MSG_SIZE)
		return -EINVAL;
	if (copy_from_user(text, buf, count))
		return -EFAULT;

	mutex_lock(&chardev2_lock);
	chardev2_set(text, count);
	mutex_unlock(&chardev2_lock);

	return count;
}

/* Copy a struct chardev2_msg in and check that its text ends with a NUL. */
static int chardev2_get_text(struct chardev2_msg *msg, void __user *uarg,
			     size_t *len)
{
	if (copy_from_user(msg, uarg, sizeof(*msg)))
		return -EFAULT;

	*len = strnlen(msg->text, sizeof(msg->text));
	return *len < sizeof(msg->text) ? 0 : -EINVAL;
}

static long chardev2_ioctl(struct file *file, unsigned int cmd,
			   unsigned long arg)
{
	void __user *uarg = (void __user *)arg;
	struct chardev2_msg msg;
	size_t len;
	long ret;

	atomic_inc(&chardev2_ioctls);

	switch (cmd) {
	case CHARDEV2_IOC_SET_MSG:
		if (!(file->f_mode & FMODE_WRITE))
			return -EBADF;
		ret = chardev2_get_text(&msg, uarg, &len);
		if (ret)
			return ret;

		mutex_lock(&chardev2_lock);
		chardev2_set(msg.text, len);
		mutex_unlock(&chardev2_lock);
		return 0;

	case CHARDEV2_IOC_GET_MSG:
		mutex_lock(&chardev2_lock);
		msg = chardev2_message;
		mutex_unlock(&chardev2_lock);

		if (copy_to_user(uarg, &msg, sizeof(msg)))
			return -EFAULT;
		return 0;

	case CHARDEV2_IOC_XCHG_MSG: {
		struct chardev2_msg old;

		if (!(file->f_mode & FMODE_WRITE))
			return -EBADF;
		ret = chardev2_get_text(&msg, uarg, &len);
		if (ret)
			return ret;

		mutex_lock(&chardev2_lock);
		old = chardev2_message;
		chardev2_set(msg.text, len);
		mutex_unlock(&chardev2_lock);

		/* The new message stays set even if this copy fails. */
		if (copy_to_user(uarg, &old, sizeof(old)))
			return -EFAULT;
		return 0;
	}

	case CHARDEV2_IOC_GET_BYTE:
		/* arg is the index itself, not the address of one. */
		mutex_lock(&chardev2_lock);
		if (arg < chardev2_len)
			ret = (unsigned char)chardev2_message.text[arg];
		else
			ret = -EINVAL;
		mutex_unlock(&chardev2_lock);
		return ret;

	default:
		return -ENOTTY;
	}
}

static const struct file_operations chardev2_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.read = chardev2_read,
	.write = chardev2_write,
	.unlocked_ioctl = chardev2_ioctl,
	/* The same requests from 32-bit programs: same layout, same numbers. */
	.compat_ioctl = compat_ptr_ioctl,
};

/* Called when udev asks for the node's name and mode: make it 0666. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
static char *chardev2_devnode(const struct device *dev, umode_t *mode)
#else
static char *chardev2_devnode(struct device *dev, umode_t *mode)
#endif
{
	if (mode)
		*mode = 0666;
	return NULL;
}

static int __init chardev2_start(void)
{
	int ret;

	ret = alloc_chrdev_region(&chardev2_devt, 0, 1, CHARDEV2_NAME);
	if (ret) {
		pr_err("cannot allocate a major number: error %d\n", ret);
		return ret;
	}

	cdev_init(&chardev2_cdev, &chardev2_fops);
	chardev2_cdev.owner = THIS_MODULE;
	ret = cdev_add(&chardev2_cdev, chardev2_devt, 1);
	if (ret) {
		pr_err("cannot add the character device: error %d\n", ret);
		goto err_region;
	}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	chardev2_class = class_create(CHARDEV2_NAME);
#else
	chardev2_class = class_create(THIS_MODULE, CHARDEV2_NAME);
#endif
	if (IS_ERR(chardev2_class)) {
		ret = PTR_ERR(chardev2_class);
		pr_err("cannot create class %s: error %d\n", CHARDEV2_NAME, ret);
		goto err_cdev;
	}
	chardev2_class->devnode = chardev2_devnode;

	chardev2_device = device_create(chardev2_class, NULL, chardev2_devt,
					NULL, CHARDEV2_NAME);
	if (IS_ERR(chardev2_device)) {
		ret = PTR_ERR(chardev2_device);
		pr_err("cannot create /dev/%s: error %d\n", CHARDEV2_NAME, ret);
		goto err_class;
	}

	pr_info("registered with dynamic major %d, /dev/%s ready for ioctl type '%c'\n",
		MAJOR(chardev2_devt), CHARDEV2_NAME, CHARDEV2_IOC_MAGIC);
	return 0;

err_class:
	class_destroy(chardev2_class);
err_cdev:
	cdev_del(&chardev2_cdev);
err_region:
	unregister_chrdev_region(chardev2_devt, 1);
	return ret;
}

static void __exit chardev2_stop(void)
{
	device_destroy(chardev2_class, chardev2_devt);
	class_destroy(chardev2_class);
	cdev_del(&chardev2_cdev);
	unregister_chrdev_region(chardev2_devt, 1);
	pr_info("unregistered major %d after %d ioctl calls\n",
		MAJOR(chardev2_devt), atomic_read(&chardev2_ioctls));
}

module_init(chardev2_start);
module_exit(chardev2_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 13: a char device whose message is set and read with ioctl");
