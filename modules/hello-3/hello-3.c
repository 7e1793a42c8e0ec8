// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello-3: __init, __initdata and __exit.
 *
 * Code marked __init and data marked __initdata are only needed while the
 * module loads; the kernel frees that memory once the init function has
 * returned.  Code marked __exit is only needed to unload; a kernel built
 * without module unloading drops it altogether.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

/* Read once, in hello3_start(), and discarded after loading. */
static int hello3_answer __initdata = 3;

static int __init hello3_start(void)
{
	pr_info("hello, world; __initdata value is %d\n", hello3_answer);
	return 0;
}

static void __exit hello3_stop(void)
{
	pr_info("goodbye, world (__exit)\n");
}

module_init(hello3_start);
module_exit(hello3_stop);

MODULE_LICENSE("GPL");
