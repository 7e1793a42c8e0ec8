// SPDX-License-Identifier: GPL-2.0-only
/*
 * simgpio: a simulated GPIO chip whose interrupts user space raises.
 *
 * The module creates the platform device "simgpio" and binds its driver to
 * it.  The driver registers with gpiolib a chip labelled "simgpio" with
 * "lines" lines (8 unless the parameter says otherwise), and an interrupt
 * controller for them through gpiolib's irqchip support (GPIOLIB_IRQCHIP):
 * gpiod_to_irq() of a line gives a Linux interrupt number that any module
 * may request_irq() or request_threaded_irq().
 *
 * Nobody can press a button on a virtual machine, so user space plays the
 * outside world.  Each line has a folder in sysfs:
 *
 *	/sys/devices/platform/simgpio/lineN/level	0 or 1
 *	/sys/devices/platform/simgpio/lineN/direction	in or out
 *	/sys/devices/platform/simgpio/lineN/trigger	none, edge-rising,
 *		edge-falling, edge-both, level-high or level-low
 *	/sys/devices/platform/simgpio/lineN/irqs	interrupts raised
 *
 * Writing 0 or 1 to the level of an input line sets what the line carries:
 * gpiod_get_value() reads it back.  When the line's interrupt is in use and
 * the change matches its trigger (what the consumer's request_irq() flags
 * set through irq_set_type()), the chip raises the interrupt: the irq core
 * runs the line's flow handler (handle_edge_irq() or handle_level_irq()),
 * which runs the handlers requested on it, as for an interrupt from a real
 * chip.  The writer's system call does it, with local interrupts disabled
 * (generic_handle_domain_irq_safe()):
 *
 *	# echo 1 > /sys/devices/platform/simgpio/line0/level
 *
 * The level of an output line is what its consumer drives with
 * gpiod_set_value(); writing it from user space fails with EPERM.  A line
 * nobody has requested is an input.
 *
 * Edge triggers fire on a write that changes the level in their direction.
 * A level trigger fires on every write that leaves the line at its active
 * level, and once when the interrupt is started while the line is active;
 * the simulated device asserts it once per write and does not assert it
 * again and again while the line stays active, which here, with no device
 * a handler could quiet, would be an interrupt storm.  An event that comes
 * while the interrupt is masked is latched and raised when it is unmasked
 * (a level event only if the line is still active then); events from
 * before the interrupt was requested are forgotten when it is started.
 *
 * Other modules use the lines as any GPIO lines: a gpiod lookup table that
 * names the chip by its label and the line by its number, gpiod_get(),
 * gpiod_to_irq(), request_irq().  simgpio_lines() tells them how many lines
 * the chip has; calling it makes the kernel load simgpio before them and
 * keep it loaded while they are.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/device.h>
#include <linux/gpio/driver.h>
#include <linux/init.h>
#include <linux/irq.h>
#include <linux/irq_work.h>
#include <linux/irqdesc.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/platform_device.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>

#include "simgpio.h"

#define SIMGPIO_NAME "simgpio"
#define SIMGPIO_MAX_LINES 64

static unsigned int lines = 8;
module_param(lines, uint, 0444);
MODULE_PARM_DESC(lines, "Number of GPIO lines of the chip (1-64)");

/* The state of one line; simgpio.lock guards all of it. */
struct simgpio_line {
	bool in_level;		/* what user space set (inputs) */
	bool out_level;		/* what the consumer drives (outputs) */
	bool is_out;
	bool masked;		/* its interrupt is masked */
	bool latched;		/* an event came while masked */
	bool resend;		/* a latched event waits for simgpio_resend() */
	unsigned int type;	/* IRQ_TYPE_* trigger */
	unsigned long irqs;	/* interrupts raised */
};

/* A sysfs file of one line: the attribute and which line it belongs to. */
struct simgpio_attr {
	struct device_attribute dattr;
	unsigned int offset;
};

/* The folder lineN and its files. */
struct simgpio_line_sysfs {
	struct simgpio_attr level;
	struct simgpio_attr direction;
	struct simgpio_attr trigger;
	struct simgpio_attr irqs;
	struct attribute *attrs[5];
	struct attribute_group group;
	char name[16];
};

