// SPDX-License-Identifier: GPL-2.0-only
/*
 * vkbd: a virtual keyboard, a device type of the vinput framework.
 *
 * vkbd registers the vinput type "vkbd" (vinput_register(), exported by
 * vinput) and creates one keyboard at load (vinput_create()): an input
 * device named "kmodlab virtual keyboard" and its /dev/vinputN, usually
 * /dev/vinput0.  More keyboards can be created and destroyed through
 * vinput's class attributes:
 *
 *	# echo vkbd > /sys/class/vinput/export
 *	# echo 1 > /sys/class/vinput/unexport
 *
 * Writing a key code (a decimal number, linux/input-event-codes.h) to
 * /dev/vinputN types that key: a press and a release.  "+CODE" only
 * presses it, "-CODE" only releases it, so keys can be combined (hold
 * Shift, type, release Shift).  Reading says what the last write did:
 *
 *	# echo 30 > /dev/vinput0	(KEY_A: press and release)
 *	# echo +42 > /dev/vinput0	(KEY_LEFTSHIFT stays pressed)
 *	# echo -42 > /dev/vinput0
 *	# cat /dev/vinput0
 *	-42
 *
 * The events reach every handler of the input core, like a real
 * keyboard's: the console types the letter, and a program reading the
 * keyboard's /dev/input/eventN (evdev) gets EV_KEY events (value 1 for a
 * press, 0 for a release), each group followed by EV_SYN.
 *
 * The keyboard has the key codes up to KEY_MICMUTE (the ones below
 * BTN_MISC), except those that make the system act on its own: power,
 * sleep, suspend, wake up and SysRq.  Other codes are refused with EINVAL.
 * Whatever a real keyboard can do, though, this one can: Ctrl+Alt+Delete
 * on the console reboots the machine.  That is why /dev/vinputN is for
 * root only.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitops.h>
#include <linux/init.h>
#include <linux/input.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/string.h>

#include "vinput.h"

#define VKBD_TYPE "vkbd"
#define VKBD_INPUT_NAME "kmodlab virtual keyboard"

/* What the last write did, for reads. */
struct vkbd_state {
	char action;		/* '+' pressed, '-' released, 0 both, 'n' none */
	unsigned int code;
};

static bool vkbd_key_allowed(unsigned int code)
{
	switch (code) {
	case KEY_POWER:
	case KEY_SLEEP:
	case KEY_SUSPEND:
	case KEY_WAKEUP:
	case KEY_SYSRQ:
		return false;
	default:
		return code >= KEY_ESC && code < BTN_MISC;
	}
}

static int vkbd_init(struct vinput *vi, struct input_dev *input)
{
	struct vkbd_state *state = vinput_priv(vi);
	unsigned int code;

	state->action = 'n';
	input->name = VKBD_INPUT_NAME;

	/* Key events only: no LEDs, no autorepeat (EV_REP) of held keys. */
	__set_bit(EV_KEY, input->evbit);
	for (code = 0; code < BTN_MISC; code++)
		if (vkbd_key_allowed(code))
			__set_bit(code, input->keybit);
	return 0;
}

static int vkbd_send(struct vinput *vi, const char *buf, size_t len)
{
	struct vkbd_state *state = vinput_priv(vi);
	struct input_dev *input = vinput_input(vi);
	unsigned int code;
	char action = 0;
	int ret;

	buf = skip_spaces(buf);
	if (*buf == '+' || *buf == '-')
		action = *buf++;
	ret = kstrtouint(buf, 10, &code);	/* takes a trailing newline */
	if (ret)
		return ret;
	if (!vkbd_key_allowed(code))
		return -EINVAL;

	if (action != '-') {
		input_report_key(input, code, 1);
		input_sync(input);
	}
	if (action != '+') {
		input_report_key(input, code, 0);
		input_sync(input);
	}

	state->action = action;
	state->code = code;
	return 0;
}

static int vkbd_read(struct vinput *vi, char *buf, size_t size)
{
	struct vkbd_state *state = vinput_priv(vi);

	switch (state->action) {
	case 'n':
		return scnprintf(buf, size, "none\n");
	case 0:
		return scnprintf(buf, size, "%u\n", state->code);
	default:
		return scnprintf(buf, size, "%c%u\n", state->action,
				 state->code);
	}
}

static struct vinput_type vkbd_type = {
	.name = VKBD_TYPE,
	.priv_size = sizeof(struct vkbd_state),
	.init = vkbd_init,
	.send = vkbd_send,
	.read = vkbd_read,
};

static int __init vkbd_start(void)
{
	int ret, id;

	ret = vinput_register(&vkbd_type);
	if (ret) {
		pr_err("cannot register vinput type %s: error %d\n", VKBD_TYPE,
		       ret);
		return ret;
	}

	id = vinput_create(&vkbd_type);
	if (id < 0) {
		pr_err("cannot create a keyboard: error %d\n", id);
		vinput_unregister(&vkbd_type);
		return id;
	}

	pr_info("registered vinput type %s; \"%s\" on /dev/vinput%d\n",
		VKBD_TYPE, VKBD_INPUT_NAME, id);
	return 0;
}

/* Destroys every keyboard, the one of the load and the exported ones. */
static void __exit vkbd_stop(void)
{
	vinput_unregister(&vkbd_type);
	pr_info("unregistered vinput type %s and its keyboards\n", VKBD_TYPE);
}

module_init(vkbd_start);
module_exit(vkbd_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 36: a virtual keyboard on the vinput framework");
