// SPDX-License-Identifier: GPL-2.0
/*
 * squatter: a test-only module that takes what a lab module needs before the lab
 * can load it, so that the kernel itself refuses the lab module's init:
 *
 *   major=N label=NAME  holds character major N under NAME in /proc/devices
 *                       (under the lab module's own name, the pre-load check of
 *                       /proc/devices sees nothing wrong, and register_chrdev()
 *                       answers -EBUSY); major=0 holds none
 *   classname=NAME      creates the device class NAME (the lab module's
 *                       class_create() then fails with -EEXIST)
 */
#include <linux/device.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/module.h>

static int major;
module_param(major, int, 0444);
MODULE_PARM_DESC(major, "Character major to hold (0: none)");

static char *label = "squatter";
module_param(label, charp, 0444);
MODULE_PARM_DESC(label, "Name the major shows under in /proc/devices");

static char *classname;
module_param(classname, charp, 0444);
MODULE_PARM_DESC(classname, "Device class to create (none if unset)");

static struct class *held_class;

static int __init squatter_init(void)
{
	int ret;

	if (major) {
		ret = register_chrdev_region(MKDEV(major, 0), 1, label);
		if (ret)
			return ret;
		pr_info("squatter: holding major %d as %s\n", major, label);
	}
	if (classname) {
		held_class = class_create(THIS_MODULE, classname);
		if (IS_ERR(held_class)) {
			ret = PTR_ERR(held_class);
			held_class = NULL;
			goto release_major;
		}
		pr_info("squatter: holding class %s\n", classname);
	}
	return 0;

release_major:
	if (major)
		unregister_chrdev_region(MKDEV(major, 0), 1);
	return ret;
}

static void __exit squatter_exit(void)
{
	if (held_class)
		class_destroy(held_class);
	if (major)
		unregister_chrdev_region(MKDEV(major, 0), 1);
	pr_info("squatter: released\n");
}

module_init(squatter_init);
module_exit(squatter_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodlab VM-tier test: holds what a lab module needs");