struct simgpio {
	struct gpio_chip gc;
	/* Raw: the irq core calls the irq_chip callbacks under a raw lock. */
	raw_spinlock_t lock;
	bool dying;		/* being removed: raise nothing more */
	struct irq_work resend;	/* raises latched events after an unmask */
	struct simgpio_line *lines;
	struct simgpio_line_sysfs *sysfs;
	const struct attribute_group **groups;
};

static struct platform_device *simgpio_pdev;
/* The chip while it is registered, for simgpio_lines(). */
static struct simgpio *simgpio_chip;

/**
 * simgpio_lines() - how many lines the simgpio chip has
 *
 * A module that uses the chip's lines may check its line numbers against
 * it; calling it makes the kernel load simgpio first and refuse to unload
 * it while the caller is loaded.
 *
 * Context: any.
 * Return: the number of lines, or -ENODEV when the chip is not registered.
 */
int simgpio_lines(void)
{
	struct simgpio *sim = READ_ONCE(simgpio_chip);

	return sim ? sim->gc.ngpio : -ENODEV;
}
EXPORT_SYMBOL_GPL(simgpio_lines);

static bool simgpio_level(const struct simgpio_line *line)
{
	return line->is_out ? line->out_level : line->in_level;
}

static bool simgpio_is_level_type(unsigned int type)
{
	return type & IRQ_TYPE_LEVEL_MASK;
}

/* Whether a level trigger's line is at its active level. */
static bool simgpio_asserted(const struct simgpio_line *line)
{
	if (line->type == IRQ_TYPE_LEVEL_HIGH)
		return line->in_level;
	if (line->type == IRQ_TYPE_LEVEL_LOW)
		return !line->in_level;
	return false;
}

/* Whether writing @now over @before is an event for trigger @type. */
static bool simgpio_event(unsigned int type, bool before, bool now)
{
	switch (type) {
	case IRQ_TYPE_EDGE_RISING:
		return !before && now;
	case IRQ_TYPE_EDGE_FALLING:
		return before && !now;
	case IRQ_TYPE_EDGE_BOTH:
		return before != now;
	case IRQ_TYPE_LEVEL_HIGH:
		return now;
	case IRQ_TYPE_LEVEL_LOW:
		return !now;
	default:
		return false;
	}
}

static const char *simgpio_trigger_name(unsigned int type)
{
	switch (type) {
	case IRQ_TYPE_EDGE_RISING:
		return "edge-rising";
	case IRQ_TYPE_EDGE_FALLING:
		return "edge-falling";
	case IRQ_TYPE_EDGE_BOTH:
		return "edge-both";
	case IRQ_TYPE_LEVEL_HIGH:
		return "level-high";
	case IRQ_TYPE_LEVEL_LOW:
		return "level-low";
	default:
		return "none";
	}
}

/*
 * Raise the interrupt of line @offset: the irq core finds its descriptor
 * in the chip's irq domain and runs its flow handler, which runs the
 * handlers requested on it.  Callable from any context, with no lock held:
 * the flow handler calls the irq_chip callbacks below, and the handlers may
 * read or set lines.
 */
static void simgpio_raise(struct simgpio *sim, unsigned int offset)
{
	unsigned long flags;

	/* Fails (-EINVAL) only for a line whose interrupt was never mapped. */
	if (generic_handle_domain_irq_safe(sim->gc.irq.domain, offset))
		return;

	raw_spin_lock_irqsave(&sim->lock, flags);
	sim->lines[offset].irqs++;
	raw_spin_unlock_irqrestore(&sim->lock, flags);
}

/* irq_work: raise the events simgpio_irq_unmask() found latched. */
static void simgpio_resend(struct irq_work *work)
{
	struct simgpio *sim = container_of(work, struct simgpio, resend);
	unsigned int offset;

	for (offset = 0; offset < sim->gc.ngpio; offset++) {
		struct simgpio_line *line = &sim->lines[offset];
		unsigned long flags;
		bool fire = false;

		raw_spin_lock_irqsave(&sim->lock, flags);
		if (line->resend && !sim->dying) {
			line->resend = false;
			/* Masked again in the meantime: latch it again. */
			if (line->masked)
				line->latched = true;
			else
				fire = true;
		}
		raw_spin_unlock_irqrestore(&sim->lock, flags);

		if (fire)
			simgpio_raise(sim, offset);
	}
}

