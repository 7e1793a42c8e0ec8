// SPDX-License-Identifier: GPL-2.0-only
/*
 * example-atomic: atomic arithmetic and bit operations, with their results.
 *
 * At load the module logs what a sequence of atomic_t operations and of
 * atomic bit operations on an unsigned long return; the values are always
 * the same (lines cut here):
 *
 *	atomic_t: set 10, add 5 -> 15, dec -> 14, sub_and_test 14 -> true,
 *		inc_return -> 1
 *	atomic_cmpxchg 1 -> 7 saw 1, now 7; atomic_cmpxchg 1 -> 9 saw 7,
 *		still 7
 *	bits: set_bit 3 -> 0x8, set_bit 0 -> 0x9, change_bit 3 -> 0x1,
 *		test_and_set_bit 5 -> was 0, clear_bit 0 -> 0x20
 *
 * Then four work items run at the same time on system_unbound_wq (on as
 * many CPUs as there are) and each adds one, 100000 times, to two
 * counters: an atomic_t with atomic_inc(), and a plain int read and written
 * back.  The atomic_t always ends at 400000; the plain int loses the
 * increments that raced (two CPUs read the same value, both write it plus
 * one), so on a machine with more than one CPU it usually ends lower:
 *
 *	increments by 4 workers x 100000: atomic_t 400000 (expected 400000),
 *		plain int 263127
 *
 * The init function waits for the work items (flush_work()), so nothing of
 * the module runs once it is loaded.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/compiler.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/workqueue.h>

#define ATOMIC_WORKERS 4
#define ATOMIC_LOOPS 100000

static atomic_t atomic_total = ATOMIC_INIT(0);
/* Deliberately updated without atomics: see atomic_worker(). */
static int plain_total;
static struct work_struct atomic_works[ATOMIC_WORKERS];

static void atomic_arithmetic(void)
{
	atomic_t v;
	int added, decremented, returned, seen1, now1, seen2, now2;
	bool zero;

	atomic_set(&v, 10);
	atomic_add(5, &v);
	added = atomic_read(&v);
	atomic_dec(&v);
	decremented = atomic_read(&v);
	/* Subtracts, and says whether the result is 0, in one operation. */
	zero = atomic_sub_and_test(14, &v);
	returned = atomic_inc_return(&v);
	pr_info("atomic_t: set 10, add 5 -> %d, dec -> %d, sub_and_test 14 -> %s, inc_return -> %d\n",
		added, decremented, zero ? "true" : "false", returned);

	/* Stores the new value only if the old one is what was expected. */
	seen1 = atomic_cmpxchg(&v, 1, 7);
	now1 = atomic_read(&v);
	seen2 = atomic_cmpxchg(&v, 1, 9);
	now2 = atomic_read(&v);
	pr_info("atomic_cmpxchg 1 -> 7 saw %d, now %d; atomic_cmpxchg 1 -> 9 saw %d, still %d\n",
		seen1, now1, seen2, now2);
}

static void atomic_bits(void)
{
	unsigned long word = 0;
	unsigned long after_set3, after_set0, after_change3, after_clear0;
	bool was_set;

	set_bit(3, &word);
	after_set3 = word;
	set_bit(0, &word);
	after_set0 = word;
	change_bit(3, &word);
	after_change3 = word;
	was_set = test_and_set_bit(5, &word);
	clear_bit(0, &word);
	after_clear0 = word;
	pr_info("bits: set_bit 3 -> %#lx, set_bit 0 -> %#lx, change_bit 3 -> %#lx, test_and_set_bit 5 -> was %d, clear_bit 0 -> %#lx\n",
		after_set3, after_set0, after_change3, was_set, after_clear0);
}

static void atomic_worker(struct work_struct *work)
{
	int i;

	for (i = 0; i < ATOMIC_LOOPS; i++) {
		atomic_inc(&atomic_total);
		/*
		 * Read, add, write: three steps another CPU can come between.
		 * READ_ONCE/WRITE_ONCE only keep the compiler from merging
		 * or tearing the accesses; they do not make the sum atomic.
		 */
		WRITE_ONCE(plain_total, READ_ONCE(plain_total) + 1);
		if (!(i % 1024))
			cond_resched();
	}
}

static int __init example_atomic_start(void)
{
	int i;

	atomic_arithmetic();
	atomic_bits();

	for (i = 0; i < ATOMIC_WORKERS; i++) {
		INIT_WORK(&atomic_works[i], atomic_worker);
		queue_work(system_unbound_wq, &atomic_works[i]);
	}
	for (i = 0; i < ATOMIC_WORKERS; i++)
		flush_work(&atomic_works[i]);

	pr_info("increments by %d workers x %d: atomic_t %d (expected %d), plain int %d\n",
		ATOMIC_WORKERS, ATOMIC_LOOPS, atomic_read(&atomic_total),
		ATOMIC_WORKERS * ATOMIC_LOOPS, READ_ONCE(plain_total));
	return 0;
}

static void __exit example_atomic_stop(void)
{
	pr_info("unloaded, the atomic_t held %d\n", atomic_read(&atomic_total));
}

module_init(example_atomic_start);
module_exit(example_atomic_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 21: atomic arithmetic and bit operations");
