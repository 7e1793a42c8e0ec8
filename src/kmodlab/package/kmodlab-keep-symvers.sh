#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# POST_BUILD script of every DKMS package kmodlab renders (kmodlab.package
# ships it executable beside dkms.conf), so that any package can build
# against the symbols another one exports.
#
# Usage: kmodlab-keep-symvers.sh FOLDER
#
# dkms runs it in the package's build folder once the module is built and
# copied to FOLDER ($dkms_tree/NAME/VERSION/KERNEL/ARCH/module), before it
# deletes the build folder.  It copies the build's Module.symvers (the
# symbols the module exports, with their CRCs) into FOLDER, where a dependent
# package's build finds it through the kernel link of the installed version:
# $dkms_tree/NAME/kernel-KERNEL-ARCH/module/Module.symvers.  dkms releases
# newer than 3.0 keep it there themselves; this does the same for 3.0.  A
# module that exports nothing has an empty Module.symvers, kept all the same.
set -eu

dest=${1:?usage: kmodlab-keep-symvers.sh FOLDER}

if [ ! -f Module.symvers ]; then
	echo "kmodlab-keep-symvers: no Module.symvers in $(pwd): the build wrote none" >&2
	exit 1
fi
mkdir -p "$dest"
cp -f Module.symvers "$dest/Module.symvers"
echo "kmodlab-keep-symvers: kept Module.symvers in $dest"
