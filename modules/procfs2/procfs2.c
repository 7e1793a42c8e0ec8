// SPDX-License-Identifier: GPL-2.0-only
/*
 * procfs2: a /proc file that keeps what user space writes to it.
 *
 *	# echo kmodlab > /proc/kmodlab_buffer
 *	$ cat /proc/kmodlab_buffer
 *	kmodlab
 *
 * The file holds at most 1024 bytes.  Each write() replaces the whole
 * content with the bytes it carries, all or nothing: a write of more than
 * 1024 bytes is refused with EFBIG (file too large) and the content stays
 * as it was.  Reads return the content from the file position on, then end
 * of file.  The file is empty after loading.
 *
 * The data of a write is in the writer's memory: the module copies it in
 * with memdup_user() (copy_from_user() into a new buffer), which fails with
 * EFAULT, never crashes, when the address is bad.  Only then is the content
 * replaced, under a mutex, so a reader sees one write or the other, never a
 * mix of both.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/err.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define PROCFS2_NAME "kmodlab_buffer"
#define PROCFS2_SIZE 1024

static DEFINE_MUTEX(procfs2_lock);
static char procfs2_buffer[PROCFS2_SIZE];
static size_t procfs2_len;
static unsigned int procfs2_writes;

static struct proc_dir_entry *procfs2_entry;

static ssize_t procfs2_read(struct file *file, char __user *buf,
			    size_t count, loff_t *ppos)
{
	ssize_t ret;

	/* A fault while copying out fails the read with EFAULT. */
	mutex_lock(&procfs2_lock);
	ret = simple_read_from_buffer(buf, count, ppos, procfs2_buffer,
				      procfs2_len);
	mutex_unlock(&procfs2_lock);
	return ret;
}

static ssize_t procfs2_write(struct file *file, const char __user *buf,
			     size_t count, loff_t *ppos)
{
	char *data;

	if (count > PROCFS2_SIZE)
		return -EFBIG;

	data = memdup_user(buf, count);
	if (IS_ERR(data))
		return PTR_ERR(data);

	mutex_lock(&procfs2_lock);
	memcpy(procfs2_buffer, data, count);
	procfs2_len = count;
	procfs2_writes++;
	mutex_unlock(&procfs2_lock);

	kfree(data);
	return count;
}

static const struct proc_ops procfs2_ops = {
	.proc_read = procfs2_read,
	.proc_write = procfs2_write,
	.proc_lseek = default_llseek,
};

static int __init procfs2_start(void)
{
	/* 0644: everyone may read, root may write. */
	procfs2_entry = proc_create(PROCFS2_NAME, 0644, NULL, &procfs2_ops);
	if (!procfs2_entry) {
		pr_err("cannot create /proc/%s\n", PROCFS2_NAME);
		return -ENOMEM;
	}

	pr_info("created /proc/%s, holding up to %d bytes\n", PROCFS2_NAME,
		PROCFS2_SIZE);
	return 0;
}

/* proc_remove() waits for the reads and writes under way to return. */
static void __exit procfs2_stop(void)
{
	proc_remove(procfs2_entry);
	pr_info("removed /proc/%s after %u writes\n", PROCFS2_NAME,
		procfs2_writes);
}

module_init(procfs2_start);
module_exit(procfs2_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 14: a /proc file that keeps what is written to it");
