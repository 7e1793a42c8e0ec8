// SPDX-License-Identifier: GPL-2.0-only
/*
 * procfs3: a /proc file with an owner, a group, a mode and a size, that
 * behaves like a small regular file.
 *
 * Like any file, a /proc entry has an owner, a group, permission bits and a
 * size, which stat() and ls show and the kernel's permission checks use.
 * proc_create() sets the mode; proc_set_user() and proc_set_size() set the
 * rest.  Here the owner comes from two parameters, so that a group of
 * users may write the file while the others may only read it:
 *
 *	# modprobe procfs3 owner_gid=100
 *	$ ls -ln /proc/kmodlab_owned
 *	-rw-rw-r-- 1 0 100 256 ... /proc/kmodlab_owned
 *
 * The size procfs shows is whatever the module declares: here the file's
 * capacity, 256 bytes, not the length of its content (a /proc entry that
 * declares nothing shows 0).
 *
 * The entry has its own open and release operations, and they give it the
 * behaviour of a regular file.  Each open starts from a private copy of the
 * content (empty when opened for writing with O_TRUNC, as "echo > file"
 * does); reads and writes work on that copy, at the file position or, with
 * O_APPEND, at its end; the release of a file that was written puts its
 * copy in place of the content:
 *
 *	# echo first > /proc/kmodlab_owned
 *	# echo second >> /proc/kmodlab_owned
 *	$ cat /proc/kmodlab_owned
 *	first
 *	second
 *
 * A reader therefore sees the content as it was when it opened the file,
 * however many read() calls it makes, and the last writer to close wins.
 * Writing past 256 bytes fails with ENOSPC, the first 256 being kept, as
 * on a full disk.
 *
 * The module may be unloaded while the file is open: proc_remove() waits
 * for the calls under way, then runs the release operation of every file
 * still open, and their later calls fail with EIO.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cred.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/uidgid.h>

#define PROCFS3_NAME "kmodlab_owned"
#define PROCFS3_SIZE 256
/* Owner and group may read and write, the others may read. */
#define PROCFS3_MODE 0664
#define PROCFS3_DEFAULT_UID 0
#define PROCFS3_DEFAULT_GID 100

static unsigned int owner_uid = PROCFS3_DEFAULT_UID;
module_param(owner_uid, uint, 0444);
MODULE_PARM_DESC(owner_uid, "User ID that owns /proc/kmodlab_owned");

static unsigned int owner_gid = PROCFS3_DEFAULT_GID;
module_param(owner_gid, uint, 0444);
MODULE_PARM_DESC(owner_gid, "Group ID of /proc/kmodlab_owned, whose members may write it");

/* The content each open starts from. */
static DEFINE_MUTEX(procfs3_lock);
static char procfs3_content[PROCFS3_SIZE];
static size_t procfs3_len;
static unsigned int procfs3_updates;

static struct proc_dir_entry *procfs3_entry;

/* One open file's copy of the content. */
struct procfs3_file {
	struct mutex lock;	/* threads sharing the open file */
	bool written;		/* to be put in place at release */
	size_t len;
	char data[PROCFS3_SIZE];
};

static int procfs3_open(struct inode *inode, struct file *file)
{
	struct procfs3_file *pf;

	pf = kzalloc(sizeof(*pf), GFP_KERNEL);
	if (!pf)
		return -ENOMEM;
	mutex_init(&pf->lock);

	if ((file->f_mode & FMODE_WRITE) && (file->f_flags & O_TRUNC)) {
		/* Emptied: replaces the content at release, written or not. */
		pf->written = true;
	} else {
		mutex_lock(&procfs3_lock);
		memcpy(pf->data, procfs3_content, procfs3_len);
		pf->len = procfs3_len;
		mutex_unlock(&procfs3_lock);
	}

	file->private_data = pf;
	return 0;
}

static ssize_t procfs3_read(struct file *file, char __user *buf,
			    size_t count, loff_t *ppos)
{
	struct procfs3_file *pf = file->private_data;
	ssize_t ret;

	mutex_lock(&pf->lock);
	ret = simple_read_from_buffer(buf, count, ppos, pf->data, pf->len);
	mutex_unlock(&pf->lock);
	return ret;
}

static ssize_t procfs3_write(struct file *file, const char __user *buf,
			     size_t count, loff_t *ppos)
{
	struct procfs3_file *pf = file->private_data;
	loff_t pos;
	ssize_t ret;

	mutex_lock(&pf->lock);
	pos = (file->f_flags & O_APPEND) ? pf->len : *ppos;
	if (pos < 0) {
		ret = -EINVAL;
		goto out;
	}
	if (!count) {
		ret = 0;
		goto out;
	}
	if (pos >= PROCFS3_SIZE) {
		ret = -ENOSPC;
		goto out;
	}

	/* What fits is written; the caller learns the rest from the count. */
	count = min_t(size_t, count, PROCFS3_SIZE - pos);
	if (copy_from_user(pf->data + pos, buf, count)) {
		ret = -EFAULT;
		goto out;
	}

	/* A write after a seek past the end leaves a hole of zeroes. */
	if (pos > pf->len)
		memset(pf->data + pf->len, 0, pos - pf->len);
	pf->len = max_t(size_t, pf->len, pos + count);
	pf->written = true;
	*ppos = pos + count;
	ret = count;
out:
	mutex_unlock(&pf->lock);
	return ret;
}

static int procfs3_release(struct inode *inode, struct file *file)
{
	struct procfs3_file *pf = file->private_data;

	if (pf->written) {
		mutex_lock(&procfs3_lock);
		memcpy(procfs3_content, pf->data, pf->len);
		procfs3_len = pf->len;
		procfs3_updates++;
		mutex_unlock(&procfs3_lock);
	}

	mutex_destroy(&pf->lock);
	kfree(pf);
	return 0;
}

static const struct proc_ops procfs3_ops = {
	.proc_open = procfs3_open,
	.proc_read = procfs3_read,
	.proc_write = procfs3_write,
	.proc_lseek = default_llseek,
	.proc_release = procfs3_release,
};

static int __init procfs3_start(void)
{
	kuid_t uid = make_kuid(&init_user_ns, owner_uid);
	kgid_t gid = make_kgid(&init_user_ns, owner_gid);

	if (!uid_valid(uid) || !gid_valid(gid)) {
		pr_err("owner_uid=%u owner_gid=%u: not a valid user and group\n",
		       owner_uid, owner_gid);
		return -EINVAL;
	}

	procfs3_entry = proc_create(PROCFS3_NAME, PROCFS3_MODE, NULL,
				   &procfs3_ops);
	if (!procfs3_entry) {
		pr_err("cannot create /proc/%s\n", PROCFS3_NAME);
		return -ENOMEM;
	}

	/*
	 * The file's inode copies owner and size from the entry when the name
	 * is first looked up: set them right away, before user space looks.
	 */
	proc_set_user(procfs3_entry, uid, gid);
	proc_set_size(procfs3_entry, PROCFS3_SIZE);

	pr_info("created /proc/%s, mode %04o, owner %u:%u, size %d\n",
		PROCFS3_NAME, PROCFS3_MODE, owner_uid, owner_gid, PROCFS3_SIZE);
	return 0;
}

static void __exit procfs3_stop(void)
{
	proc_remove(procfs3_entry);
	pr_info("removed /proc/%s after %u updates\n", PROCFS3_NAME,
		procfs3_updates);
}

module_init(procfs3_start);
module_exit(procfs3_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 15: a /proc file with its own owner, mode and size");
