// SPDX-License-Identifier: GPL-2.0-only
/*
 * bottomhalf: an interrupt handler split into a top half and a bottom half.
 *
 * The top half, the handler request_irq() registers, runs in hard interrupt
 * context: it does the urgent part, drives the LED to the button's level,
 * and leaves the rest to a bottom half, a tasklet it schedules.  The
 * tasklet runs soon after in softirq context, with interrupts enabled: it
 * still cannot sleep, but it no longer holds up the interrupt line.  It
 * reads the button and logs what it found and how long after the top half
 * it ran (one line):
 *
 *	bottomhalf: bottom half 3: button 1, 3 top halves so far,
 *	41 us after the last one
 *
 * A tasklet scheduled again before it has run runs once: when two top halves
 * come quickly, there is one bottom half for both.  bottom_halves may
 * therefore stay below top_halves.  (A bottom half that must sleep goes to
 * a workqueue instead, as in the sched lab, or to a threaded handler, as in
 * the bh-threaded lab; new code prefers those to tasklets.)
 *
 * As in the intrpt lab, the button is simgpio line "line" (2), an input
 * whose both edges raise the interrupt, and the LED simgpio line "led" (3),
 * an output; a gpiod lookup table gives them to the platform device
 * "bottomhalf".  simgpio (lab 30) sets the button from user space:
 *
 *	# echo 1 > /sys/devices/platform/simgpio/line2/level
 *
 *	/sys/devices/platform/bottomhalf/irq		the interrupt number
 *	/sys/devices/platform/bottomhalf/top_halves	top halves run
 *	/sys/devices/platform/bottomhalf/bottom_halves	bottom halves run
 *	/sys/devices/platform/bottomhalf/button		level the top half read
 *	/sys/devices/platform/bottomhalf/led		level it set
 *
 * It calls simgpio_lines(), which simgpio exports, so the kernel loads
 * simgpio first; without simgpio's chip the load fails with ENODEV.
 * Unloading frees the interrupt first (no top half schedules the tasklet
 * any more), then tasklet_kill() waits for a scheduled bottom half to run.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/device.h>
#include <linux/err.h>
#include <linux/gpio/consumer.h>
#include <linux/gpio/machine.h>
#include <linux/init.h>
#include <linux/interrupt.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/platform_device.h>
#include <linux/printk.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/timekeeping.h>

#define BOTTOMHALF_NAME "bottomhalf"
#define BOTTOMHALF_CHIP "simgpio"
#define BOTTOMHALF_LINE 2
#define BOTTOMHALF_LED 3

/*
 * simgpio's interface (its simgpio.h).  bottomhalf is a DKMS package of its
 * own and cannot include a file of simgpio's package, so it carries the
 * declaration itself; it must stay the same as simgpio's.
 */
int simgpio_lines(void);

static unsigned int line = BOTTOMHALF_LINE;
module_param(line, uint, 0444);
MODULE_PARM_DESC(line, "simgpio line of the button, an input whose edges raise the interrupt");

static unsigned int led = BOTTOMHALF_LED;
module_param(led, uint, 0444);
MODULE_PARM_DESC(led, "simgpio line of the LED, an output the top half drives");

/* The lines; bottomhalf_start() fills in their numbers. */
static struct gpiod_lookup_table bottomhalf_gpios = {
	.dev_id = BOTTOMHALF_NAME,
	.table = {
		GPIO_LOOKUP(BOTTOMHALF_CHIP, BOTTOMHALF_LINE, "button",
			    GPIO_ACTIVE_HIGH),
		GPIO_LOOKUP(BOTTOMHALF_CHIP, BOTTOMHALF_LED, "led",
			    GPIO_ACTIVE_HIGH),
		{ }
	},
};

struct bottomhalf_state {
	struct platform_device *pdev;
	struct gpio_desc *button;
	struct gpio_desc *led;
	int irq;
	struct tasklet_struct tasklet;
	spinlock_t lock;		/* guards the fields below */
	unsigned int top_halves;
	unsigned int bottom_halves;
	ktime_t last_top;
	int button_level;
	int led_level;
};

static struct bottomhalf_state bottomhalf = {
	.irq = -1,
	.lock = __SPIN_LOCK_UNLOCKED(bottomhalf.lock),
};

/* The LED follows the button.  Called with st->lock held. */
static void bottomhalf_follow(struct bottomhalf_state *st)
{
	int level = gpiod_get_value(st->button);

	if (level < 0)
		return;
	gpiod_set_value(st->led, level);
	st->button_level = level;
	st->led_level = level;
}

/* Top half: hard interrupt context.  The urgent part, then defer. */
static irqreturn_t bottomhalf_top(int irq, void *dev_id)
{
	struct bottomhalf_state *st = dev_id;

	spin_lock(&st->lock);
	st->top_halves++;
	st->last_top = ktime_get();
	bottomhalf_follow(st);
	spin_unlock(&st->lock);

	tasklet_schedule(&st->tasklet);
	return IRQ_HANDLED;
}