/* gpio_chip callbacks: the chip never sleeps, so any context may call them. */

static int simgpio_get_direction(struct gpio_chip *gc, unsigned int offset)
{
	struct simgpio *sim = gpiochip_get_data(gc);
	unsigned long flags;
	bool out;

	raw_spin_lock_irqsave(&sim->lock, flags);
	out = sim->lines[offset].is_out;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	return out ? GPIO_LINE_DIRECTION_OUT : GPIO_LINE_DIRECTION_IN;
}

static int simgpio_direction_input(struct gpio_chip *gc, unsigned int offset)
{
	struct simgpio *sim = gpiochip_get_data(gc);
	unsigned long flags;

	raw_spin_lock_irqsave(&sim->lock, flags);
	sim->lines[offset].is_out = false;
	raw_spin_unlock_irqrestore(&sim->lock, flags);
	return 0;
}

static int simgpio_direction_output(struct gpio_chip *gc, unsigned int offset,
				    int value)
{
	struct simgpio *sim = gpiochip_get_data(gc);
	unsigned long flags;

	raw_spin_lock_irqsave(&sim->lock, flags);
	sim->lines[offset].out_level = value;
	sim->lines[offset].is_out = true;
	raw_spin_unlock_irqrestore(&sim->lock, flags);
	return 0;
}

static int simgpio_get(struct gpio_chip *gc, unsigned int offset)
{
	struct simgpio *sim = gpiochip_get_data(gc);
	unsigned long flags;
	bool level;

	raw_spin_lock_irqsave(&sim->lock, flags);
	level = simgpio_level(&sim->lines[offset]);
	raw_spin_unlock_irqrestore(&sim->lock, flags);
	return level;
}

static void simgpio_set(struct gpio_chip *gc, unsigned int offset, int value)
{
	struct simgpio *sim = gpiochip_get_data(gc);
	unsigned long flags;

	raw_spin_lock_irqsave(&sim->lock, flags);
	sim->lines[offset].out_level = value;
	raw_spin_unlock_irqrestore(&sim->lock, flags);
}

/* A line its consumer releases is driven by nobody: an input again. */
static void simgpio_free(struct gpio_chip *gc, unsigned int offset)
{
	simgpio_direction_input(gc, offset);
}

/*
 * irq_chip callbacks.  The irq core calls them with the interrupt's
 * descriptor locked and local interrupts disabled; gpiolib set the chip as
 * the interrupt's chip data and hwirq is the line's offset.
 */

static struct simgpio *simgpio_of_irq(struct irq_data *d)
{
	return gpiochip_get_data(irq_data_get_irq_chip_data(d));
}

static void simgpio_irq_mask(struct irq_data *d)
{
	struct gpio_chip *gc = irq_data_get_irq_chip_data(d);
	struct simgpio *sim = gpiochip_get_data(gc);
	irq_hw_number_t hwirq = irqd_to_hwirq(d);
	unsigned long flags;

	raw_spin_lock_irqsave(&sim->lock, flags);
	sim->lines[hwirq].masked = true;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	/* An immutable irq_chip tells gpiolib itself (after masking). */
	gpiochip_disable_irq(gc, hwirq);
}

static void simgpio_irq_unmask(struct irq_data *d)
{
	struct gpio_chip *gc = irq_data_get_irq_chip_data(d);
	struct simgpio *sim = gpiochip_get_data(gc);
	irq_hw_number_t hwirq = irqd_to_hwirq(d);
	struct simgpio_line *line = &sim->lines[hwirq];
	unsigned long flags;

	gpiochip_enable_irq(gc, hwirq);

	raw_spin_lock_irqsave(&sim->lock, flags);
	line->masked = false;
	if (line->latched) {
		line->latched = false;
		/*
		 * The flow handler is running or the descriptor is locked:
		 * raise it from an irq_work.  Queued under the lock, so that
		 * once "dying" is set nothing is queued any more.
		 */
		if (!sim->dying && (!simgpio_is_level_type(line->type) ||
				    simgpio_asserted(line))) {
			line->resend = true;
			irq_work_queue(&sim->resend);
		}
	}
	raw_spin_unlock_irqrestore(&sim->lock, flags);
}

