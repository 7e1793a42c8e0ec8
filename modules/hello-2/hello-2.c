// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello-2: entry and exit points named by module_init() and module_exit().
 *
 * The two functions can have any name and can be static; the macros tell
 * the kernel which one to call on load and which on unload.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static int hello2_start(void)
{
	pr_info("hello, world (module_init)\n");
	return 0;
}

static void hello2_stop(void)
{
	pr_info("goodbye, world (module_exit)\n");
}

module_init(hello2_start);
module_exit(hello2_stop);

MODULE_LICENSE("GPL");
