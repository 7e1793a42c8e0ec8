// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello-4: describing a module.
 *
 * The MODULE_*() macros store text in the .modinfo section of the .ko file.
 * modinfo(8) prints it without loading the module:
 *
 *	modinfo -F author hello-4
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init hello4_start(void)
{
	pr_info("hello, world; see modinfo for who wrote me\n");
	return 0;
}

static void __exit hello4_stop(void)
{
	pr_info("goodbye, world (described module)\n");
}

module_init(hello4_start);
module_exit(hello4_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 4: a module that describes itself to modinfo");
