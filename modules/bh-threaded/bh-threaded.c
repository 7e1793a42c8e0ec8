// SPDX-License-Identifier: GPL-2.0-only
/*
 * bh-threaded: a threaded interrupt handler.
 *
 * request_threaded_irq() registers two handlers for one interrupt.  The
 * hard handler runs in hard interrupt context, as request_irq()'s does: it
 * only counts, notes the time and returns IRQ_WAKE_THREAD.  The kernel then
 * wakes the interrupt's own kernel thread, which request_threaded_irq()
 * created and named "irq/N-bh-threaded" (ps shows the whole name; the
 * task's comm, current->comm, keeps its first 15 characters).  The thread
 * runs the threaded handler in process context: it may sleep.  Here it
 * sleeps a little (msleep(), standing for slow work such as talking to a
 * device over a bus), then reads the button, drives the LED to the same
 * level, and logs, naming the thread it runs in (one line):
 *
 *	bh_threaded: threaded handler 2 in irq/45-bh-threa: button 1, LED on,
 *	2 hard handlers so far, 20473 us after the last one
 *
 * An interrupt that comes while the thread runs has its hard handler run at
 * once; the thread then runs once more for all that came meanwhile, so
 * thread_runs may stay below hard_irqs.
 *
 * As in the intrpt lab, the button is simgpio line "line" (4), an input
 * whose both edges raise the interrupt, and the LED simgpio line "led" (5),
 * an output; a gpiod lookup table gives them to the platform device
 * "bh-threaded".  simgpio (lab 30) sets the button from user space:
 *
 *	# echo 1 > /sys/devices/platform/simgpio/line4/level
 *
 *	/sys/devices/platform/bh-threaded/irq		the interrupt number
 *	/sys/devices/platform/bh-threaded/hard_irqs	hard handlers run
 *	/sys/devices/platform/bh-threaded/thread_runs	threaded handlers run
 *	/sys/devices/platform/bh-threaded/button	level the thread read
 *	/sys/devices/platform/bh-threaded/led		level it set
 *
 * It calls simgpio_lines(), which simgpio exports, so the kernel loads
 * simgpio first; without simgpio's chip the load fails with ENODEV.
 * Unloading frees the interrupt, which waits for a running threaded handler
 * and stops the thread.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/device.h>
#include <linux/err.h>
#include <linux/gpio/consumer.h>
#include <linux/gpio/machine.h>
#include <linux/init.h>
#include <linux/interrupt.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/platform_device.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/timekeeping.h>

#define BH_THREADED_NAME "bh-threaded"
#define BH_THREADED_CHIP "simgpio"
#define BH_THREADED_LINE 4
#define BH_THREADED_LED 5
#define BH_THREADED_WORK_MS 20

/*
 * simgpio's interface (its simgpio.h).  bh-threaded is a DKMS package of
 * its own and cannot include a file of simgpio's package, so it carries the
 * declaration itself; it must stay the same as simgpio's.
 */
int simgpio_lines(void);

static unsigned int line = BH_THREADED_LINE;
module_param(line, uint, 0444);
MODULE_PARM_DESC(line, "simgpio line of the button, an input whose edges raise the interrupt");

static unsigned int led = BH_THREADED_LED;
module_param(led, uint, 0444);
MODULE_PARM_DESC(led, "simgpio line of the LED, an output the threaded handler drives");

/* The lines; bh_threaded_start() fills in their numbers. */
static struct gpiod_lookup_table bh_threaded_gpios = {
	.dev_id = BH_THREADED_NAME,
	.table = {
		GPIO_LOOKUP(BH_THREADED_CHIP, BH_THREADED_LINE, "button",
			    GPIO_ACTIVE_HIGH),
		GPIO_LOOKUP(BH_THREADED_CHIP, BH_THREADED_LED, "led",
			    GPIO_ACTIVE_HIGH),
		{ }
	},
};

