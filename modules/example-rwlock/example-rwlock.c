// SPDX-License-Identifier: GPL-2.0-only
/*
 * example-rwlock: many readers at once, or one writer alone.
 *
 * A pair of numbers keeps one rule: b is always twice a.  A writer moves
 * it on (a + 1, then b = 2a: two separate stores), 5000 times, while four
 * readers read both numbers 20000 times each and count the pairs that break
 * the rule.  All five are work items on system_unbound_wq, so they run at
 * the same time on a machine with several CPUs.  A reader/writer spinlock
 * (rwlock_t) guards the pair:
 *
 *  - read_lock() may be held by several readers at once: the readers note
 *    how many of them were inside together;
 *  - write_lock() waits until no reader is inside, and keeps them all out
 *    while it is held: the writer checks that it never finds a reader.
 *
 *	example_rwlock: reads by 4 readers x 20000: 80000, 0 inconsistent,
 *		up to 3 readers inside at once
 *	example_rwlock: updates by the writer: 5000, 0 with a reader inside,
 *		pair (5000, 10000)
 *
 * On a single CPU "up to 1": an rwlock is a spinlock, its holders are not
 * preempted.  Like a spinlock, it must not be held across a sleep.  Nothing
 * takes this lock in interrupt context, so the plain read_lock() and
 * write_lock() are enough; a lock shared with an interrupt handler would
 * need read_lock_irqsave() and write_lock_irqsave().
 *
 * Init waits for the work items (flush_work()), so nothing of the module
 * runs once it is loaded.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#define RW_READERS 4
#define RW_READS 20000
#define RW_WRITES 5000

static DEFINE_RWLOCK(pair_lock);
/* Guarded by pair_lock; b == 2 * a whenever the lock is free. */
static unsigned long pair_a, pair_b;

/* Readers inside the read side right now, and the most seen at once. */
static atomic_t readers_inside = ATOMIC_INIT(0);
static atomic_t readers_max = ATOMIC_INIT(0);

struct rw_reader {
	struct work_struct work;
	unsigned long reads;
	unsigned long inconsistent;
};

static struct rw_reader rw_readers[RW_READERS];
static struct work_struct rw_writer;
static unsigned long writes, writer_saw_readers;

static void note_readers(int inside)
{
	int max = atomic_read(&readers_max);

	do {
		if (inside <= max)
			return;
	} while (!atomic_try_cmpxchg(&readers_max, &max, inside));
}

static void rw_read_fn(struct work_struct *work)
{
	struct rw_reader *reader = container_of(work, struct rw_reader, work);
	unsigned long a, b;
	int i;

	for (i = 0; i < RW_READS; i++) {
		read_lock(&pair_lock);
		note_readers(atomic_inc_return(&readers_inside));
		a = pair_a;
		b = pair_b;
		atomic_dec(&readers_inside);
		read_unlock(&pair_lock);

		reader->reads++;
		if (b != 2 * a)
			reader->inconsistent++;
		if (!(i % 256))
			cond_resched();
	}
}

static void rw_write_fn(struct work_struct *work)
{
	int i;

	for (i = 0; i < RW_WRITES; i++) {
		write_lock(&pair_lock);
		if (atomic_read(&readers_inside))
			writer_saw_readers++;
		pair_a++;
		pair_b = 2 * pair_a;
		writes++;
		write_unlock(&pair_lock);
		if (!(i % 256))
			cond_resched();
	}
}

static int __init example_rwlock_start(void)
{
	unsigned long reads = 0, inconsistent = 0;
	int i;

	INIT_WORK(&rw_writer, rw_write_fn);
	for (i = 0; i < RW_READERS; i++)
		INIT_WORK(&rw_readers[i].work, rw_read_fn);

	for (i = 0; i < RW_READERS; i++)
		queue_work(system_unbound_wq, &rw_readers[i].work);
	queue_work(system_unbound_wq, &rw_writer);

	flush_work(&rw_writer);
	for (i = 0; i < RW_READERS; i++) {
		flush_work(&rw_readers[i].work);
		reads += rw_readers[i].reads;
		inconsistent += rw_readers[i].inconsistent;
	}

	pr_info("reads by %d readers x %d: %lu, %lu inconsistent, up to %d readers inside at once\n",
		RW_READERS, RW_READS, reads, inconsistent,
		atomic_read(&readers_max));
	read_lock(&pair_lock);
	pr_info("updates by the writer: %lu, %lu with a reader inside, pair (%lu, %lu)\n",
		writes, writer_saw_readers, pair_a, pair_b);
	read_unlock(&pair_lock);
	return 0;
}

static void __exit example_rwlock_stop(void)
{
	pr_info("unloaded, the pair was (%lu, %lu)\n", pair_a, pair_b);
}

module_init(example_rwlock_start);
module_exit(example_rwlock_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 24: a reader/writer lock lets readers in together");
