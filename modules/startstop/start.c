// SPDX-License-Identifier: GPL-2.0-only
/*
 * startstop: one module built from two source files.
 *
 * This file holds the entry point and the module's description; stop.c
 * holds the exit point.  Kbuild links both objects into startstop.ko
 * (see startstop-objs in the Kbuild file).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int __init startstop_start(void)
{
	pr_info("hello, world (from start.c)\n");
	return 0;
}

module_init(startstop_start);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 6: one module from two source files");