/* request_irq() starts the interrupt: forget what came before, unmask it. */
static unsigned int simgpio_irq_startup(struct irq_data *d)
{
	struct simgpio *sim = simgpio_of_irq(d);
	struct simgpio_line *line = &sim->lines[irqd_to_hwirq(d)];
	unsigned long flags;

	raw_spin_lock_irqsave(&sim->lock, flags);
	line->latched = simgpio_is_level_type(line->type) &&
			simgpio_asserted(line);
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	simgpio_irq_unmask(d);
	return 0;
}

/*
 * handle_edge_irq() acknowledges every interrupt it handles.  This chip has
 * no status register to clear: an event is either raised at once or
 * latched while masked, so there is nothing to do.
 */
static void simgpio_irq_ack(struct irq_data *d)
{
}

static int simgpio_irq_set_type(struct irq_data *d, unsigned int type)
{
	struct simgpio *sim = simgpio_of_irq(d);
	struct simgpio_line *line = &sim->lines[irqd_to_hwirq(d)];
	unsigned long flags;

	switch (type) {
	case IRQ_TYPE_NONE:
	case IRQ_TYPE_EDGE_RISING:
	case IRQ_TYPE_EDGE_FALLING:
	case IRQ_TYPE_EDGE_BOTH:
		irq_set_handler_locked(d, handle_edge_irq);
		break;
	case IRQ_TYPE_LEVEL_HIGH:
	case IRQ_TYPE_LEVEL_LOW:
		irq_set_handler_locked(d, handle_level_irq);
		break;
	default:
		return -EINVAL;
	}

	raw_spin_lock_irqsave(&sim->lock, flags);
	line->type = type;
	line->latched = false;
	raw_spin_unlock_irqrestore(&sim->lock, flags);
	return 0;
}

static const struct irq_chip simgpio_irq_chip = {
	.name = SIMGPIO_NAME,
	.irq_startup = simgpio_irq_startup,
	.irq_ack = simgpio_irq_ack,
	.irq_mask = simgpio_irq_mask,
	.irq_unmask = simgpio_irq_unmask,
	.irq_set_type = simgpio_irq_set_type,
	.flags = IRQCHIP_IMMUTABLE,
	/* Lock the line as an interrupt (an input) while it is requested. */
	GPIOCHIP_IRQ_RESOURCE_HELPERS,
};

/* sysfs: /sys/devices/platform/simgpio/lineN/{level,direction,trigger,irqs} */

static unsigned int simgpio_attr_offset(struct device_attribute *attr)
{
	return container_of(attr, struct simgpio_attr, dattr)->offset;
}

static ssize_t level_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct simgpio *sim = dev_get_drvdata(dev);
	unsigned int offset = simgpio_attr_offset(attr);
	unsigned long flags;
	bool level;

	raw_spin_lock_irqsave(&sim->lock, flags);
	level = simgpio_level(&sim->lines[offset]);
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	return sysfs_emit(buf, "%d\n", level);
}

/* The outside world sets an input line: raise its interrupt if it fires. */
static ssize_t level_store(struct device *dev, struct device_attribute *attr,
			   const char *buf, size_t count)
{
	struct simgpio *sim = dev_get_drvdata(dev);
	unsigned int offset = simgpio_attr_offset(attr);
	struct simgpio_line *line = &sim->lines[offset];
	unsigned long flags;
	unsigned int value;
	bool fire = false;
	int ret;

	ret = kstrtouint(buf, 10, &value);
	if (ret)
		return ret;
	if (value > 1)
		return -EINVAL;

	raw_spin_lock_irqsave(&sim->lock, flags);
	if (line->is_out) {
		raw_spin_unlock_irqrestore(&sim->lock, flags);
		return -EPERM;
	}
	if (simgpio_event(line->type, line->in_level, value)) {
		if (line->masked)
			line->latched = true;
		else
			fire = !sim->dying;
	}
	line->in_level = value;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	if (fire)
		simgpio_raise(sim, offset);

	return count;
}

static ssize_t direction_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	struct simgpio *sim = dev_get_drvdata(dev);
	unsigned int offset = simgpio_attr_offset(attr);
	unsigned long flags;
	bool out;

	raw_spin_lock_irqsave(&sim->lock, flags);
	out = sim->lines[offset].is_out;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	return sysfs_emit(buf, "%s\n", out ? "out" : "in");
}

