// SPDX-License-Identifier: GPL-2.0-only
/*
 * vinput: a framework for virtual input devices.
 *
 * An input driver allocates a struct input_dev, says which events it can
 * report (event types, key codes, ...), registers it, and from then on
 * reports events with input_report_key()/input_event() and input_sync().
 * The input core hands them to its handlers: evdev (/dev/input/eventN),
 * the console keyboard, ...
 *
 * vinput does the part all virtual input devices share, so that a type
 * of device (a keyboard, a mouse, ...) only says what it reports and how
 * text turns into events.  A module defines a struct vinput_type
 * (vinput.h) and registers it with vinput_register(); vinput exports the
 * functions for that with EXPORT_SYMBOL_GPL().  Devices of a registered
 * type are then created and destroyed from user space, through the
 * attributes of the device class "vinput":
 *
 *	$ cat /sys/class/vinput/types
 *	vkbd
 *	# echo vkbd > /sys/class/vinput/export	(creates vinput1)
 *	# echo 1 > /sys/class/vinput/unexport	(destroys it)
 *
 * or by the type's module itself with vinput_create().  Each device is
 * one input device plus a character device, /dev/vinputN (root only:
 * whoever can write it can type on the machine), that turns what is
 * written to it into events (the type's send()) and says what the last
 * event was when read (the type's read()).  All devices share one major,
 * listed as "vinput" in /proc/devices; the minor is N.
 *
 * Lifetimes: vinput_unregister() destroys every device of the type before
 * it returns, so the type's module can go.  A /dev/vinputN that is still
 * open then fails reads and writes with ENODEV; the memory of the device
 * lives until it is closed.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/init.h>
#include <linux/input.h>
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "vinput.h"

#define VINPUT_NAME "vinput"
#define VINPUT_MAX_DEVICES 32
/* Longest text a write may carry, and longest text a read returns. */
#define VINPUT_BUF_LEN 64

/* The class attribute callbacks' types changed in Linux 6.4. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define VINPUT_CONST const
#else
#define VINPUT_CONST
#endif

struct vinput {
	struct device dev;		/* /sys/class/vinput/vinputN */
	struct cdev cdev;		/* /dev/vinputN */
	struct mutex lock;		/* serialises send/read; guards dead */
	bool dead;			/* destroyed: no more send/read */
	struct vinput_type *type;
	struct input_dev *input;
	struct list_head node;		/* in vinput_devices */
	int id;
	char phys[32];
	unsigned long priv[];		/* type->priv_size bytes */
};

static dev_t vinput_devt;
static struct class *vinput_class;

/* Guards the lists, and creating and destroying devices. */
static DEFINE_MUTEX(vinput_mutex);
static LIST_HEAD(vinput_types);
static LIST_HEAD(vinput_devices);
static DEFINE_IDA(vinput_ida);

/**
 * vinput_input() - the input device of a virtual device
 * @vi: the device, as vinput passes it to the type's callbacks
 *
 * Return: the input device to report events on.
 */
struct input_dev *vinput_input(struct vinput *vi)
{
	return vi->input;
}
EXPORT_SYMBOL_GPL(vinput_input);

/**
 * vinput_priv() - the type's state for a virtual device
 * @vi: the device, as vinput passes it to the type's callbacks
 *
 * Return: type->priv_size bytes, zeroed when the device was created.
 */
void *vinput_priv(struct vinput *vi)
{
	return vi->priv;
}
EXPORT_SYMBOL_GPL(vinput_priv);

static int vinput_open(struct inode *inode, struct file *file)
{
	/* The open file keeps the cdev, so the device's memory, alive. */
	file->private_data = container_of(inode->i_cdev, struct vinput, cdev);
	return nonseekable_open(inode, file);
}

