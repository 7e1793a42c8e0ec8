// SPDX-License-Identifier: GPL-2.0-only
/*
 * example-mutex: a mutex keeps a counter right while several threads
 * update it, even though they sleep with the mutex held.
 *
 * At load the module first shows the state of a mutex with
 * mutex_trylock() and mutex_is_locked(): a free mutex is taken at once, and
 * a second mutex_trylock() fails while it is held (a mutex is not
 * recursive: mutex_lock() there would deadlock).
 *
 * Then four kernel threads (ex_mutex/0 .. ex_mutex/3) each add one to a
 * shared counter 2000 times, in three steps: read the counter, give the
 * CPU away (cond_resched()), write the value read plus one.  Without the
 * mutex most increments would be lost, since another thread runs between
 * the read and the write; with it, the total is exact:
 *
 *	increments by 4 threads x 2000: counter 8000 (expected 8000)
 *
 * A mutex may be held across a sleep: a thread that finds it taken sleeps
 * until it is released (a spinlock holder must never sleep).  The threads
 * finish with kthread_complete_and_exit() and init waits for all of them,
 * so none is left once the module is loaded.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/err.h>
#include <linux/init.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/sched.h>

#define MUTEX_THREADS 4
#define MUTEX_LOOPS 2000

static DEFINE_MUTEX(counter_lock);
static unsigned long counter;		/* guarded by counter_lock */

/* complete_all()ed once every thread exists, so they start together. */
static DECLARE_COMPLETION(go);
/* complete()d by each thread as it exits: init waits once per thread. */
static DECLARE_COMPLETION(finished);

static void mutex_trylock_demo(void)
{
	bool first, locked, second;

	first = mutex_trylock(&counter_lock);
	locked = mutex_is_locked(&counter_lock);
	second = first && mutex_trylock(&counter_lock);
	if (first)
		mutex_unlock(&counter_lock);

	pr_info("mutex_trylock on a free mutex: %s, mutex_is_locked: %s, a second mutex_trylock: %s, after mutex_unlock: %s\n",
		first ? "taken" : "not taken", locked ? "yes" : "no",
		second ? "taken" : "not taken",
		mutex_is_locked(&counter_lock) ? "locked" : "free");
	if (second)	/* cannot happen: a mutex is not recursive */
		mutex_unlock(&counter_lock);
}

static int mutex_thread(void *data)
{
	unsigned long value;
	int i;

	wait_for_completion(&go);
	for (i = 0; i < MUTEX_LOOPS; i++) {
		mutex_lock(&counter_lock);
		value = counter;
		/* Let another thread run: it must wait for the mutex. */
		cond_resched();
		counter = value + 1;
		mutex_unlock(&counter_lock);
	}

	/* Completes "finished" and exits: never returns to this module. */
	kthread_complete_and_exit(&finished, 0);
}

static int __init example_mutex_start(void)
{
	struct task_struct *task;
	int started, ret = 0;

	mutex_trylock_demo();

	for (started = 0; started < MUTEX_THREADS; started++) {
		task = kthread_run(mutex_thread, NULL, "ex_mutex/%d", started);
		if (IS_ERR(task)) {
			ret = PTR_ERR(task);
			pr_err("cannot start thread %d: error %d\n", started,
			       ret);
			break;
		}
	}

	/* Let the threads run, and wait until every one has exited. */
	complete_all(&go);
	while (started--)
		wait_for_completion(&finished);
	if (ret)
		return ret;

	mutex_lock(&counter_lock);
	pr_info("increments by %d threads x %d: counter %lu (expected %d)\n",
		MUTEX_THREADS, MUTEX_LOOPS, counter,
		MUTEX_THREADS * MUTEX_LOOPS);
	mutex_unlock(&counter_lock);
	return 0;
}

static void __exit example_mutex_stop(void)
{
	pr_info("unloaded, the counter held %lu\n", counter);
}

module_init(example_mutex_start);
module_exit(example_mutex_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 22: a mutex guards a counter several threads update");
