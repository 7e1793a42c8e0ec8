// SPDX-License-Identifier: GPL-2.0-only
/*
 * syscall-steal: watch one user's openat() system calls from a module.
 *
 * The classic version of this lab replaces the openat entry of sys_call_table
 * with a function of its own.  That cannot work on Debian 12's kernel: since
 * the Branch History Injection fix (backported into 6.1 stable), x86-64 no
 * longer calls system calls through sys_call_table but through a switch in
 * x64_sys_call(), so a changed table entry is never reached.  The table is
 * also read-only after boot, and changing it means turning off the CPU's
 * write protection for the kernel.
 *
 * So this module does what the kernel does offer: a kprobe on the openat
 * entry point, __x64_sys_openat().  Its handler runs before every openat()
 * of every process; when the caller's uid is the one given in the "uid"
 * parameter, it logs the path the user asked for:
 *
 *	syscall_steal: uid 65534 opened /etc/hostname
 *
 * and the system call then goes on as usual.  It watches, it does not
 * change what the call does.  uid=-1 (the default) watches nobody; the
 * parameter can be changed at run time through sysfs.
 *
 * A kprobe handler runs with preemption off and must not sleep, so the path
 * is copied from user memory with copy_from_user_nofault(), byte by byte
 * once a whole chunk cannot be read, and a path that is not in memory at
 * that moment is logged as "(not readable)".
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/cred.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/ptrace.h>
#include <linux/uaccess.h>
#include <linux/uidgid.h>

#define PATH_SHOWN 96

static int uid = -1;
module_param(uid, int, 0644);
MODULE_PARM_DESC(uid, "User whose openat() calls are logged (-1: nobody)");

static atomic_long_t seen = ATOMIC_LONG_INIT(0);

/* Copy a NUL-terminated user string without sleeping; false if unreadable. */
static bool copy_path(char *dst, const char __user *src, size_t size)
{
	size_t i;

	if (!copy_from_user_nofault(dst, src, size - 1)) {
		dst[size - 1] = '\0';
		return true;
	}
	for (i = 0; i < size - 1; i++) {
		if (copy_from_user_nofault(&dst[i], src + i, 1))
			return false;
		if (!dst[i])
			return true;
	}
	dst[size - 1] = '\0';
	return true;
}

/*
 * __x64_sys_openat(const struct pt_regs *regs) gets the caller's registers:
 * the path is the second argument of openat(), in regs->si.
 */
static int openat_seen(struct kprobe *p, struct pt_regs *regs)
{
	const struct pt_regs *user = (const struct pt_regs *)regs->di;
	int watched = READ_ONCE(uid);
	char path[PATH_SHOWN];

	if (watched < 0 || __kuid_val(current_uid()) != (uid_t)watched)
		return 0;
	atomic_long_inc(&seen);
	if (copy_path(path, (const char __user *)user->si, sizeof(path)))
		pr_info("uid %d opened %s\n", watched, path);
	else
		pr_info("uid %d opened (not readable)\n", watched);
	return 0;
}

static struct kprobe openat_probe = {
	.symbol_name = "__x64_sys_openat",
	.pre_handler = openat_seen,
};

static int __init syscall_steal_init(void)
{
	int ret = register_kprobe(&openat_probe);

	if (ret) {
		pr_err("cannot probe %s: %d\n", openat_probe.symbol_name, ret);
		return ret;
	}
	pr_info("watching openat() of uid %d through a kprobe on %s\n", uid,
		openat_probe.symbol_name);
	return 0;
}

static void __exit syscall_steal_exit(void)
{
	unregister_kprobe(&openat_probe);
	pr_info("stopped watching openat(), %ld calls of the watched user seen\n",
		atomic_long_read(&seen));
}

module_init(syscall_steal_init);
module_exit(syscall_steal_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab: watch a user's openat() calls with a kprobe");
