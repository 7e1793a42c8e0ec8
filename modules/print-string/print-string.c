// SPDX-License-Identifier: GPL-2.0-only
/*
 * print-string: write to the terminal of the process that called the module.
 *
 * A module's pr_info() goes to the kernel log, not to the terminal of
 * whoever loaded it.  To talk to that terminal the module takes the
 * controlling tty of the current process (get_current_tty()) and hands
 * text straight to the tty's driver.  Loaded from a shell in a terminal:
 *
 *	$ sudo modprobe print_string
 *	print_string: hello, loaded from this terminal
 *
 * The driver's write() bypasses the line discipline, which would have
 * turned "\n" into "\r\n" (the ONLCR setting): the module sends the
 * carriage return itself.  It takes the tty's write lock and checks that
 * the tty is still open, as the kernel does when it writes a message to a
 * tty, and drops its reference to the tty when done.
 *
 * Many processes have no controlling tty: daemons, systemd at boot,
 * Ansible (over SSH without a terminal), sudo run from such a process.
 * get_current_tty() returns NULL for them; the module then writes nothing
 * and says so in the kernel log.
 *
 * Writing a line of text to /proc/kmodlab_tty (root only) has it printed on
 * the writer's terminal the same way, so both cases can be tried at will:
 *
 *	# echo hi there > /proc/kmodlab_tty
 *	hi there
 *	# setsid -w sh -c 'echo hi > /proc/kmodlab_tty'
 *	(nothing: no tty, the kernel log says so)
 *
 * The text may be up to 80 bytes, without the newline that ends it;
 * longer or empty texts are refused with EINVAL.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/tty.h>
#include <linux/tty_driver.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#define PRINT_STRING_PROC "kmodlab_tty"
#define PRINT_STRING_MAX 80

static atomic_t print_string_written = ATOMIC_INIT(0);
static struct proc_dir_entry *print_string_entry;

/*
 * Write len bytes of text, then CR LF, to the controlling tty of the
 * current process; why says what the greeting is for, in the log.
 * Sleeps: process context only.
 */
static void print_string(const char *text, size_t len, const char *why)
{
	struct tty_struct *tty;
	ssize_t ret = -EIO;

	tty = get_current_tty();	/* takes a reference, or NULL */
	if (!tty) {
		pr_info("greeting at %s: not written, %s[%d] has no controlling tty\n",
			why, current->comm, task_pid_nr(current));
		return;
	}

	/* Interruptible: a writer stuck on a stopped tty holds the lock. */
	if (mutex_lock_interruptible(&tty->atomic_write_lock)) {
		pr_info("greeting at %s: interrupted waiting for tty %s\n", why,
			tty_name(tty));
		goto out;
	}
	tty_lock(tty);
	if (tty->ops->write && tty->count > 0) {
		ret = tty->ops->write(tty, (const u8 *)text, len);
		if (ret == (ssize_t)len)
			tty->ops->write(tty, (const u8 *)"\r\n", 2);
	}
	tty_unlock(tty);
	mutex_unlock(&tty->atomic_write_lock);
	/* As the tty layer does: wake the pollers that found it locked. */
	wake_up_interruptible_poll(&tty->write_wait, EPOLLOUT);

	if (ret == (ssize_t)len) {
		atomic_inc(&print_string_written);
		pr_info("greeting at %s: written to tty %s of %s[%d]\n", why,
			tty_name(tty), current->comm, task_pid_nr(current));
	} else {
		pr_info("greeting at %s: tty %s of %s[%d] took %zd of %zu bytes\n",
			why, tty_name(tty), current->comm, task_pid_nr(current),
			ret, len);
	}
out:
	tty_kref_put(tty);
}

static ssize_t print_string_write(struct file *file, const char __user *buf,
				  size_t count, loff_t *ppos)
{
	char *text;
	size_t len;

	if (count > PRINT_STRING_MAX + 1)
		return -EINVAL;

	text = memdup_user(buf, count);
	if (IS_ERR(text))
		return PTR_ERR(text);

	len = count;
	if (len && text[len - 1] == '\n')
		len--;
	if (!len || len > PRINT_STRING_MAX) {
		kfree(text);
		return -EINVAL;
	}

	print_string(text, len, "write");
	kfree(text);
	return count;
}

static const struct proc_ops print_string_ops = {
	.proc_write = print_string_write,
};

static int __init print_string_start(void)
{
	static const char hello[] = "print_string: hello, loaded from this terminal";

	/* 0200: only root may write, nobody reads. */
	print_string_entry = proc_create(PRINT_STRING_PROC, 0200, NULL,
					 &print_string_ops);
	if (!print_string_entry) {
		pr_err("cannot create /proc/%s\n", PRINT_STRING_PROC);
		return -ENOMEM;
	}

	pr_info("loaded by %s[%d]; write to /proc/%s to greet your tty\n",
		current->comm, task_pid_nr(current), PRINT_STRING_PROC);
	print_string(hello, sizeof(hello) - 1, "load");
	return 0;
}

static void __exit print_string_stop(void)
{
	static const char bye[] = "print_string: goodbye, unloaded from this terminal";

	proc_remove(print_string_entry);
	print_string(bye, sizeof(bye) - 1, "unload");
	pr_info("unloaded after %d greetings written to a tty\n",
		atomic_read(&print_string_written));
}

module_init(print_string_start);
module_exit(print_string_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 17: write to the tty of the process that loads the module");
