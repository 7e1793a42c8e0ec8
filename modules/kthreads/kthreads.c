// SPDX-License-Identifier: GPL-2.0-only
/*
 * kthreads: a kernel thread that does a small job at a fixed interval.
 *
 * Loading the module starts one kernel thread, "kmodlab-ticker", with
 * kthread_run().  It is a child of kthreadd (PID 2) and shows in ps like any
 * other kernel thread.  Every interval_ms milliseconds (1000 unless the
 * parameter says otherwise, 10 to 5000) it wakes up and adds one to a tick
 * counter, which sysfs shows together with the thread's PID:
 *
 *	$ ps -eo pid,ppid,comm | grep kmodlab-ticker
 *	   1234       2 kmodlab-ticker
 *	$ cat /sys/kernel/kthreads/ticks /sys/kernel/kthreads/pid
 *	57
 *	1234
 *
 * Unloading the module stops the thread with kthread_stop(), which wakes it
 * and waits until its function has returned: nothing of the module runs
 * once it is gone.  The thread sleeps in TASK_INTERRUPTIBLE, so it adds
 * nothing to the load average, and checks kthread_should_stop() after
 * setting its state, so the wake-up of kthread_stop() cannot be lost.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/err.h>
#include <linux/init.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/sysfs.h>

#define KTHREADS_THREAD_NAME "kmodlab-ticker"
#define KTHREADS_DIR "kthreads"
#define KTHREADS_INTERVAL_MIN 10
#define KTHREADS_INTERVAL_MAX 5000

static unsigned int interval_ms = 1000;
module_param(interval_ms, uint, 0444);
MODULE_PARM_DESC(interval_ms, "Milliseconds between two ticks of the thread (10-5000)");

static struct task_struct *kthreads_task;
static pid_t kthreads_pid;
static atomic_long_t kthreads_ticks = ATOMIC_LONG_INIT(0);
static struct kobject *kthreads_kobj;

static int kthreads_fn(void *unused)
{
	/* interval_ms is read-only (0444): it cannot change under us. */
	const unsigned long period = msecs_to_jiffies(interval_ms);

	for (;;) {
		/*
		 * kthread_stop() sets the stop flag, then wakes the thread.
		 * Setting our state before testing the flag means that either
		 * we see the flag here, or its wake-up ends the sleep below.
		 */
		set_current_state(TASK_INTERRUPTIBLE);
		if (kthread_should_stop())
			break;
		/* 0: the whole period went by (not woken early): one tick. */
		if (!schedule_timeout(period))
			atomic_long_inc(&kthreads_ticks);
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

static ssize_t ticks_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%ld\n", atomic_long_read(&kthreads_ticks));
}

static ssize_t pid_show(struct kobject *kobj, struct kobj_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%d\n", kthreads_pid);
}

/* Mode 0444: everyone may read, nobody may write. */
static struct kobj_attribute ticks_attr = __ATTR_RO(ticks);
static struct kobj_attribute pid_attr = __ATTR_RO(pid);

static struct attribute *kthreads_attrs[] = {
	&ticks_attr.attr,
	&pid_attr.attr,
	NULL,
};

static const struct attribute_group kthreads_group = {
	.attrs = kthreads_attrs,
};

static int __init kthreads_start(void)
{
	int ret;

	if (interval_ms < KTHREADS_INTERVAL_MIN ||
	    interval_ms > KTHREADS_INTERVAL_MAX) {
		pr_err("interval_ms=%u is out of range (%d-%d)\n", interval_ms,
		       KTHREADS_INTERVAL_MIN, KTHREADS_INTERVAL_MAX);
		return -EINVAL;
	}

	kthreads_task = kthread_run(kthreads_fn, NULL, KTHREADS_THREAD_NAME);
	if (IS_ERR(kthreads_task)) {
		ret = PTR_ERR(kthreads_task);
		pr_err("cannot start thread %s: error %d\n",
		       KTHREADS_THREAD_NAME, ret);
		return ret;
	}
	kthreads_pid = task_pid_nr(kthreads_task);

	kthreads_kobj = kobject_create_and_add(KTHREADS_DIR, kernel_kobj);
	if (!kthreads_kobj) {
		ret = -ENOMEM;
		pr_err("cannot create /sys/kernel/%s\n", KTHREADS_DIR);
		goto err_thread;
	}

	ret = sysfs_create_group(kthreads_kobj, &kthreads_group);
	if (ret) {
		pr_err("cannot create the files of /sys/kernel/%s: error %d\n",
		       KTHREADS_DIR, ret);
		goto err_kobj;
	}

	pr_info("started thread %s (pid %d), one tick every %u ms\n",
		KTHREADS_THREAD_NAME, kthreads_pid, interval_ms);
	return 0;

err_kobj:
	kobject_put(kthreads_kobj);
err_thread:
	kthread_stop(kthreads_task);
	return ret;
}

static void __exit kthreads_stop(void)
{
	sysfs_remove_group(kthreads_kobj, &kthreads_group);
	kobject_put(kthreads_kobj);
	/* Wakes the thread and waits for kthreads_fn() to return. */
	kthread_stop(kthreads_task);
	pr_info("stopped thread %s (pid %d) after %ld ticks\n",
		KTHREADS_THREAD_NAME, kthreads_pid,
		atomic_long_read(&kthreads_ticks));
}

module_init(kthreads_start);
module_exit(kthreads_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 28: a kernel thread that ticks at a fixed interval");
