// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello-sysfs: an integer that user space reads and writes through sysfs.
 *
 *	$ cat /sys/kernel/hello_sysfs/value
 *	0
 *	# echo 42 > /sys/kernel/hello_sysfs/value
 *	# echo abc > /sys/kernel/hello_sysfs/value
 *	... Invalid argument
 *
 * A kobject under /sys/kernel (kernel_kobj) gives the directory; a
 * kobj_attribute gives the file and its show/store callbacks.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/compiler.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/sysfs.h>

#define HELLO_SYSFS_DIR "hello_sysfs"

static int hello_sysfs_value;
static struct kobject *hello_sysfs_kobj;

static ssize_t value_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(hello_sysfs_value));
}

static ssize_t value_store(struct kobject *kobj, struct kobj_attribute *attr,
			   const char *buf, size_t count)
{
	int value;
	int ret;

	/* Accepts an optional sign and a trailing newline, nothing else. */
	ret = kstrtoint(buf, 10, &value);
	if (ret)
		return ret;

	WRITE_ONCE(hello_sysfs_value, value);
	return count;
}

/* Mode 0644: everyone may read, root may write. */
static struct kobj_attribute value_attr = __ATTR_RW(value);

static int __init hello_sysfs_start(void)
{
	int ret;

	hello_sysfs_kobj = kobject_create_and_add(HELLO_SYSFS_DIR, kernel_kobj);
	if (!hello_sysfs_kobj) {
		pr_err("cannot create /sys/kernel/%s\n", HELLO_SYSFS_DIR);
		return -ENOMEM;
	}

	ret = sysfs_create_file(hello_sysfs_kobj, &value_attr.attr);
	if (ret) {
		pr_err("cannot create /sys/kernel/%s/value: error %d\n",
		       HELLO_SYSFS_DIR, ret);
		kobject_put(hello_sysfs_kobj);
		return ret;
	}

	pr_info("created /sys/kernel/%s/value (value=%d)\n", HELLO_SYSFS_DIR,
		hello_sysfs_value);
	return 0;
}

static void __exit hello_sysfs_stop(void)
{
	sysfs_remove_file(hello_sysfs_kobj, &value_attr.attr);
	kobject_put(hello_sysfs_kobj);
	pr_info("removed /sys/kernel/%s (value was %d)\n", HELLO_SYSFS_DIR,
		hello_sysfs_value);
}

module_init(hello_sysfs_start);
module_exit(hello_sysfs_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 9: a read/write integer in sysfs");