static ssize_t trigger_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	struct simgpio *sim = dev_get_drvdata(dev);
	unsigned int offset = simgpio_attr_offset(attr);
	unsigned long flags;
	unsigned int type;

	raw_spin_lock_irqsave(&sim->lock, flags);
	type = sim->lines[offset].type;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	return sysfs_emit(buf, "%s\n", simgpio_trigger_name(type));
}

static ssize_t irqs_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct simgpio *sim = dev_get_drvdata(dev);
	unsigned int offset = simgpio_attr_offset(attr);
	unsigned long flags;
	unsigned long irqs;

	raw_spin_lock_irqsave(&sim->lock, flags);
	irqs = sim->lines[offset].irqs;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	return sysfs_emit(buf, "%lu\n", irqs);
}

static void simgpio_init_attr(struct simgpio_attr *sa, const char *name,
			      umode_t mode,
			      ssize_t (*show)(struct device *,
					      struct device_attribute *, char *),
			      ssize_t (*store)(struct device *,
					       struct device_attribute *,
					       const char *, size_t),
			      unsigned int offset)
{
	/* Attributes allocated at run time need their own lockdep key. */
	sysfs_attr_init(&sa->dattr.attr);
	sa->dattr.attr.name = name;
	sa->dattr.attr.mode = mode;
	sa->dattr.show = show;
	sa->dattr.store = store;
	sa->offset = offset;
}

/* One group per line, named lineN; removed when the driver is unbound. */
static int simgpio_add_sysfs(struct device *dev, struct simgpio *sim)
{
	unsigned int n = sim->gc.ngpio;
	unsigned int i;

	sim->sysfs = devm_kcalloc(dev, n, sizeof(*sim->sysfs), GFP_KERNEL);
	sim->groups = devm_kcalloc(dev, n + 1, sizeof(*sim->groups),
				   GFP_KERNEL);
	if (!sim->sysfs || !sim->groups)
		return -ENOMEM;

	for (i = 0; i < n; i++) {
		struct simgpio_line_sysfs *ls = &sim->sysfs[i];

		simgpio_init_attr(&ls->level, "level", 0644, level_show,
				  level_store, i);
		simgpio_init_attr(&ls->direction, "direction", 0444,
				  direction_show, NULL, i);
		simgpio_init_attr(&ls->trigger, "trigger", 0444, trigger_show,
				  NULL, i);
		simgpio_init_attr(&ls->irqs, "irqs", 0444, irqs_show, NULL, i);
		ls->attrs[0] = &ls->level.dattr.attr;
		ls->attrs[1] = &ls->direction.dattr.attr;
		ls->attrs[2] = &ls->trigger.dattr.attr;
		ls->attrs[3] = &ls->irqs.dattr.attr;
		ls->attrs[4] = NULL;
		snprintf(ls->name, sizeof(ls->name), "line%u", i);
		ls->group.name = ls->name;
		ls->group.attrs = ls->attrs;
		sim->groups[i] = &ls->group;
	}
	sim->groups[n] = NULL;

	return devm_device_add_groups(dev, sim->groups);
}

/*
 * Undone when the driver is unbound, after the sysfs files are gone (no
 * more writes) and before the chip is removed: stop raising, and wait for
 * a queued or running simgpio_resend(), which uses the chip's irq domain.
 */
static void simgpio_quiesce(void *data)
{
	struct simgpio *sim = data;
	unsigned long flags;

	raw_spin_lock_irqsave(&sim->lock, flags);
	sim->dying = true;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	irq_work_sync(&sim->resend);
}

/*
 * Called once, from simgpio_start() through platform_create_bundle(), hence
 * __init; managed (devm) resources are released in the reverse order when
 * the device goes away: sysfs files, then simgpio_quiesce(), then the chip.
 */
