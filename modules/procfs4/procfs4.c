// SPDX-License-Identifier: GPL-2.0-only
/*
 * procfs4: a /proc file written record by record with seq_file.
 *
 * /proc/kmodlab_seq lists the squares of 0 to records - 1 ("records" is a
 * parameter, 1000 by default), one record a line:
 *
 *	$ head -n 3 /proc/kmodlab_seq
 *	0 squared is 0
 *	1 squared is 1
 *	2 squared is 4
 *
 * The file is far larger than one read() returns, and no buffer of it ever
 * exists whole: seq_file asks the module for records one at a time, through
 * four operations, and formats them into a page-sized buffer it hands out
 * over as many read() calls as the reader makes:
 *
 *	start(pos)	position the iterator at record pos, or say (NULL)
 *			there is none: called to begin each batch of
 *			records, so at least once per read()
 *	show(v)		format the record v into the buffer
 *	next(v, pos)	step to the next record and count it in *pos, NULL
 *			after the last one
 *	stop(v)		end of this batch, whether or not the records
 *			are over: where a lock start() took is dropped
 *
 * A read() that stops in the middle of a record gets the rest of it next
 * time; a reader never sees a record cut or repeated.  The record number
 * alone says what a record is, so *pos is the whole iterator: start() and
 * next() return it, and there is nothing to lock.
 *
 * proc_create_seq() gives the file seq_file's own open, read, lseek and
 * release (seq_open(), seq_read(), seq_lseek(), seq_release()).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

#define PROCFS4_NAME "kmodlab_seq"
#define PROCFS4_RECORDS 1000
#define PROCFS4_MAX_RECORDS 1000000

static unsigned int records = PROCFS4_RECORDS;
module_param(records, uint, 0444);
MODULE_PARM_DESC(records, "Number of records /proc/kmodlab_seq lists (1-1000000)");

static struct proc_dir_entry *procfs4_entry;

static void *procfs4_seq_start(struct seq_file *m, loff_t *pos)
{
	return *pos < records ? pos : NULL;
}

static void *procfs4_seq_next(struct seq_file *m, void *v, loff_t *pos)
{
	/* *pos must move on even past the last record. */
	++*pos;
	return *pos < records ? pos : NULL;
}

static void procfs4_seq_stop(struct seq_file *m, void *v)
{
	/* Nothing was taken in start(). */
}

static int procfs4_seq_show(struct seq_file *m, void *v)
{
	long long n = *(loff_t *)v;

	seq_printf(m, "%lld squared is %lld\n", n, n * n);
	return 0;
}

static const struct seq_operations procfs4_seq_ops = {
	.start = procfs4_seq_start,
	.next = procfs4_seq_next,
	.stop = procfs4_seq_stop,
	.show = procfs4_seq_show,
};

static int __init procfs4_start(void)
{
	if (records < 1 || records > PROCFS4_MAX_RECORDS) {
		pr_err("records=%u is out of range (1-%d)\n", records,
		       PROCFS4_MAX_RECORDS);
		return -EINVAL;
	}

	procfs4_entry = proc_create_seq(PROCFS4_NAME, 0444, NULL,
					&procfs4_seq_ops);
	if (!procfs4_entry) {
		pr_err("cannot create /proc/%s\n", PROCFS4_NAME);
		return -ENOMEM;
	}

	pr_info("created /proc/%s with %u records\n", PROCFS4_NAME, records);
	return 0;
}

/* proc_remove() waits for the reads under way and closes the open files. */
static void __exit procfs4_stop(void)
{
	proc_remove(procfs4_entry);
	pr_info("removed /proc/%s\n", PROCFS4_NAME);
}

module_init(procfs4_start);
module_exit(procfs4_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 16: a /proc file written record by record with seq_file");
