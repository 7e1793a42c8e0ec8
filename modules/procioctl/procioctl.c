// SPDX-License-Identifier: GPL-2.0-only
/*
 * procioctl: a /proc file whose contents are set and read with ioctl().
 *
 * /proc/kmodlab_ioctl holds an integer (0 to 1000) and a short name.
 * Reading the file shows both as text:
 *
 *	$ cat /proc/kmodlab_ioctl
 *	value: 0
 *	name: kmodlab
 *
 * A program changes and reads them with ioctl() on the same file, using the
 * request numbers of procioctl.h:
 *
 *	int fd = open("/proc/kmodlab_ioctl", O_RDWR);
 *	int v = 42;
 *
 *	ioctl(fd, PROCIOCTL_SET_VALUE, &v);	0, or -1 and errno EINVAL
 *	ioctl(fd, PROCIOCTL_GET_VALUE, &v);	v is 42 again
 *
 * Requests that change something need the file open for writing (EBADF
 * otherwise), so only root may make them (mode 0644); anyone may read.
 * A request this file does not know fails with ENOTTY, the errno that means
 * "no such ioctl for this file"; a value or a name out of range fails with
 * EINVAL and changes nothing.
 *
 * The ioctl handler is the .proc_ioctl member of struct proc_ops (and
 * .proc_compat_ioctl for 32-bit programs).  The text comes from a seq_file
 * (single_open()), which handles partial reads and the file position.
 * proc_remove() on unload waits for ioctl() calls that are running and makes
 * later ones on files still open fail, so the module never runs after it is
 * gone.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/compat.h>
#include <linux/ctype.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "procioctl.h"

#define PROCIOCTL_ENTRY "kmodlab_ioctl"
#define PROCIOCTL_DEFAULT_VALUE 0
#define PROCIOCTL_DEFAULT_NAME "kmodlab"

struct procioctl_state {
	int value;
	char name[PROCIOCTL_NAME_LEN];	/* NUL-terminated and zero-padded */
};

/* The value and the name are read and changed under this lock. */
static DEFINE_MUTEX(procioctl_lock);
static struct procioctl_state procioctl_state = {
	.value = PROCIOCTL_DEFAULT_VALUE,
	.name = PROCIOCTL_DEFAULT_NAME,
};

static struct proc_dir_entry *procioctl_entry;

/* A consistent copy of the state, for callers that must not hold the lock. */
static void procioctl_snapshot(struct procioctl_state *copy)
{
	mutex_lock(&procioctl_lock);
	*copy = procioctl_state;
	mutex_unlock(&procioctl_lock);
}

static void procioctl_set_value(int value)
{
	mutex_lock(&procioctl_lock);
	procioctl_state.value = value;
	mutex_unlock(&procioctl_lock);
}

static void procioctl_set_name(const char *name)
{
	mutex_lock(&procioctl_lock);
	strscpy_pad(procioctl_state.name, name, sizeof(procioctl_state.name));
	mutex_unlock(&procioctl_lock);
}

static void procioctl_reset(void)
{
	mutex_lock(&procioctl_lock);
	procioctl_state.value = PROCIOCTL_DEFAULT_VALUE;
	strscpy_pad(procioctl_state.name, PROCIOCTL_DEFAULT_NAME,
		    sizeof(procioctl_state.name));
	mutex_unlock(&procioctl_lock);
}

/* 1 to PROCIOCTL_NAME_LEN - 1 characters of A-Z a-z 0-9 . _ -, then NUL. */
static bool procioctl_name_ok(const char *name)
{
	size_t len = strnlen(name, PROCIOCTL_NAME_LEN);
	size_t i;

	if (len == 0 || len == PROCIOCTL_NAME_LEN)
		return false;
	for (i = 0; i < len; i++) {
		char c = name[i];

		if (!(isascii(c) && isalnum(c)) && c != '.' && c != '_' &&
		    c != '-')
			return false;
	}
	return true;
}

static long procioctl_ioctl(struct file *file, unsigned int cmd,
			    unsigned long arg)
{
	void __user *argp = (void __user *)arg;
	char name[PROCIOCTL_NAME_LEN];
	struct procioctl_state now;
	int value;

	switch (cmd) {
	case PROCIOCTL_SET_VALUE:
		if (!(file->f_mode & FMODE_WRITE))
			return -EBADF;
		if (get_user(value, (int __user *)argp))
			return -EFAULT;
		if (value < PROCIOCTL_VALUE_MIN || value > PROCIOCTL_VALUE_MAX)
			return -EINVAL;
		procioctl_set_value(value);
		return 0;

	case PROCIOCTL_GET_VALUE:
		procioctl_snapshot(&now);
		return put_user(now.value, (int __user *)argp);

	case PROCIOCTL_SET_NAME:
		if (!(file->f_mode & FMODE_WRITE))
			return -EBADF;
		if (copy_from_user(name, argp, sizeof(name)))
			return -EFAULT;
		if (!procioctl_name_ok(name))
			return -EINVAL;
		procioctl_set_name(name);
		return 0;

	case PROCIOCTL_GET_NAME:
		/* Copy out after unlocking: copy_to_user() may fault and sleep. */
		procioctl_snapshot(&now);
		if (copy_to_user(argp, now.name, sizeof(now.name)))
			return -EFAULT;
		return 0;

	case PROCIOCTL_RESET:
		if (!(file->f_mode & FMODE_WRITE))
			return -EBADF;
		procioctl_reset();
		return 0;

	default:
		return -ENOTTY;
	}
}

#ifdef CONFIG_COMPAT
/* Same requests from 32-bit programs: only the pointer needs converting. */
static long procioctl_compat_ioctl(struct file *file, unsigned int cmd,
				   unsigned long arg)
{
	return procioctl_ioctl(file, cmd, (unsigned long)compat_ptr(arg));
}
#endif

static int procioctl_show(struct seq_file *m, void *v)
{
	struct procioctl_state now;

	procioctl_snapshot(&now);
	seq_printf(m, "value: %d\nname: %s\n", now.value, now.name);
	return 0;
}

static int procioctl_open(struct inode *inode, struct file *file)
{
	return single_open(file, procioctl_show, NULL);
}

static const struct proc_ops procioctl_ops = {
	.proc_open = procioctl_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_ioctl = procioctl_ioctl,
#ifdef CONFIG_COMPAT
	.proc_compat_ioctl = procioctl_compat_ioctl,
#endif
};

static int __init procioctl_start(void)
{
	procioctl_entry = proc_create(PROCIOCTL_ENTRY, 0644, NULL,
				      &procioctl_ops);
	if (!procioctl_entry) {
		pr_err("cannot create /proc/%s\n", PROCIOCTL_ENTRY);
		return -ENOMEM;
	}

	pr_info("created /proc/%s (value=%d, name=%s)\n", PROCIOCTL_ENTRY,
		PROCIOCTL_DEFAULT_VALUE, PROCIOCTL_DEFAULT_NAME);
	return 0;
}

static void __exit procioctl_stop(void)
{
	struct procioctl_state last;

	proc_remove(procioctl_entry);
	procioctl_snapshot(&last);
	pr_info("removed /proc/%s (value was %d, name was %s)\n",
		PROCIOCTL_ENTRY, last.value, last.name);
}

module_init(procioctl_start);
module_exit(procioctl_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 27: a /proc file set and read through ioctl");
