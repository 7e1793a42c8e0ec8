// SPDX-License-Identifier: GPL-2.0-only
/*
 * example-tasklet: a function deferred to softirq context with a tasklet.
 *
 * The init function schedules the tasklet and goes on; the tasklet runs
 * later, in softirq context (on the way out of an interrupt, or in
 * ksoftirqd), on the CPU that scheduled it.  It logs its run number, its CPU
 * and how long after tasklet_schedule() it ran:
 *
 *	init: scheduling the tasklet
 *	init: returning; the tasklet runs later, in softirq context
 *	tasklet run 1 on CPU 2 in softirq context, 38 us after
 *		tasklet_schedule()
 *
 * (The last two lines can come in either order: a softirq may run as soon
 * as an interrupt ends, before init has returned.)
 *
 * Writing 1 to /sys/kernel/example_tasklet/schedule schedules it again;
 * /sys/kernel/example_tasklet/runs counts its runs.  A tasklet scheduled
 * again before it has run runs once, and never on two CPUs at once.  Like
 * all softirq code it must not sleep.
 *
 * On unload the sysfs files go first, so nothing can schedule the tasklet
 * any more; tasklet_kill() then waits until it is neither scheduled nor
 * running.  Since Linux 5.9 the callback gets the tasklet_struct
 * (tasklet_setup(), from_tasklet()) instead of an unsigned long.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/compiler.h>
#include <linux/init.h>
#include <linux/interrupt.h>
#include <linux/kernel.h>
#include <linux/kobject.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/printk.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/sysfs.h>

#define TASKLET_DIR "example_tasklet"

static struct tasklet_struct demo_tasklet;
static atomic_t demo_runs = ATOMIC_INIT(0);
/* ktime_get_ns() at the last tasklet_schedule() */
static u64 demo_scheduled_ns;
static struct kobject *demo_kobj;

/* Softirq context: must not sleep. */
static void demo_tasklet_fn(struct tasklet_struct *t)
{
	u64 delay_ns = ktime_get_ns() - READ_ONCE(demo_scheduled_ns);

	pr_info("tasklet run %d on CPU %d in %s context, %llu us after tasklet_schedule()\n",
		atomic_inc_return(&demo_runs), smp_processor_id(),
		in_serving_softirq() ? "softirq" : "task",
		div_u64(delay_ns, NSEC_PER_USEC));
}

static void demo_schedule(void)
{
	WRITE_ONCE(demo_scheduled_ns, ktime_get_ns());
	tasklet_schedule(&demo_tasklet);
}

static ssize_t runs_show(struct kobject *kobj, struct kobj_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&demo_runs));
}

static ssize_t schedule_store(struct kobject *kobj,
			      struct kobj_attribute *attr, const char *buf,
			      size_t count)
{
	/* "1", with or without a newline; anything else is refused. */
	if (!sysfs_streq(buf, "1"))
		return -EINVAL;

	demo_schedule();
	return count;
}

static struct kobj_attribute runs_attr = __ATTR_RO(runs);
/* __ATTR_WO: mode 0200, only root may write, nobody may read. */
static struct kobj_attribute schedule_attr = __ATTR_WO(schedule);

static struct attribute *demo_attrs[] = {
	&runs_attr.attr,
	&schedule_attr.attr,
	NULL,
};

static const struct attribute_group demo_group = {
	.attrs = demo_attrs,
};

static int __init example_tasklet_start(void)
{
	int ret;

	tasklet_setup(&demo_tasklet, demo_tasklet_fn);

	demo_kobj = kobject_create_and_add(TASKLET_DIR, kernel_kobj);
	if (!demo_kobj) {
		pr_err("cannot create /sys/kernel/%s\n", TASKLET_DIR);
		return -ENOMEM;
	}
	ret = sysfs_create_group(demo_kobj, &demo_group);
	if (ret) {
		pr_err("cannot create the files of /sys/kernel/%s: error %d\n",
		       TASKLET_DIR, ret);
		kobject_put(demo_kobj);
		return ret;
	}

	pr_info("init: scheduling the tasklet\n");
	demo_schedule();
	pr_info("init: returning; the tasklet runs later, in softirq context\n");
	return 0;
}

static void __exit example_tasklet_stop(void)
{
	/* Waits for a store in progress; no new one can start. */
	sysfs_remove_group(demo_kobj, &demo_group);
	kobject_put(demo_kobj);
	tasklet_kill(&demo_tasklet);
	pr_info("unloaded after %d tasklet runs\n", atomic_read(&demo_runs));
}

module_init(example_tasklet_start);
module_exit(example_tasklet_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 25: a tasklet runs deferred work in softirq context");
