// SPDX-License-Identifier: GPL-2.0-only
/*
 * example-spinlock: a spinlock shared by process context and a timer.
 *
 * At load one work item runs on every online CPU (queue_work_on()) and
 * adds one to a shared counter 20000 times, all CPUs at the same time.
 * Meanwhile a timer, which re-arms itself every jiffy, adds one to the
 * same counter each time it runs.  A spinlock guards the counter, and the
 * total is exact:
 *
 *	example_spinlock: increments by 4 CPUs x 20000 and 3 timer runs:
 *		counter 80003 (expected 80003)
 *
 * A timer callback runs in softirq context, where nothing may sleep: that
 * is what spinlocks are for (a mutex could not be taken there).  If the
 * timer interrupted a work item on the CPU where that work item holds the
 * lock, it would spin for ever; so process context takes the lock with
 * spin_lock_irqsave(), which turns interrupts (and softirqs with them) off
 * on the local CPU while the lock is held, and saves their previous state
 * in "flags" for spin_unlock_irqrestore().  spin_lock_bh() would be enough
 * here; _irqsave is what a lock shared with an interrupt handler needs.
 * The timer callback itself uses plain spin_lock().
 *
 * Code that holds a spinlock must not sleep and should be short: other
 * CPUs spin, doing nothing else, while they wait.
 *
 * Init waits for the work items (flush_work()) and stops the timer before
 * it returns, so nothing of the module runs once it is loaded.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/compiler.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/init.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/percpu.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/timer.h>
#include <linux/version.h>
#include <linux/workqueue.h>

#define SPIN_LOOPS 20000

static DEFINE_SPINLOCK(tally_lock);
static unsigned long tally;		/* guarded by tally_lock */
static unsigned long timer_runs;	/* guarded by tally_lock */

static struct timer_list tick_timer;
static bool tick_stopping;

/* Softirq context: process context holds the lock with irqs off. */
static void spin_tick(struct timer_list *timer)
{
	spin_lock(&tally_lock);
	tally++;
	timer_runs++;
	spin_unlock(&tally_lock);

	if (!READ_ONCE(tick_stopping))
		mod_timer(&tick_timer, jiffies + 1);
}

/* Process context, one instance per CPU, all at the same time. */
static void spin_worker(struct work_struct *work)
{
	unsigned long flags;
	int i;

	for (i = 0; i < SPIN_LOOPS; i++) {
		spin_lock_irqsave(&tally_lock, flags);
		tally++;
		spin_unlock_irqrestore(&tally_lock, flags);
		if (!(i % 1024))
			cond_resched();	/* never with the lock held */
	}
}

static int __init example_spinlock_start(void)
{
	struct work_struct __percpu *works;
	unsigned long flags, total, runs;
	unsigned int cpu, cpus = 0;

	works = alloc_percpu(struct work_struct);
	if (!works)
		return -ENOMEM;

	timer_setup(&tick_timer, spin_tick, 0);
	mod_timer(&tick_timer, jiffies + 1);

	/* Keeps the set of online CPUs as it is until the work is done. */
	cpus_read_lock();
	for_each_online_cpu(cpu) {
		struct work_struct *work = per_cpu_ptr(works, cpu);

		INIT_WORK(work, spin_worker);
		queue_work_on(cpu, system_wq, work);
		cpus++;
	}
	for_each_online_cpu(cpu)
		flush_work(per_cpu_ptr(works, cpu));
	cpus_read_unlock();
	free_percpu(works);

	/* The callback may run once more, but does not re-arm the timer. */
	WRITE_ONCE(tick_stopping, true);
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
	timer_shutdown_sync(&tick_timer);
#else
	del_timer_sync(&tick_timer);
#endif

	spin_lock_irqsave(&tally_lock, flags);
	total = tally;
	runs = timer_runs;
	spin_unlock_irqrestore(&tally_lock, flags);

	pr_info("increments by %u CPUs x %d and %lu timer runs: counter %lu (expected %lu)\n",
		cpus, SPIN_LOOPS, runs, total,
		(unsigned long)cpus * SPIN_LOOPS + runs);
	return 0;
}

static void __exit example_spinlock_stop(void)
{
	pr_info("unloaded, the counter held %lu\n", tally);
}

module_init(example_spinlock_start);
module_exit(example_spinlock_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 23: a spinlock guards a counter CPUs and a timer update");
