// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello-1: the smallest possible module.
 *
 * The kernel's module loader calls the function named init_module() when
 * the module is inserted and cleanup_module() when it is removed.  No
 * macro is needed to find them: the names alone are enough.  Newer code
 * uses module_init()/module_exit() instead (see hello-2).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/printk.h>

int init_module(void)
{
	pr_info("hello, world (init_module)\n");

	/* Anything but 0 would make insmod/modprobe fail. */
	return 0;
}

void cleanup_module(void)
{
	pr_info("goodbye, world (cleanup_module)\n");
}

/* Without a licence tag the kernel is tainted and GPL-only symbols refused. */
MODULE_LICENSE("GPL");
