/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * symexport's interface to other modules: what EXPORT_SYMBOL_GPL() makes
 * available to them.  symuse, a separate DKMS package, carries its own copy
 * of this declaration; modpost checks the symbol against symexport's
 * Module.symvers when it links symuse.
 */
#ifndef SYMEXPORT_H
#define SYMEXPORT_H

unsigned int symexport_count(const char *who);

#endif /* SYMEXPORT_H */
