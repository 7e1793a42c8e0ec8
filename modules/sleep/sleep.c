// SPDX-License-Identifier: GPL-2.0-only
/*
 * sleep: a /proc file that one process at a time may hold open.
 *
 * /proc/kmodlab_sleep has one holder at most.  Another process that opens
 * it sleeps on a wait queue until the holder closes it; with O_NONBLOCK the
 * open fails with EAGAIN at once instead:
 *
 *	$ sleep 600 < /proc/kmodlab_sleep &	# the shell opens it for sleep
 *	$ cat /proc/kmodlab_sleep		# sleeps until "kill %1"
 *	$ dd if=/proc/kmodlab_sleep iflag=nonblock
 *	dd: failed to open '/proc/kmodlab_sleep': Resource temporarily unavailable
 *
 * The holder may write a message (at most 64 bytes, a trailing newline is
 * dropped) that stays for the next holder; a read shows it with counters:
 *
 *	message: hello
 *	opens: 3	(successful opens since the module was loaded)
 *	slept: 1	(opens that had to wait)
 *	refused: 1	(O_NONBLOCK opens refused with EAGAIN)
 *
 * The sleep is interruptible: a signal ends it and the open fails (EINTR,
 * or it is restarted if the signal handler asked for SA_RESTART); a process
 * killed while it waits leaves the file to the others.  The waiters are
 * "exclusive": a close wakes one of them, not all of them.
 *
 * Unloading: a /proc file does not pin its module (struct proc_ops has no
 * owner), so rmmod works while the file is open.  proc_remove() waits for
 * every call still running in this module, an open asleep in the wait queue
 * included, then releases the files left open (their later reads fail with
 * EIO).  So before it, the exit function wakes every sleeper and makes new
 * opens fail with ENODEV: rmmod never waits for a holder to close.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/compiler.h>
#include <linux/fcntl.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#define SLEEP_NAME "kmodlab_sleep"
#define SLEEP_MSG_MAX 64
/* "message: " + the message + three counter lines */
#define SLEEP_TEXT_LEN (SLEEP_MSG_MAX + 96)

/* Bit SLEEP_HELD of sleep_state: set while one open file exists. */
#define SLEEP_HELD 0
static unsigned long sleep_state;
/* Set once by the exit function: the sleepers must leave, empty-handed. */
static bool sleep_gone;
static DECLARE_WAIT_QUEUE_HEAD(sleep_waitq);

static atomic_t sleep_opens = ATOMIC_INIT(0);
static atomic_t sleep_slept = ATOMIC_INIT(0);
static atomic_t sleep_refused = ATOMIC_INIT(0);

/* The message; a holder's threads may share the file, hence the lock. */
static DEFINE_MUTEX(sleep_msg_lock);
static char sleep_msg[SLEEP_MSG_MAX];
static size_t sleep_msg_len;

static struct proc_dir_entry *sleep_entry;

/* Become the holder if there is none; acquire ordering, like a lock. */
static bool sleep_take(void)
{
	return !test_and_set_bit_lock(SLEEP_HELD, &sleep_state);
}

/* The wait's condition: stop waiting when taken, or when unloading. */
static bool sleep_can_go(bool *taken)
{
	if (READ_ONCE(sleep_gone))
		return true;
	*taken = sleep_take();
	return *taken;
}

static int sleep_open(struct inode *inode, struct file *file)
{
	bool taken = false;
	int ret;

	if (!sleep_take()) {
		if (file->f_flags & O_NONBLOCK) {
			atomic_inc(&sleep_refused);
			return -EAGAIN;
		}

		atomic_inc(&sleep_slept);
		/*
		 * Sleep in TASK_INTERRUPTIBLE until sleep_can_go() is true.
		 * The condition is tested after the task is queued, so a
		 * release between the test and the sleep still wakes it.
		 */
		ret = wait_event_interruptible_exclusive(sleep_waitq,
							 sleep_can_go(&taken));
		if (ret)
			return ret;	/* -ERESTARTSYS: a signal came first */
		if (!taken)
			return -ENODEV;	/* the module is being unloaded */
	}

	atomic_inc(&sleep_opens);
	/* Reads start at 0 and advance; lseek fails with ESPIPE. */
	return nonseekable_open(inode, file);
}

/* Called once per successful open: at the last close, or by proc_remove(). */
static int sleep_release(struct inode *inode, struct file *file)
{
	clear_bit_unlock(SLEEP_HELD, &sleep_state);
	/* Wakes one exclusive waiter; it takes the file or sleeps again. */
	wake_up(&sleep_waitq);
	return 0;
}

static ssize_t sleep_read(struct file *file, char __user *buf, size_t count,
			  loff_t *ppos)
{
	char text[SLEEP_TEXT_LEN];
	size_t len;

	mutex_lock(&sleep_msg_lock);
	len = scnprintf(text, sizeof(text),
			"message: %.*s\nopens: %d\nslept: %d\nrefused: %d\n",
			(int)sleep_msg_len, sleep_msg,
			atomic_read(&sleep_opens), atomic_read(&sleep_slept),
			atomic_read(&sleep_refused));
	mutex_unlock(&sleep_msg_lock);

	/* Copies what is left after *ppos and advances it: 0 means EOF. */
	return simple_read_from_buffer(buf, count, ppos, text, len);
}

static ssize_t sleep_write(struct file *file, const char __user *buf,
			   size_t count, loff_t *ppos)
{
	char msg[SLEEP_MSG_MAX + 1];
	size_t len = count;

	if (!count)
		return 0;
	/* One more byte than the limit, for the newline echo(1) adds. */
	if (count > SLEEP_MSG_MAX + 1)
		return -EINVAL;
	if (copy_from_user(msg, buf, count))
		return -EFAULT;
	if (msg[len - 1] == '\n')
		len--;
	if (len > SLEEP_MSG_MAX)
		return -EINVAL;

	/* The message replaces the old one; the file position stays. */
	mutex_lock(&sleep_msg_lock);
	memcpy(sleep_msg, msg, len);
	sleep_msg_len = len;
	mutex_unlock(&sleep_msg_lock);
	return count;
}

/* No proc_lseek: sleep_open() makes every open file non-seekable. */
static const struct proc_ops sleep_ops = {
	.proc_open = sleep_open,
	.proc_release = sleep_release,
	.proc_read = sleep_read,
	.proc_write = sleep_write,
};

static int __init sleep_start(void)
{
	sleep_entry = proc_create(SLEEP_NAME, 0644, NULL, &sleep_ops);
	if (!sleep_entry) {
		pr_err("cannot create /proc/%s\n", SLEEP_NAME);
		return -ENOMEM;
	}

	pr_info("created /proc/%s: one holder at a time, the others sleep\n",
		SLEEP_NAME);
	return 0;
}

static void __exit sleep_stop(void)
{
	/* Wake every sleeper: each sees sleep_gone and fails with ENODEV. */
	WRITE_ONCE(sleep_gone, true);
	wake_up_all(&sleep_waitq);
	/* Waits for the opens still running, then releases the open file. */
	proc_remove(sleep_entry);
	pr_info("removed /proc/%s after %d opens (%d slept, %d refused)\n",
		SLEEP_NAME, atomic_read(&sleep_opens),
		atomic_read(&sleep_slept), atomic_read(&sleep_refused));
}

module_init(sleep_start);
module_exit(sleep_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 18: a /proc file one process holds, the others sleep");
