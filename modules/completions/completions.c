// SPDX-License-Identifier: GPL-2.0-only
/*
 * completions: one kernel thread waits until another one says "done".
 *
 * At load two kernel threads start: compl_waiter first, then compl_starter.
 * The waiter blocks in wait_for_completion_timeout() on the completion
 * "started"; the starter sleeps a little (starter_delay_ms), logs, then
 * signals "started" with complete_all().  So the starter's line always
 * comes before the waiter's "woken" line, although the waiter was started
 * first:
 *
 *	completions: starting compl_waiter, then compl_starter (100 ms late)
 *	completions: compl_waiter: waiting for compl_starter
 *	completions: compl_starter: done, completing "started"
 *	completions: compl_waiter: woken after 100 ms, compl_starter ran first
 *	completions: both threads have finished
 *
 * (The waiter's first line may come after the starter's when the waiter
 * runs late; a completion remembers that it was completed, so the waiter
 * then does not wait at all.)
 *
 * Each thread ends with kthread_complete_and_exit(): it completes its own
 * "finished" completion and exits without going back to the module's code.
 * The init function waits for both, so the threads are gone when modprobe
 * returns and the module can be unloaded at once.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/init.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>

#define WAITER_NAME "compl_waiter"
#define STARTER_NAME "compl_starter"
/* The waiter gives up after this long: the starter never takes so long. */
#define WAIT_MAX_MS 10000
#define STARTER_DELAY_MAX 5000

static unsigned int starter_delay_ms = 100;
module_param(starter_delay_ms, uint, 0444);
MODULE_PARM_DESC(starter_delay_ms, "Milliseconds the starter thread sleeps before it completes (0-5000)");

static DECLARE_COMPLETION(started);
static DECLARE_COMPLETION(waiter_finished);
static DECLARE_COMPLETION(starter_finished);
/* Set when init could not start the starter: "started" is not its word. */
static bool starter_missing;

static int waiter_fn(void *data)
{
	unsigned long begin = jiffies;
	unsigned long left;

	pr_info("compl_waiter: waiting for compl_starter\n");
	left = wait_for_completion_timeout(&started,
					   msecs_to_jiffies(WAIT_MAX_MS));
	if (!left)
		pr_err("compl_waiter: gave up after %d ms\n", WAIT_MAX_MS);
	else if (!READ_ONCE(starter_missing))
		pr_info("compl_waiter: woken after %u ms, compl_starter ran first\n",
			jiffies_to_msecs(jiffies - begin));

	/* Completes waiter_finished and exits: never returns here. */
	kthread_complete_and_exit(&waiter_finished, 0);
}

static int starter_fn(void *data)
{
	msleep(starter_delay_ms);
	pr_info("compl_starter: done, completing \"started\"\n");
	/* complete_all(): every waiter, now and later, goes on. */
	complete_all(&started);

	kthread_complete_and_exit(&starter_finished, 0);
}

static int __init completions_start(void)
{
	struct task_struct *task;

	if (starter_delay_ms > STARTER_DELAY_MAX) {
		pr_err("starter_delay_ms=%u is out of range (0-%d)\n",
		       starter_delay_ms, STARTER_DELAY_MAX);
		return -EINVAL;
	}

	pr_info("starting compl_waiter, then compl_starter (%u ms late)\n",
		starter_delay_ms);

	task = kthread_run(waiter_fn, NULL, WAITER_NAME);
	if (IS_ERR(task)) {
		pr_err("cannot start %s: error %ld\n", WAITER_NAME,
		       PTR_ERR(task));
		return PTR_ERR(task);
	}

	task = kthread_run(starter_fn, NULL, STARTER_NAME);
	if (IS_ERR(task)) {
		pr_err("cannot start %s: error %ld\n", STARTER_NAME,
		       PTR_ERR(task));
		/* Release the waiter ourselves, and wait until it is gone. */
		WRITE_ONCE(starter_missing, true);
		complete_all(&started);
		wait_for_completion(&waiter_finished);
		return PTR_ERR(task);
	}

	/* Both threads finish on their own: wait, so none outlives init. */
	wait_for_completion(&starter_finished);
	wait_for_completion(&waiter_finished);
	pr_info("both threads have finished\n");
	return 0;
}

static void __exit completions_stop(void)
{
	pr_info("unloaded; the threads were gone since the load\n");
}

module_init(completions_start);
module_exit(completions_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 20: a kernel thread waits on a completion another one completes");