/* Bottom half: softirq context, interrupts enabled, still no sleeping. */
static void bottomhalf_bottom(struct tasklet_struct *t)
{
	struct bottomhalf_state *st = from_tasklet(st, t, tasklet);
	unsigned int run, tops;
	unsigned long flags;
	s64 delay_us;
	int level;

	level = gpiod_get_value(st->button);

	spin_lock_irqsave(&st->lock, flags);
	run = ++st->bottom_halves;
	tops = st->top_halves;
	delay_us = ktime_us_delta(ktime_get(), st->last_top);
	spin_unlock_irqrestore(&st->lock, flags);

	pr_info("bottom half %u: button %d, %u top halves so far, %lld us after the last one\n",
		run, level, tops, delay_us);
}

static ssize_t irq_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(bottomhalf.irq));
}

static ssize_t top_halves_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	unsigned int count;

	spin_lock_irq(&bottomhalf.lock);
	count = bottomhalf.top_halves;
	spin_unlock_irq(&bottomhalf.lock);
	return sysfs_emit(buf, "%u\n", count);
}

static ssize_t bottom_halves_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	unsigned int count;

	spin_lock_irq(&bottomhalf.lock);
	count = bottomhalf.bottom_halves;
	spin_unlock_irq(&bottomhalf.lock);
	return sysfs_emit(buf, "%u\n", count);
}

static ssize_t button_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	int level;

	spin_lock_irq(&bottomhalf.lock);
	level = bottomhalf.button_level;
	spin_unlock_irq(&bottomhalf.lock);
	return sysfs_emit(buf, "%d\n", level);
}

static ssize_t led_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	int level;

	spin_lock_irq(&bottomhalf.lock);
	level = bottomhalf.led_level;
	spin_unlock_irq(&bottomhalf.lock);
	return sysfs_emit(buf, "%d\n", level);
}

static DEVICE_ATTR_RO(irq);
static DEVICE_ATTR_RO(top_halves);
static DEVICE_ATTR_RO(bottom_halves);
static DEVICE_ATTR_RO(button);
static DEVICE_ATTR_RO(led);

static struct attribute *bottomhalf_attrs[] = {
	&dev_attr_irq.attr,
	&dev_attr_top_halves.attr,
	&dev_attr_bottom_halves.attr,
	&dev_attr_button.attr,
	&dev_attr_led.attr,
	NULL,
};
ATTRIBUTE_GROUPS(bottomhalf);

static int __init bottomhalf_start(void)
{
	struct bottomhalf_state *st = &bottomhalf;
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
	bottomhalf_gpios.table[0].chip_hwnum = line;
	bottomhalf_gpios.table[1].chip_hwnum = led;
	gpiod_add_lookup_table(&bottomhalf_gpios);

	st->pdev = platform_device_alloc(BOTTOMHALF_NAME, PLATFORM_DEVID_NONE);
	if (!st->pdev) {
		ret = -ENOMEM;
		goto err_table;
	}
	st->pdev->dev.groups = bottomhalf_groups;
	ret = platform_device_add(st->pdev);
	if (ret) {
		pr_err("cannot add device %s: error %d\n", BOTTOMHALF_NAME, ret);
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

	/* Ready before the first top half can schedule it. */
	tasklet_setup(&st->tasklet, bottomhalf_bottom);

	ret = request_irq(st->irq, bottomhalf_top,
			  IRQF_TRIGGER_RISING | IRQF_TRIGGER_FALLING,
			  BOTTOMHALF_NAME, st);
	if (ret) {
		pr_err("cannot request irq %d: error %d\n", st->irq, ret);
		goto err_led;
	}

	spin_lock_irq(&st->lock);
	bottomhalf_follow(st);
	spin_unlock_irq(&st->lock);

	pr_info("button on simgpio line %u is irq %d, LED on line %u; bottom half: a tasklet\n",
		line, st->irq, led);
	return 0;

err_led:
	gpiod_put(st->led);
err_button:
	gpiod_put(st->button);
err_device:
	platform_device_unregister(st->pdev);
err_table:
	gpiod_remove_lookup_table(&bottomhalf_gpios);
	return ret;
}

static void __exit bottomhalf_stop(void)
{
	struct bottomhalf_state *st = &bottomhalf;

	/* No top half runs after this, so nothing schedules the tasklet... */
	free_irq(st->irq, st);
	/* ...and this waits for the one scheduled, if any, to have run. */
	tasklet_kill(&st->tasklet);

	gpiod_set_value(st->led, 0);
	gpiod_put(st->led);
	gpiod_put(st->button);
	platform_device_unregister(st->pdev);
	gpiod_remove_lookup_table(&bottomhalf_gpios);
	pr_info("freed irq %d after %u top halves and %u bottom halves, LED off\n",
		st->irq, st->top_halves, st->bottom_halves);
}

module_init(bottomhalf_start);
module_exit(bottomhalf_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 32: an interrupt handler with a top half and a tasklet bottom half");
