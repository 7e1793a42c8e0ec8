// SPDX-License-Identifier: GPL-2.0-only
/*
 * startstop: the exit half of the module (the entry point is in start.c).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

static void __exit startstop_stop(void)
{
	pr_info("goodbye, world (from stop.c)\n");
}

module_exit(startstop_stop);
