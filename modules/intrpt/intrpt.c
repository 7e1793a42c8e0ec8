// SPDX-License-Identifier: GPL-2.0-only
/*
 * intrpt: an interrupt handler for a button, lighting a LED.
 *
 * A button on a GPIO line raises an interrupt when it is pressed or
 * released; the handler requested with request_irq() runs then, in hard
 * interrupt context, and drives a LED on another GPIO line.  The lines are
 * simgpio's (lab 30), whose levels user space sets:
 *
 *	# echo 1 > /sys/devices/platform/simgpio/line0/level
 *	$ cat /sys/devices/platform/simgpio/line1/level
 *	1
 *
 * The button is line "line" (0), an input; the LED line "led" (1), an
 * output.  intrpt takes them the way a board file gives GPIOs to a driver:
 * a gpiod lookup table maps the functions "button" and "led" of its
 * platform device "intrpt" to lines of the chip labelled "simgpio", and
 * gpiod_get() requests them.  gpiod_to_irq() gives the button's interrupt,
 * requested for both edges.  (simgpio raises it in the system call that
 * writes the level, with local interrupts disabled: a handler obeys the same
 * rules as for a hardware interrupt.)  The handler reads the button and sets
 * the LED to the same level, so the LED follows the button, and counts.  It
 * does not print: printk() from a hard interrupt handler is allowed but slow
 * (the bottomhalf lab prints from its bottom half).
 *
 *	/sys/devices/platform/intrpt/irq	 the button's interrupt number
 *	/sys/devices/platform/intrpt/interrupts how often the handler ran
 *	/sys/devices/platform/intrpt/button	 the level it last read
 *	/sys/devices/platform/intrpt/led	 the level it last set
 *
 * intrpt calls simgpio_lines(), which simgpio exports, to check the line
 * numbers: the kernel then loads simgpio first and keeps it loaded while
 * intrpt is.  Without simgpio's chip the load fails with ENODEV; with a line
 * the chip does not have, or one line for both, with EINVAL.  Unloading
 * frees the interrupt (waiting for a running handler), turns the LED off
 * and releases the lines.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/device.h>
#include <linux/err.h>
#include <linux/gpio/consumer.h>
#include <linux/gpio/machine.h>
#include <linux/init.h>
#include <linux/interrupt.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/platform_device.h>
#include <linux/printk.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>

#define INTRPT_NAME "intrpt"
#define INTRPT_CHIP "simgpio"
#define INTRPT_LINE 0
#define INTRPT_LED 1

/*
 * simgpio's interface (its simgpio.h).  intrpt is a DKMS package of its own
 * and cannot include a file of simgpio's package, so it carries the
 * declaration itself; it must stay the same as simgpio's.
 */
int simgpio_lines(void);

static unsigned int line = INTRPT_LINE;
module_param(line, uint, 0444);
MODULE_PARM_DESC(line, "simgpio line of the button, an input whose edges raise the interrupt");

static unsigned int led = INTRPT_LED;
module_param(led, uint, 0444);
MODULE_PARM_DESC(led, "simgpio line of the LED, an output the handler drives");

/* The lines; intrpt_start() fills in their numbers. */
static struct gpiod_lookup_table intrpt_gpios = {
	.dev_id = INTRPT_NAME,
	.table = {
		GPIO_LOOKUP(INTRPT_CHIP, INTRPT_LINE, "button", GPIO_ACTIVE_HIGH),
		GPIO_LOOKUP(INTRPT_CHIP, INTRPT_LED, "led", GPIO_ACTIVE_HIGH),
		{ }
	},
};

struct intrpt_state {
	struct platform_device *pdev;
	struct gpio_desc *button;
	struct gpio_desc *led;
	int irq;
	spinlock_t lock;		/* guards the fields below */
	unsigned int interrupts;
	int button_level;
	int led_level;
};

static struct intrpt_state intrpt = {
	.irq = -1,
	.lock = __SPIN_LOCK_UNLOCKED(intrpt.lock),
};

/* The LED follows the button.  Called with st->lock held. */
static void intrpt_follow(struct intrpt_state *st)
{
	int level = gpiod_get_value(st->button);

	if (level < 0)
		return;
	gpiod_set_value(st->led, level);
	st->button_level = level;
	st->led_level = level;
}

