/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * vinput's interface to the modules that define virtual input device
 * types, such as vkbd: what it exports with EXPORT_SYMBOL_GPL().  vkbd, a
 * separate DKMS package, carries its own copy of this file; the two must
 * stay the same (modpost checks the functions' CRCs, not the structure).
 */
#ifndef VINPUT_H
#define VINPUT_H

#include <linux/input.h>
#include <linux/list.h>
#include <linux/types.h>

/* One virtual input device, /dev/vinputN; private to vinput. */
struct vinput;

/**
 * struct vinput_type - a kind of virtual input device
 * @name: what user space writes to /sys/class/vinput/export to create one
 * @priv_size: bytes of per-device state for the type (vinput_priv())
 * @init: set up the input device's capabilities (evbit, keybit, ...) and
 *	maybe its name before vinput registers it; return 0 or an errno
 * @send: turn text written to /dev/vinputN (NUL-terminated, at most 63
 *	bytes) into input events; return 0 or an errno
 * @read: describe the device's last event in @buf (at most @size bytes,
 *	NUL included) for reads of /dev/vinputN; return the length or an errno
 * @node: private to vinput
 *
 * vinput calls @send and @read of one device one at a time, never after
 * the device or the type is gone, and never again once
 * vinput_unregister() has returned.
 */
struct vinput_type {
	const char *name;
	size_t priv_size;
	int (*init)(struct vinput *vi, struct input_dev *input);
	int (*send)(struct vinput *vi, const char *buf, size_t len);
	int (*read)(struct vinput *vi, char *buf, size_t size);
	struct list_head node;
};

int vinput_register(struct vinput_type *type);
void vinput_unregister(struct vinput_type *type);
int vinput_create(struct vinput_type *type);
struct input_dev *vinput_input(struct vinput *vi);
void *vinput_priv(struct vinput *vi);

#endif /* VINPUT_H */