struct bh_threaded_state {
	struct platform_device *pdev;
	struct gpio_desc *button;
	struct gpio_desc *led;
	int irq;
	struct mutex led_lock;		/* one writer of the LED at a time */
	spinlock_t lock;		/* guards the fields below */
	unsigned int hard_irqs;
	unsigned int thread_runs;
	ktime_t last_hard;
	int button_level;
	int led_level;
};

static struct bh_threaded_state bh_threaded = {
	.irq = -1,
	.led_lock = __MUTEX_INITIALIZER(bh_threaded.led_lock),
	.lock = __SPIN_LOCK_UNLOCKED(bh_threaded.lock),
};

/* The LED follows the button.  Process context, st->led_lock held. */
static int bh_threaded_follow(struct bh_threaded_state *st)
{
	int level = gpiod_get_value_cansleep(st->button);

	if (level < 0)
		return level;
	gpiod_set_value_cansleep(st->led, level);

	spin_lock_irq(&st->lock);
	st->button_level = level;
	st->led_level = level;
	spin_unlock_irq(&st->lock);
	return level;
}

/* Hard handler: hard interrupt context.  Count, then wake the thread. */
static irqreturn_t bh_threaded_hard(int irq, void *dev_id)
{
	struct bh_threaded_state *st = dev_id;

	spin_lock(&st->lock);
	st->hard_irqs++;
	st->last_hard = ktime_get();
	spin_unlock(&st->lock);

	return IRQ_WAKE_THREAD;
}

/* Threaded handler: the interrupt's kernel thread, process context. */
static irqreturn_t bh_threaded_thread(int irq, void *dev_id)
{
	struct bh_threaded_state *st = dev_id;
	unsigned int run, hard;
	s64 delay_us;
	int level;

	/* Allowed here, unlike in a hard handler or a tasklet. */
	msleep(BH_THREADED_WORK_MS);

	mutex_lock(&st->led_lock);
	level = bh_threaded_follow(st);
	mutex_unlock(&st->led_lock);

	spin_lock_irq(&st->lock);
	run = ++st->thread_runs;
	hard = st->hard_irqs;
	delay_us = ktime_us_delta(ktime_get(), st->last_hard);
	spin_unlock_irq(&st->lock);

	pr_info("threaded handler %u in %s: button %d, LED %s, %u hard handlers so far, %lld us after the last one\n",
		run, current->comm, level, level > 0 ? "on" : "off", hard,
		delay_us);
	return IRQ_HANDLED;
}

static ssize_t irq_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(bh_threaded.irq));
}

static ssize_t hard_irqs_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	unsigned int count;

	spin_lock_irq(&bh_threaded.lock);
	count = bh_threaded.hard_irqs;
	spin_unlock_irq(&bh_threaded.lock);
	return sysfs_emit(buf, "%u\n", count);
}

static ssize_t thread_runs_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	unsigned int count;

	spin_lock_irq(&bh_threaded.lock);
	count = bh_threaded.thread_runs;
	spin_unlock_irq(&bh_threaded.lock);
	return sysfs_emit(buf, "%u\n", count);
}

static ssize_t button_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	int level;

	spin_lock_irq(&bh_threaded.lock);
	level = bh_threaded.button_level;
	spin_unlock_irq(&bh_threaded.lock);
	return sysfs_emit(buf, "%d\n", level);
}

static ssize_t led_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	int level;

	spin_lock_irq(&bh_threaded.lock);
	level = bh_threaded.led_level;
	spin_unlock_irq(&bh_threaded.lock);
	return sysfs_emit(buf, "%d\n", level);
}

static DEVICE_ATTR_RO(irq);
static DEVICE_ATTR_RO(hard_irqs);
static DEVICE_ATTR_RO(thread_runs);
static DEVICE_ATTR_RO(button);
static DEVICE_ATTR_RO(led);