/*
 * The top and only half: quick, cannot sleep.  simgpio's chip never sleeps,
 * so gpiod_get_value() and gpiod_set_value() may be called here.
 */
static irqreturn_t intrpt_handler(int irq, void *dev_id)
{
	struct intrpt_state *st = dev_id;

	spin_lock(&st->lock);
	st->interrupts++;
	intrpt_follow(st);
	spin_unlock(&st->lock);

	return IRQ_HANDLED;
}

static ssize_t irq_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(intrpt.irq));
}

static ssize_t interrupts_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	unsigned int interrupts;

	spin_lock_irq(&intrpt.lock);
	interrupts = intrpt.interrupts;
	spin_unlock_irq(&intrpt.lock);
	return sysfs_emit(buf, "%u\n", interrupts);
}

static ssize_t button_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	int level;

	spin_lock_irq(&intrpt.lock);
	level = intrpt.button_level;
	spin_unlock_irq(&intrpt.lock);
	return sysfs_emit(buf, "%d\n", level);
}

static ssize_t led_show(struct device *dev, struct device_attribute *attr,
			char *buf)
{
	int level;

	spin_lock_irq(&intrpt.lock);
	level = intrpt.led_level;
	spin_unlock_irq(&intrpt.lock);
	return sysfs_emit(buf, "%d\n", level);
}

static DEVICE_ATTR_RO(irq);
static DEVICE_ATTR_RO(interrupts);
static DEVICE_ATTR_RO(button);
static DEVICE_ATTR_RO(led);

static struct attribute *intrpt_attrs[] = {
	&dev_attr_irq.attr,
	&dev_attr_interrupts.attr,
	&dev_attr_button.attr,
	&dev_attr_led.attr,
	NULL,
};
ATTRIBUTE_GROUPS(intrpt);

static int __init intrpt_start(void)
{
	struct intrpt_state *st = &intrpt;
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
	intrpt_gpios.table[0].chip_hwnum = line;
	intrpt_gpios.table[1].chip_hwnum = led;
	gpiod_add_lookup_table(&intrpt_gpios);

	/* The consumer device: the lookup table's dev_id, its files' home. */
	st->pdev = platform_device_alloc(INTRPT_NAME, PLATFORM_DEVID_NONE);
	if (!st->pdev) {
		ret = -ENOMEM;
		goto err_table;
	}
	st->pdev->dev.groups = intrpt_groups;
	ret = platform_device_add(st->pdev);
	if (ret) {
		pr_err("cannot add device %s: error %d\n", INTRPT_NAME, ret);
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

	ret = request_irq(st->irq, intrpt_handler,
			  IRQF_TRIGGER_RISING | IRQF_TRIGGER_FALLING,
			  INTRPT_NAME, st);
	if (ret) {
		pr_err("cannot request irq %d: error %d\n", st->irq, ret);
		goto err_led;
	}

	/* Start in step; the handler keeps the LED there from now on. */
	spin_lock_irq(&st->lock);
	intrpt_follow(st);
	spin_unlock_irq(&st->lock);

	pr_info("button on simgpio line %u is irq %d, LED on line %u follows it\n",
		line, st->irq, led);
	return 0;

err_led:
	gpiod_put(st->led);
err_button:
	gpiod_put(st->button);
err_device:
	platform_device_unregister(st->pdev);
err_table:
	gpiod_remove_lookup_table(&intrpt_gpios);
	return ret;
}

static void __exit intrpt_stop(void)
{
	struct intrpt_state *st = &intrpt;

	/* Waits for a handler that is running: none runs after this. */
	free_irq(st->irq, st);
	gpiod_set_value(st->led, 0);
	gpiod_put(st->led);
	gpiod_put(st->button);
	platform_device_unregister(st->pdev);
	gpiod_remove_lookup_table(&intrpt_gpios);
	pr_info("freed irq %d after %u interrupts, LED off\n", st->irq,
		st->interrupts);
}

module_init(intrpt_start);
module_exit(intrpt_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 31: an interrupt handler for a button on a GPIO line, lighting a LED");
