// SPDX-License-Identifier: GPL-2.0-only
/*
 * kbleds: blink the keyboard LEDs until the module is unloaded.
 *
 * The virtual terminal (VT) layer keeps, for each console, which of the
 * Scroll, Num and Caps Lock LEDs are lit.  Normally they show the lock
 * flags; the KDSETLED ioctl of a console's tty overrides them with a value
 * from 0 to 7 (bit 0 Scroll Lock, 1 Num Lock, 2 Caps Lock), and any value
 * above 7 gives them back to the flags.  The VT layer then tells every
 * keyboard (through the input core's LED events) and remembers the state,
 * which KDGETLED on the console returns:
 *
 *	$ python3 -c 'import fcntl,os; fd=os.open("/dev/tty0",os.O_RDONLY); \
 *		print(fcntl.ioctl(fd, 0x4B31, b"\0")[0])'	(KDGETLED: 7 or 0)
 *
 * Every interval_ms (200 ms unless the parameter says otherwise) the
 * module alternately lights all three LEDs of the foreground console and
 * gives them back, by calling the ioctl of that console's tty as a program
 * would.  Unloading stops it and gives the LEDs back.
 *
 * Why a delayed work and not a timer callback: a timer function runs in
 * softirq context, where nothing may sleep; and the VT ioctl checks the
 * capability of the *current* task (CAP_SYS_TTY_CONFIG), which in a timer
 * is whatever task the interrupt happened to stop.  A delayed work is a
 * timer that queues a function to a kernel worker thread: process
 * context, where the ioctl may sleep, and a task with the kernel's full
 * capabilities.
 *
 * Each tick takes the tty with a reference (tty_port_tty_get(), under
 * console_lock(), which guards fg_console and vc_cons[]) and drops it when
 * done: a tty may be closed and freed at any time.  The tty exists only
 * while the console is open; on a machine without a login on the
 * foreground console (a VM with a serial console only) the LEDs blink
 * while something holds it open, such as a program that opened /dev/tty0.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/console.h>
#include <linux/init.h>
#include <linux/jiffies.h>
#include <linux/kd.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>
#include <linux/tty.h>
#include <linux/tty_driver.h>
#include <linux/tty_port.h>
#include <linux/workqueue.h>
/* These two need the tty and kd definitions above. */
#include <linux/console_struct.h>
#include <linux/vt_kern.h>

#define KBLEDS_ALL_ON 0x07	/* Scroll, Num and Caps Lock lit */
#define KBLEDS_RESTORE 0xff	/* above 7: the LEDs show the lock flags */
#define KBLEDS_MIN_MS 20
#define KBLEDS_MAX_MS 5000

static unsigned int interval_ms = 200;
module_param(interval_ms, uint, 0444);
MODULE_PARM_DESC(interval_ms, "Milliseconds between two changes of the LEDs (20-5000)");

static void kbleds_blink(struct work_struct *work);
static DECLARE_DELAYED_WORK(kbleds_work, kbleds_blink);

/* Only the work uses these, and the exit once the work is cancelled. */
static int kbleds_lit = -1;		/* console whose LEDs we lit, or -1 */
static unsigned long kbleds_changes;	/* KDSETLED calls that succeeded */

/*
 * The tty of console *@console (of the foreground console when it is -1,
 * and *@console is set to it), with a reference; NULL when not open.
 */
static struct tty_struct *kbleds_get_tty(int *console)
{
	struct tty_struct *tty = NULL;
	struct vc_data *vc;

	console_lock();
	if (*console < 0)
		*console = fg_console;
	vc = vc_cons[*console].d;
	if (vc)
		tty = tty_port_tty_get(&vc->port);
	console_unlock();
	return tty;
}

/* KDSETLED on the tty of @console: 0, -ENOTTY when not open, or an errno. */
static int kbleds_set(int console, unsigned long leds)
{
	struct tty_struct *tty = kbleds_get_tty(&console);
	int ret;

	if (!tty)
		return -ENOTTY;
	/* vt_ioctl(); KDSETLED's argument is a value, not a user pointer. */
	ret = tty->ops->ioctl(tty, KDSETLED, leds);
	tty_kref_put(tty);
	if (!ret)
		kbleds_changes++;
	return ret;
}

static void kbleds_blink(struct work_struct *work)
{
	int console = -1;

	if (kbleds_lit >= 0) {
		/* Give back the LEDs we lit, even if that console is no
		 * longer in the foreground; retried while it is not open.
		 */
		if (!kbleds_set(kbleds_lit, KBLEDS_RESTORE))
			kbleds_lit = -1;
	} else {
		/* The foreground console is looked up (and kept) at once. */
		struct tty_struct *tty = kbleds_get_tty(&console);

		if (tty) {
			if (!tty->ops->ioctl(tty, KDSETLED, KBLEDS_ALL_ON)) {
				kbleds_lit = console;
				kbleds_changes++;
			}
			tty_kref_put(tty);
		}
	}

	schedule_delayed_work(&kbleds_work, msecs_to_jiffies(interval_ms));
}

static int __init kbleds_start(void)
{
	if (interval_ms < KBLEDS_MIN_MS || interval_ms > KBLEDS_MAX_MS) {
		pr_err("interval_ms=%u is out of range (%d-%d)\n", interval_ms,
		       KBLEDS_MIN_MS, KBLEDS_MAX_MS);
		return -EINVAL;
	}

	schedule_delayed_work(&kbleds_work, msecs_to_jiffies(interval_ms));
	pr_info("blinking the LEDs of the foreground console every %u ms\n",
		interval_ms);
	return 0;
}

static void __exit kbleds_stop(void)
{
	/* Waits for a running blink; the work cannot queue itself again. */
	cancel_delayed_work_sync(&kbleds_work);

	if (kbleds_lit >= 0 && kbleds_set(kbleds_lit, KBLEDS_RESTORE))
		pr_warn("could not give back the LEDs of tty%d (not open): setleds -L does\n",
			kbleds_lit + 1);
	pr_info("stopped after %lu LED changes\n", kbleds_changes);
}

module_init(kbleds_start);
module_exit(kbleds_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 39: blink the keyboard LEDs through the console's KDSETLED ioctl");