static ssize_t vinput_read(struct file *file, char __user *buf, size_t count,
			   loff_t *ppos)
{
	struct vinput *vi = file->private_data;
	char text[VINPUT_BUF_LEN];
	int len;

	mutex_lock(&vi->lock);
	if (vi->dead)
		len = -ENODEV;
	else if (!vi->type->read)
		len = -EINVAL;
	else
		len = vi->type->read(vi, text, sizeof(text));
	mutex_unlock(&vi->lock);

	if (len < 0)
		return len;
	return simple_read_from_buffer(buf, count, ppos, text,
				       min_t(size_t, len, sizeof(text) - 1));
}

static ssize_t vinput_write(struct file *file, const char __user *buf,
			    size_t count, loff_t *ppos)
{
	struct vinput *vi = file->private_data;
	char text[VINPUT_BUF_LEN];
	int ret;

	if (!count)
		return 0;
	if (count >= sizeof(text))
		return -EINVAL;
	if (copy_from_user(text, buf, count))
		return -EFAULT;
	text[count] = '\0';

	mutex_lock(&vi->lock);
	ret = vi->dead ? -ENODEV : vi->type->send(vi, text, count);
	mutex_unlock(&vi->lock);

	return ret ? ret : count;
}

static const struct file_operations vinput_fops = {
	.owner = THIS_MODULE,
	.open = vinput_open,
	.read = vinput_read,
	.write = vinput_write,
};

static ssize_t type_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct vinput *vi = container_of(dev, struct vinput, dev);

	/* Attributes go before the type can: device_del() waits for us. */
	return sysfs_emit(buf, "%s\n", vi->type->name);
}
static DEVICE_ATTR_RO(type);

static struct attribute *vinput_dev_attrs[] = {
	&dev_attr_type.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vinput_dev);

/* The last reference is gone: no open file, no sysfs user. */
static void vinput_release(struct device *dev)
{
	kfree(container_of(dev, struct vinput, dev));
}

static struct vinput_type *vinput_find_type(const char *name)
{
	struct vinput_type *type;

	list_for_each_entry(type, &vinput_types, node)
		if (sysfs_streq(type->name, name))
			return type;
	return NULL;
}

static bool vinput_type_registered(struct vinput_type *wanted)
{
	struct vinput_type *type;

	list_for_each_entry(type, &vinput_types, node)
		if (type == wanted)
			return true;
	return false;
}

/* Called with vinput_mutex held.  Returns the new device's id or an errno. */
static int vinput_create_locked(struct vinput_type *type)
{
	struct vinput *vi;
	int id, ret;

	id = ida_alloc_max(&vinput_ida, VINPUT_MAX_DEVICES - 1, GFP_KERNEL);
	if (id < 0)
		return id;

	vi = kzalloc(sizeof(*vi) + type->priv_size, GFP_KERNEL);
	if (!vi) {
		ida_free(&vinput_ida, id);
		return -ENOMEM;
	}
	vi->id = id;
	vi->type = type;
	mutex_init(&vi->lock);

	/* From here on put_device() frees vi (vinput_release()). */
	device_initialize(&vi->dev);
	vi->dev.class = vinput_class;
	vi->dev.devt = MKDEV(MAJOR(vinput_devt), id);
	vi->dev.groups = vinput_dev_groups;
	vi->dev.release = vinput_release;
	ret = dev_set_name(&vi->dev, VINPUT_NAME "%d", id);
	if (ret)
		goto err_put;

	vi->input = input_allocate_device();
	if (!vi->input) {
		ret = -ENOMEM;
		goto err_put;
	}
	snprintf(vi->phys, sizeof(vi->phys), VINPUT_NAME "%d/input0", id);
	vi->input->name = type->name;
	vi->input->phys = vi->phys;
	vi->input->id.bustype = BUS_VIRTUAL;
	vi->input->dev.parent = &vi->dev;

	ret = type->init(vi, vi->input);
	if (ret)
		goto err_free_input;

	/* Adds /sys/class/vinput/vinputN, then /dev/vinputN appears. */
	cdev_init(&vi->cdev, &vinput_fops);
	vi->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&vi->cdev, &vi->dev);
	if (ret)
		goto err_free_input;

	ret = input_register_device(vi->input);
	if (ret)
		goto err_del;

	list_add_tail(&vi->node, &vinput_devices);
	pr_info("created %s of type %s\n", dev_name(&vi->dev), type->name);
	return id;

