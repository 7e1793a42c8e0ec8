// SPDX-License-Identifier: GPL-2.0-only
/*
 * symexport: a counter that other modules call through an exported symbol.
 *
 * symexport_count() is exported with EXPORT_SYMBOL_GPL(): a module with a
 * GPL-compatible licence may call it as it calls the kernel's own
 * functions.  Each call adds one to a counter and keeps the name the caller
 * gave.  Both show in sysfs (last_caller says "none" before the first call):
 *
 *	$ cat /sys/kernel/symexport/calls
 *	1
 *	$ cat /sys/kernel/symexport/last_caller
 *	symuse
 *
 * The kernel refuses to load a module that calls symexport_count() while
 * symexport is not loaded (unknown symbol), and refuses to unload symexport
 * while such a module is loaded: it counts each one in
 * /sys/module/symexport/refcnt and links it in /sys/module/symexport/holders.
 *
 * Building a module that calls symexport_count() needs symexport's
 * Module.symvers (symbol, CRC, module), which kbuild writes next to
 * symexport.ko: modpost reads it through KBUILD_EXTRA_SYMBOLS.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/string.h>
#include <linux/sysfs.h>

#include "symexport.h"

#define SYMEXPORT_DIR "symexport"
#define SYMEXPORT_NAME_LEN 56

/* Guards both: a reader sees a count and the caller that made it. */
static DEFINE_MUTEX(symexport_lock);
static unsigned int symexport_calls;
static char symexport_last[SYMEXPORT_NAME_LEN] = "none";
static struct kobject *symexport_kobj;

/**
 * symexport_count() - count one call and remember who made it
 * @who: the caller's name, such as its KBUILD_MODNAME (cut to 55 bytes)
 *
 * Context: process context; may sleep.
 * Return: the number of calls since symexport was loaded, this one included.
 */
unsigned int symexport_count(const char *who)
{
	unsigned int calls;

	if (!who)
		who = "?";

	mutex_lock(&symexport_lock);
	calls = ++symexport_calls;
	strscpy(symexport_last, who, sizeof(symexport_last));
	mutex_unlock(&symexport_lock);

	pr_info("call %u from %s\n", calls, who);
	return calls;
}
EXPORT_SYMBOL_GPL(symexport_count);

static ssize_t calls_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	ssize_t len;

	mutex_lock(&symexport_lock);
	len = sysfs_emit(buf, "%u\n", symexport_calls);
	mutex_unlock(&symexport_lock);
	return len;
}

static ssize_t last_caller_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	ssize_t len;

	mutex_lock(&symexport_lock);
	len = sysfs_emit(buf, "%s\n", symexport_last);
	mutex_unlock(&symexport_lock);
	return len;
}

/* __ATTR_RO: mode 0444, everyone may read, nobody may write. */
static struct kobj_attribute calls_attr = __ATTR_RO(calls);
static struct kobj_attribute last_caller_attr = __ATTR_RO(last_caller);

static struct attribute *symexport_attrs[] = {
	&calls_attr.attr,
	&last_caller_attr.attr,
	NULL,
};

static const struct attribute_group symexport_group = {
	.attrs = symexport_attrs,
};

static int __init symexport_start(void)
{
	int ret;

	symexport_kobj = kobject_create_and_add(SYMEXPORT_DIR, kernel_kobj);
	if (!symexport_kobj) {
		pr_err("cannot create /sys/kernel/%s\n", SYMEXPORT_DIR);
		return -ENOMEM;
	}

	ret = sysfs_create_group(symexport_kobj, &symexport_group);
	if (ret) {
		pr_err("cannot create the files of /sys/kernel/%s: error %d\n",
		       SYMEXPORT_DIR, ret);
		kobject_put(symexport_kobj);
		return ret;
	}

	pr_info("exporting symexport_count(), calls counted in /sys/kernel/%s\n",
		SYMEXPORT_DIR);
	return 0;
}

/* No caller is left: the kernel does not unload a module still in use. */
static void __exit symexport_stop(void)
{
	sysfs_remove_group(symexport_kobj, &symexport_group);
	kobject_put(symexport_kobj);
	pr_info("removed /sys/kernel/%s after %u calls\n", SYMEXPORT_DIR,
		symexport_calls);
}

module_init(symexport_start);
module_exit(symexport_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 11: a counter other modules call through an exported symbol");
