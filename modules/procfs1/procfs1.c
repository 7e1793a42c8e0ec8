// SPDX-License-Identifier: GPL-2.0-only
/*
 * procfs1: a read-only file in /proc with fixed content.
 *
 *	$ cat /proc/kmodlab_hello
 *	Hello from the kmodlab procfs1 module.
 *
 * Since Linux 5.6 a /proc file is described by struct proc_ops (before, it
 * took a struct file_operations).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/string.h>

#define PROCFS1_NAME "kmodlab_hello"

static const char procfs1_text[] = "Hello from the kmodlab procfs1 module.\n";

static struct proc_dir_entry *procfs1_entry;

static ssize_t procfs1_read(struct file *file, char __user *buf,
			    size_t count, loff_t *ppos)
{
	/* Copies what is left after *ppos and advances it: 0 means EOF. */
	return simple_read_from_buffer(buf, count, ppos, procfs1_text,
				       strlen(procfs1_text));
}

static const struct proc_ops procfs1_ops = {
	.proc_read = procfs1_read,
	.proc_lseek = default_llseek,
};

static int __init procfs1_start(void)
{
	procfs1_entry = proc_create(PROCFS1_NAME, 0444, NULL, &procfs1_ops);
	if (!procfs1_entry) {
		pr_err("cannot create /proc/%s\n", PROCFS1_NAME);
		return -ENOMEM;
	}

	pr_info("created /proc/%s\n", PROCFS1_NAME);
	return 0;
}

static void __exit procfs1_stop(void)
{
	proc_remove(procfs1_entry);
	pr_info("removed /proc/%s\n", PROCFS1_NAME);
}

module_init(procfs1_start);
module_exit(procfs1_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 8: a read-only file in /proc");
