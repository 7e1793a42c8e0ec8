/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * chardev2's ioctl interface, for the module and for the programs that call
 * it: both must agree on every number, so both include this file.  It uses
 * nothing but <linux/ioctl.h>, which user space has too.
 *
 * An ioctl request number packs four fields (x86-64 values):
 *
 *	bits 31-30  direction, as user space sees it: _IOW 1 (it writes
 *	            to the kernel), _IOR 2 (it reads), _IOWR 3, _IO 0
 *	bits 29-16  size of the argument the pointer points to
 *	bits 15-8   type, the "magic" shared by all the requests of a driver
 *	bits 7-0    number of the request within that type
 *
 *	CHARDEV2_IOC_SET_MSG   _IOW('x', 1, struct chardev2_msg)   0x40407801
 *	CHARDEV2_IOC_GET_MSG   _IOR('x', 2, struct chardev2_msg)   0x80407802
 *	CHARDEV2_IOC_XCHG_MSG  _IOWR('x', 3, struct chardev2_msg)  0xc0407803
 *	CHARDEV2_IOC_GET_BYTE  _IO('x', 4)                         0x00007804
 *
 * 'x' is not in the kernel's list of ioctl types
 * (Documentation/userspace-api/ioctl/ioctl-number.rst).  Even so the driver
 * compares whole numbers, size and direction included: a request built with
 * another size, such as _IOW('x', 1, char *), is unknown to it (ENOTTY).
 */
#ifndef CHARDEV2_H
#define CHARDEV2_H

#include <linux/ioctl.h>

/* Room for a message of up to 63 bytes and the NUL that ends it. */
#define CHARDEV2_MSG_SIZE 64

struct chardev2_msg {
	char text[CHARDEV2_MSG_SIZE];
};

#define CHARDEV2_IOC_MAGIC 'x'

/* Replace the message with text, which must end with a NUL. */
#define CHARDEV2_IOC_SET_MSG \
	_IOW(CHARDEV2_IOC_MAGIC, 1, struct chardev2_msg)
/* Fill text with the message, zero-padded. */
#define CHARDEV2_IOC_GET_MSG \
	_IOR(CHARDEV2_IOC_MAGIC, 2, struct chardev2_msg)
/* Both at once: set text as the message, get the one it replaced back. */
#define CHARDEV2_IOC_XCHG_MSG \
	_IOWR(CHARDEV2_IOC_MAGIC, 3, struct chardev2_msg)
/*
 * The argument is not a pointer but the index of a byte, passed by value;
 * the return value of ioctl() is that byte (0-255).  No data goes through
 * memory, hence _IO, with no size.
 */
#define CHARDEV2_IOC_GET_BYTE _IO(CHARDEV2_IOC_MAGIC, 4)

#endif /* CHARDEV2_H */
