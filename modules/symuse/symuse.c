// SPDX-License-Identifier: GPL-2.0-only
/*
 * symuse: a module that calls a function another module exports.
 *
 * At load it calls symexport_count(), which the symexport module exports
 * with EXPORT_SYMBOL_GPL(), and prints what it returned: the number of
 * calls symexport has counted.  symexport shows the call in sysfs:
 *
 *	# modprobe symuse
 *	$ cat /sys/kernel/symexport/last_caller
 *	symuse
 *	$ ls /sys/module/symexport/holders
 *	symuse
 *
 * The kernel resolves symexport_count() when it loads symuse, so symexport
 * must be loaded first: modprobe does it (depmod records the dependency in
 * modules.dep), insmod fails with "Unknown symbol".  While symuse is loaded,
 * symexport cannot be unloaded.
 *
 * Building symuse needs symexport's Module.symvers: without it modpost does
 * not know symexport_count() and fails with
 * 'ERROR: modpost: "symexport_count" [.../symuse.ko] undefined!'.
 *
 *	make -C /lib/modules/$(uname -r)/build M=$PWD \
 *		KBUILD_EXTRA_SYMBOLS=/path/to/symexport/Module.symvers
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

/*
 * symexport's interface (its symexport.h).  symuse is a DKMS package of its
 * own and cannot include a file of symexport's package, so it carries the
 * declaration itself; it must stay the same as symexport's.
 */
unsigned int symexport_count(const char *who);

static int __init symuse_start(void)
{
	unsigned int calls = symexport_count(KBUILD_MODNAME);

	pr_info("symexport_count() returned %u\n", calls);
	return 0;
}

static void __exit symuse_stop(void)
{
	pr_info("goodbye; symexport may be unloaded now\n");
}

module_init(symuse_start);
module_exit(symuse_stop);

/* EXPORT_SYMBOL_GPL() symbols are only for GPL-compatible modules. */
MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 12: a module that calls another module's exported function");