err_del:
	cdev_device_del(&vi->cdev, &vi->dev);
err_free_input:
	input_free_device(vi->input);
err_put:
	ida_free(&vinput_ida, id);
	put_device(&vi->dev);
	pr_err("cannot create a device of type %s: error %d\n", type->name,
	       ret);
	return ret;
}

/* Called with vinput_mutex held. */
static void vinput_destroy_locked(struct vinput *vi)
{
	list_del(&vi->node);

	/* Waits for a send or read in progress; none starts after this. */
	mutex_lock(&vi->lock);
	vi->dead = true;
	mutex_unlock(&vi->lock);

	/* Releases any key still pressed, then frees the input device. */
	input_unregister_device(vi->input);
	cdev_device_del(&vi->cdev, &vi->dev);
	ida_free(&vinput_ida, vi->id);
	pr_info("removed %s\n", dev_name(&vi->dev));
	put_device(&vi->dev);
}

/**
 * vinput_register() - make a type of virtual input device available
 * @type: the type; it must stay valid until vinput_unregister()
 *
 * Context: process context; may sleep.
 * Return: 0, -EINVAL for a type without name, init or send, or -EEXIST
 * when a type of that name is registered already.
 */
int vinput_register(struct vinput_type *type)
{
	int ret = 0;

	if (!type->name || !type->name[0] || !type->init || !type->send)
		return -EINVAL;

	mutex_lock(&vinput_mutex);
	if (vinput_find_type(type->name))
		ret = -EEXIST;
	else
		list_add_tail(&type->node, &vinput_types);
	mutex_unlock(&vinput_mutex);

	if (ret)
		pr_err("cannot register device type %s: error %d\n", type->name,
		       ret);
	else
		pr_info("registered device type %s\n", type->name);
	return ret;
}
EXPORT_SYMBOL_GPL(vinput_register);

/**
 * vinput_unregister() - destroy a type's devices and forget the type
 * @type: a type vinput_register() accepted
 *
 * Context: process context; may sleep.
 */
void vinput_unregister(struct vinput_type *type)
{
	struct vinput *vi, *next;

	mutex_lock(&vinput_mutex);
	list_for_each_entry_safe(vi, next, &vinput_devices, node)
		if (vi->type == type)
			vinput_destroy_locked(vi);
	list_del(&type->node);
	mutex_unlock(&vinput_mutex);

	pr_info("unregistered device type %s\n", type->name);
}
EXPORT_SYMBOL_GPL(vinput_unregister);

/**
 * vinput_create() - create a virtual input device of a registered type
 * @type: a type vinput_register() accepted
 *
 * Context: process context; may sleep.
 * Return: the device's number N (/dev/vinputN) or a negative errno:
 * -ENOSPC when all 32 numbers are taken, -ENODEV for a type that is not
 * registered.
 */
int vinput_create(struct vinput_type *type)
{
	int ret;

	mutex_lock(&vinput_mutex);
	ret = vinput_type_registered(type) ? vinput_create_locked(type)
					   : -ENODEV;
	mutex_unlock(&vinput_mutex);
	return ret;
}
EXPORT_SYMBOL_GPL(vinput_create);

/* /sys/class/vinput/export: a type's name creates a device of that type. */
static ssize_t export_store(VINPUT_CONST struct class *class,
			    VINPUT_CONST struct class_attribute *attr,
			    const char *buf, size_t count)
{
	struct vinput_type *type;
	int ret;

	mutex_lock(&vinput_mutex);
	type = vinput_find_type(buf);
	ret = type ? vinput_create_locked(type) : -ENODEV;
	mutex_unlock(&vinput_mutex);

	return ret < 0 ? ret : count;
}
static CLASS_ATTR_WO(export);