static int __init simgpio_probe(struct platform_device *pdev)
{
	struct device *dev = &pdev->dev;
	struct gpio_irq_chip *girq;
	struct simgpio *sim;
	unsigned int i;
	int ret;

	sim = devm_kzalloc(dev, sizeof(*sim), GFP_KERNEL);
	if (!sim)
		return -ENOMEM;
	sim->lines = devm_kcalloc(dev, lines, sizeof(*sim->lines), GFP_KERNEL);
	if (!sim->lines)
		return -ENOMEM;
	for (i = 0; i < lines; i++) {
		sim->lines[i].masked = true;
		sim->lines[i].type = IRQ_TYPE_NONE;
	}
	raw_spin_lock_init(&sim->lock);
	init_irq_work(&sim->resend, simgpio_resend);
	platform_set_drvdata(pdev, sim);

	sim->gc.label = SIMGPIO_LABEL;
	sim->gc.parent = dev;
	sim->gc.owner = THIS_MODULE;
	sim->gc.base = -1;		/* numbers chosen by gpiolib */
	sim->gc.ngpio = lines;
	sim->gc.can_sleep = false;	/* callable from interrupt handlers */
	sim->gc.get_direction = simgpio_get_direction;
	sim->gc.direction_input = simgpio_direction_input;
	sim->gc.direction_output = simgpio_direction_output;
	sim->gc.get = simgpio_get;
	sim->gc.set = simgpio_set;
	sim->gc.free = simgpio_free;

	/* No parent interrupt: simgpio_raise() is where interrupts come from. */
	girq = &sim->gc.irq;
	gpio_irq_chip_set_chip(girq, &simgpio_irq_chip);
	girq->handler = handle_edge_irq;
	girq->default_type = IRQ_TYPE_NONE;

	ret = devm_gpiochip_add_data(dev, &sim->gc, sim);
	if (ret) {
		pr_err("cannot register the gpio chip: error %d\n", ret);
		return ret;
	}

	ret = devm_add_action_or_reset(dev, simgpio_quiesce, sim);
	if (ret)
		return ret;

	ret = simgpio_add_sysfs(dev, sim);
	if (ret) {
		pr_err("cannot create the line folders in sysfs: error %d\n",
		       ret);
		return ret;
	}
	return 0;
}

/*
 * No .probe here: platform_create_bundle() probes once, with the __init
 * simgpio_probe().  It also hides the driver's bind and unbind files, so
 * the chip cannot be taken away from its consumers while simgpio is loaded.
 */
static struct platform_driver simgpio_driver = {
	.driver = {
		.name = SIMGPIO_NAME,
	},
};

static int __init simgpio_start(void)
{
	struct simgpio *sim;
	int ret;

	if (lines < 1 || lines > SIMGPIO_MAX_LINES) {
		pr_err("lines=%u is out of range (1-%d)\n", lines,
		       SIMGPIO_MAX_LINES);
		return -EINVAL;
	}

	simgpio_pdev = platform_create_bundle(&simgpio_driver, simgpio_probe,
					      NULL, 0, NULL, 0);
	if (IS_ERR(simgpio_pdev)) {
		ret = PTR_ERR(simgpio_pdev);
		pr_err("cannot create the simgpio device: error %d\n", ret);
		return ret;
	}

	sim = platform_get_drvdata(simgpio_pdev);
	WRITE_ONCE(simgpio_chip, sim);
	pr_info("registered gpio chip \"%s\": %u lines, gpio %d-%d, levels in /sys/devices/platform/%s/line*/level\n",
		sim->gc.label, sim->gc.ngpio, sim->gc.base,
		sim->gc.base + sim->gc.ngpio - 1, dev_name(&simgpio_pdev->dev));
	return 0;
}

/* No consumer is left: each one holds a reference on simgpio. */
static void __exit simgpio_stop(void)
{
	struct simgpio *sim = simgpio_chip;
	unsigned long total = 0;
	unsigned long flags;
	unsigned int i;

	raw_spin_lock_irqsave(&sim->lock, flags);
	for (i = 0; i < sim->gc.ngpio; i++)
		total += sim->lines[i].irqs;
	raw_spin_unlock_irqrestore(&sim->lock, flags);

	WRITE_ONCE(simgpio_chip, NULL);
	/* Unbinds the driver: its managed resources are released. */
	platform_device_unregister(simgpio_pdev);
	platform_driver_unregister(&simgpio_driver);
	pr_info("removed gpio chip \"%s\" after %lu interrupts\n",
		SIMGPIO_LABEL, total);
}

module_init(simgpio_start);
module_exit(simgpio_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 30: a simulated GPIO chip whose interrupts user space raises");
