// SPDX-License-Identifier: GPL-2.0-only
/*
 * static-key: a branch that costs nothing until user space switches it on.
 *
 * DEFINE_STATIC_KEY_FALSE() makes a key that starts disabled.  Code that
 * tests it with static_branch_unlikely() is compiled to a no-op where the
 * branch would be, with the branch's code out of line; static_branch_enable()
 * rewrites that no-op into a jump to it (jump labels: CONFIG_JUMP_LABEL, as
 * Debian builds its kernels), and static_branch_disable() puts the no-op
 * back.  The test itself costs neither a load nor a conditional jump.
 *
 * /sys/kernel/static_key/key shows the key and switches it:
 *
 *	$ cat /sys/kernel/static_key/key
 *	disabled
 *	# echo enable > /sys/kernel/static_key/key
 *
 * Each read of /sys/kernel/static_key/branch runs the code with the branch
 * and says whether the branch was taken; /sys/kernel/static_key/counts
 * counts both outcomes:
 *
 *	$ cat /sys/kernel/static_key/branch
 *	taken
 *	$ cat /sys/kernel/static_key/counts
 *	taken: 1
 *	skipped: 4
 *
 * Switching a key patches kernel code on every CPU, which takes a mutex and
 * may sleep: it is for slow paths, such as a write to a sysfs file.  The key
 * lives in the module, so nothing needs to be switched back on unload.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/init.h>
#include <linux/jump_label.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/string.h>
#include <linux/sysfs.h>

#define STATIC_KEY_DIR "static_key"

static DEFINE_STATIC_KEY_FALSE(demo_key);

static atomic_t branch_taken = ATOMIC_INIT(0);
static atomic_t branch_skipped = ATOMIC_INIT(0);
static struct kobject *demo_kobj;

/* The code with the branch: true when the branch was taken. */
static bool demo_path(void)
{
	if (static_branch_unlikely(&demo_key)) {
		atomic_inc(&branch_taken);
		return true;
	}
	atomic_inc(&branch_skipped);
	return false;
}

static ssize_t key_show(struct kobject *kobj, struct kobj_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%s\n", static_key_enabled(&demo_key) ?
			  "enabled" : "disabled");
}

static ssize_t key_store(struct kobject *kobj, struct kobj_attribute *attr,
			 const char *buf, size_t count)
{
	/* Switching to the state the key is in already changes nothing. */
	if (sysfs_streq(buf, "enable")) {
		static_branch_enable(&demo_key);
		pr_info("key enabled: the branch is now a jump\n");
	} else if (sysfs_streq(buf, "disable")) {
		static_branch_disable(&demo_key);
		pr_info("key disabled: the branch is now a no-op\n");
	} else {
		return -EINVAL;
	}
	return count;
}

static ssize_t branch_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%s\n", demo_path() ? "taken" : "skipped");
}

static ssize_t counts_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "taken: %d\nskipped: %d\n",
			  atomic_read(&branch_taken),
			  atomic_read(&branch_skipped));
}

static struct kobj_attribute key_attr = __ATTR_RW(key);
static struct kobj_attribute branch_attr = __ATTR_RO(branch);
static struct kobj_attribute counts_attr = __ATTR_RO(counts);

static struct attribute *demo_attrs[] = {
	&key_attr.attr,
	&branch_attr.attr,
	&counts_attr.attr,
	NULL,
};

static const struct attribute_group demo_group = {
	.attrs = demo_attrs,
};

static int __init static_key_start(void)
{
	int ret;

	demo_kobj = kobject_create_and_add(STATIC_KEY_DIR, kernel_kobj);
	if (!demo_kobj) {
		pr_err("cannot create /sys/kernel/%s\n", STATIC_KEY_DIR);
		return -ENOMEM;
	}
	ret = sysfs_create_group(demo_kobj, &demo_group);
	if (ret) {
		pr_err("cannot create the files of /sys/kernel/%s: error %d\n",
		       STATIC_KEY_DIR, ret);
		kobject_put(demo_kobj);
		return ret;
	}

	pr_info("created /sys/kernel/%s, the key is %s\n", STATIC_KEY_DIR,
		static_key_enabled(&demo_key) ? "enabled" : "disabled");
	return 0;
}

static void __exit static_key_stop(void)
{
	sysfs_remove_group(demo_kobj, &demo_group);
	kobject_put(demo_kobj);
	pr_info("removed /sys/kernel/%s (branch taken %d times, skipped %d times)\n",
		STATIC_KEY_DIR, atomic_read(&branch_taken),
		atomic_read(&branch_skipped));
}

module_init(static_key_start);
module_exit(static_key_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 26: a static key switched from user space");
