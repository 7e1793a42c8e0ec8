/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * simgpio's interface to other modules: what EXPORT_SYMBOL_GPL() makes
 * available to them.  The interrupt labs (intrpt, bottomhalf, bh-threaded)
 * are DKMS packages of their own and carry their own copy of these lines;
 * modpost checks the symbol against simgpio's Module.symvers when it links
 * them.
 */
#ifndef SIMGPIO_H
#define SIMGPIO_H

/* The label of the chip: what a gpiod lookup table names as its key. */
#define SIMGPIO_LABEL "simgpio"

int simgpio_lines(void);

#endif /* SIMGPIO_H */