/* /sys/class/vinput/unexport: a device's number destroys that device. */
static ssize_t unexport_store(VINPUT_CONST struct class *class,
			      VINPUT_CONST struct class_attribute *attr,
			      const char *buf, size_t count)
{
	struct vinput *vi;
	unsigned int id;
	int ret;

	ret = kstrtouint(buf, 10, &id);
	if (ret)
		return ret;

	ret = -ENODEV;
	mutex_lock(&vinput_mutex);
	list_for_each_entry(vi, &vinput_devices, node) {
		if (vi->id == id) {
			vinput_destroy_locked(vi);
			ret = 0;
			break;
		}
	}
	mutex_unlock(&vinput_mutex);

	return ret ? ret : count;
}
static CLASS_ATTR_WO(unexport);

/* /sys/class/vinput/types: the registered types, one name a line. */
static ssize_t types_show(VINPUT_CONST struct class *class,
			  VINPUT_CONST struct class_attribute *attr, char *buf)
{
	struct vinput_type *type;
	int len = 0;

	mutex_lock(&vinput_mutex);
	list_for_each_entry(type, &vinput_types, node)
		len += sysfs_emit_at(buf, len, "%s\n", type->name);
	mutex_unlock(&vinput_mutex);
	return len;
}
static CLASS_ATTR_RO(types);

static const struct class_attribute *vinput_class_attrs[] = {
	&class_attr_export,
	&class_attr_unexport,
	&class_attr_types,
};

static void vinput_remove_class_files(int count)
{
	while (count--)
		class_remove_file(vinput_class, vinput_class_attrs[count]);
}

static int __init vinput_start(void)
{
	int i, ret;

	ret = alloc_chrdev_region(&vinput_devt, 0, VINPUT_MAX_DEVICES,
				  VINPUT_NAME);
	if (ret) {
		pr_err("cannot allocate a major number: error %d\n", ret);
		return ret;
	}

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	vinput_class = class_create(VINPUT_NAME);
#else
	vinput_class = class_create(THIS_MODULE, VINPUT_NAME);
#endif
	if (IS_ERR(vinput_class)) {
		ret = PTR_ERR(vinput_class);
		pr_err("cannot create class %s: error %d\n", VINPUT_NAME, ret);
		goto err_region;
	}

	for (i = 0; i < ARRAY_SIZE(vinput_class_attrs); i++) {
		ret = class_create_file(vinput_class, vinput_class_attrs[i]);
		if (ret) {
			pr_err("cannot create /sys/class/%s/%s: error %d\n",
			       VINPUT_NAME, vinput_class_attrs[i]->attr.name,
			       ret);
			vinput_remove_class_files(i);
			goto err_class;
		}
	}

	pr_info("class %s ready on major %d, for up to %d devices\n",
		VINPUT_NAME, MAJOR(vinput_devt), VINPUT_MAX_DEVICES);
	return 0;

err_class:
	class_destroy(vinput_class);
err_region:
	unregister_chrdev_region(vinput_devt, VINPUT_MAX_DEVICES);
	return ret;
}

/*
 * No type is left: a type's module uses our symbols, so the kernel
 * unloads it first, and it unregisters its type (and devices) then.
 */
static void __exit vinput_stop(void)
{
	vinput_remove_class_files(ARRAY_SIZE(vinput_class_attrs));
	WARN_ON(!list_empty(&vinput_types) || !list_empty(&vinput_devices));
	class_destroy(vinput_class);
	unregister_chrdev_region(vinput_devt, VINPUT_MAX_DEVICES);
	ida_destroy(&vinput_ida);
	pr_info("class %s removed\n", VINPUT_NAME);
}

module_init(vinput_start);
module_exit(vinput_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 35: a framework for virtual input devices");
