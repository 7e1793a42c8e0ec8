// SPDX-License-Identifier: GPL-2.0-only
/*
 * sched: work items on a workqueue of the module's own.
 *
 * At load the module creates the workqueue "kmodlab_sched" and queues two
 * work items on it:
 *
 *  - a one-shot work that logs the worker thread it runs in (a kworker:
 *    work runs in process context, later, not in the caller);
 *  - a delayed work that counts its runs and queues itself again, to run
 *    period_ms milliseconds later, until the module is unloaded.
 *
 *	$ cat /proc/kmodlab_sched
 *	runs: 42
 *	period_ms: 1000
 *	# modprobe sched period_ms=250
 *
 * The workqueue is created with WQ_SYSFS, so it shows in
 * /sys/devices/virtual/workqueue/kmodlab_sched.  On unload,
 * cancel_delayed_work_sync() stops the periodic work even though it queues
 * itself again (a work being cancelled cannot be queued), and waits for a
 * run in progress to finish; destroy_workqueue() then drains the queue.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/init.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/workqueue.h>

#define SCHED_NAME "kmodlab_sched"
#define SCHED_PERIOD_MIN 10
#define SCHED_PERIOD_MAX 60000

static unsigned int period_ms = 1000;
module_param(period_ms, uint, 0444);
MODULE_PARM_DESC(period_ms, "Milliseconds between two runs of the periodic work (10-60000)");

static struct workqueue_struct *sched_wq;
static struct proc_dir_entry *sched_entry;
static atomic_t sched_runs = ATOMIC_INIT(0);

static void sched_once_fn(struct work_struct *work)
{
	pr_info("one-shot work ran in %s (pid %d), in process context\n",
		current->comm, task_pid_nr(current));
}

static void sched_tick_fn(struct work_struct *work);

static DECLARE_WORK(sched_once, sched_once_fn);
static DECLARE_DELAYED_WORK(sched_tick, sched_tick_fn);

static void sched_tick_fn(struct work_struct *work)
{
	atomic_inc(&sched_runs);
	/* Fails harmlessly while cancel_delayed_work_sync() runs. */
	queue_delayed_work(sched_wq, &sched_tick, msecs_to_jiffies(period_ms));
}

static int sched_show(struct seq_file *m, void *v)
{
	seq_printf(m, "runs: %d\nperiod_ms: %u\n", atomic_read(&sched_runs),
		   period_ms);
	return 0;
}

static int __init sched_start(void)
{
	if (period_ms < SCHED_PERIOD_MIN || period_ms > SCHED_PERIOD_MAX) {
		pr_err("period_ms=%u is out of range (%d-%d)\n", period_ms,
		       SCHED_PERIOD_MIN, SCHED_PERIOD_MAX);
		return -EINVAL;
	}

	/* Per-CPU (bound) workers; WQ_SYSFS: listed in sysfs. */
	sched_wq = alloc_workqueue("%s", WQ_SYSFS, 0, SCHED_NAME);
	if (!sched_wq) {
		pr_err("cannot create the workqueue %s\n", SCHED_NAME);
		return -ENOMEM;
	}

	sched_entry = proc_create_single(SCHED_NAME, 0444, NULL, sched_show);
	if (!sched_entry) {
		pr_err("cannot create /proc/%s\n", SCHED_NAME);
		destroy_workqueue(sched_wq);
		return -ENOMEM;
	}

	/* Before queueing, so that this line comes before the work's. */
	pr_info("workqueue %s created, periodic work every %u ms, runs in /proc/%s\n",
		SCHED_NAME, period_ms, SCHED_NAME);
	queue_work(sched_wq, &sched_once);
	queue_delayed_work(sched_wq, &sched_tick, 0);
	return 0;
}

static void __exit sched_stop(void)
{
	proc_remove(sched_entry);
	cancel_delayed_work_sync(&sched_tick);
	cancel_work_sync(&sched_once);
	destroy_workqueue(sched_wq);
	pr_info("workqueue %s destroyed after %d periodic runs\n", SCHED_NAME,
		atomic_read(&sched_runs));
}

module_init(sched_start);
module_exit(sched_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 19: work items on a workqueue of its own");