static struct attribute *bh_threaded_attrs[] = {
	&dev_attr_irq.attr,
	&dev_attr_hard_irqs.attr,
	&dev_attr_thread_runs.attr,
	&dev_attr_button.attr,
	&dev_attr_led.attr,
	NULL,
};
ATTRIBUTE_GROUPS(bh_threaded);

static int __init bh_threaded_start(void)
{
	struct bh_threaded_state *st = &bh_threaded;
	int lines;
	int ret;

	lines = simgpio_lines();
	if (lines < 0) {
		pr_err("no simgpio chip (error %d): load simgpio first\n",
		       lines);
		return -ENODEV;
	}
	if (line >= lines || led >= lines || line == led) {
		pr_err("button line %u and LED line %u must differ and be below %d\n",
		       line, led, lines);
		return -EINVAL;
	}
	bh_threaded_gpios.table[0].chip_hwnum = line;
	bh_threaded_gpios.table[1].chip_hwnum = led;
	gpiod_add_lookup_table(&bh_threaded_gpios);

	st->pdev = platform_device_alloc(BH_THREADED_NAME, PLATFORM_DEVID_NONE);
	if (!st->pdev) {
		ret = -ENOMEM;
		goto err_table;
	}
	st->pdev->dev.groups = bh_threaded_groups;
	ret = platform_device_add(st->pdev);
	if (ret) {
		pr_err("cannot add device %s: error %d\n", BH_THREADED_NAME,
		       ret);
		platform_device_put(st->pdev);
		goto err_table;
	}

	st->button = gpiod_get(&st->pdev->dev, "button", GPIOD_IN);
	if (IS_ERR(st->button)) {
		ret = PTR_ERR(st->button);
		pr_err("cannot get the button, simgpio line %u: error %d\n",
		       line, ret);
		goto err_device;
	}
	st->led = gpiod_get(&st->pdev->dev, "led", GPIOD_OUT_LOW);
	if (IS_ERR(st->led)) {
		ret = PTR_ERR(st->led);
		pr_err("cannot get the LED, simgpio line %u: error %d\n", led,
		       ret);
		goto err_button;
	}

	ret = gpiod_to_irq(st->button);
	if (ret < 0) {
		pr_err("simgpio line %u has no interrupt: error %d\n", line,
		       ret);
		goto err_led;
	}
	WRITE_ONCE(st->irq, ret);

	/* Creates the thread "irq/N-bh-threaded". */
	ret = request_threaded_irq(st->irq, bh_threaded_hard,
				   bh_threaded_thread,
				   IRQF_TRIGGER_RISING | IRQF_TRIGGER_FALLING,
				   BH_THREADED_NAME, st);
	if (ret) {
		pr_err("cannot request irq %d: error %d\n", st->irq, ret);
		goto err_led;
	}

	mutex_lock(&st->led_lock);
	bh_threaded_follow(st);
	mutex_unlock(&st->led_lock);

	pr_info("button on simgpio line %u is irq %d, LED on line %u; threaded handler sleeps %d ms\n",
		line, st->irq, led, BH_THREADED_WORK_MS);
	return 0;

err_led:
	gpiod_put(st->led);
err_button:
	gpiod_put(st->button);
err_device:
	platform_device_unregister(st->pdev);
err_table:
	gpiod_remove_lookup_table(&bh_threaded_gpios);
	return ret;
}

static void __exit bh_threaded_stop(void)
{
	struct bh_threaded_state *st = &bh_threaded;

	/* Waits for both handlers and stops the thread. */
	free_irq(st->irq, st);
	gpiod_set_value_cansleep(st->led, 0);
	gpiod_put(st->led);
	gpiod_put(st->button);
	platform_device_unregister(st->pdev);
	gpiod_remove_lookup_table(&bh_threaded_gpios);
	pr_info("freed irq %d after %u hard handlers and %u threaded ones, LED off\n",
		st->irq, st->hard_irqs, st->thread_runs);
}

module_init(bh_threaded_start);
module_exit(bh_threaded_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 33: a threaded interrupt handler that may sleep");
