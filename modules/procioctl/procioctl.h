/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * procioctl's ioctl interface: the request numbers a program passes to
 * ioctl() on /proc/kmodlab_ioctl, and the limits of what they accept.
 *
 * _IOW() is for requests that hand data to the kernel (set), _IOR() for
 * requests that bring data back (get), _IO() for requests without data.
 * The size of the argument is part of the number: a request with the right
 * letter and number but another size is a different, unknown request.
 *
 * The letter 'k' is shared with a few drivers (see the kernel's
 * Documentation/userspace-api/ioctl/ioctl-number.rst); these numbers only
 * ever reach procioctl's own /proc file, so that cannot mix them up.
 */
#ifndef PROCIOCTL_H
#define PROCIOCTL_H

#include <linux/ioctl.h>

/* The value: any integer in this range, both ends included. */
#define PROCIOCTL_VALUE_MIN 0
#define PROCIOCTL_VALUE_MAX 1000

/*
 * The name: 1 to 15 characters out of A-Z a-z 0-9 . _ - in a buffer of
 * PROCIOCTL_NAME_LEN bytes, ended by a NUL byte (the rest zero-filled).
 */
#define PROCIOCTL_NAME_LEN 16

#define PROCIOCTL_MAGIC 'k'

/* int *: a value in range, or EINVAL.  Needs the file open for writing. */
#define PROCIOCTL_SET_VALUE _IOW(PROCIOCTL_MAGIC, 1, int)
/* int *: gets the current value. */
#define PROCIOCTL_GET_VALUE _IOR(PROCIOCTL_MAGIC, 2, int)
/* char[16]: a valid name, or EINVAL.  Needs the file open for writing. */
#define PROCIOCTL_SET_NAME _IOW(PROCIOCTL_MAGIC, 3, char[PROCIOCTL_NAME_LEN])
/* char[16]: gets the current name, zero-padded. */
#define PROCIOCTL_GET_NAME _IOR(PROCIOCTL_MAGIC, 4, char[PROCIOCTL_NAME_LEN])
/* No argument: back to value 0 and name "kmodlab".  Needs write access. */
#define PROCIOCTL_RESET _IO(PROCIOCTL_MAGIC, 5)

#endif /* PROCIOCTL_H */
