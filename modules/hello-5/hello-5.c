// SPDX-License-Identifier: GPL-2.0-only
/*
 * hello-5: module parameters.
 *
 * Each parameter can be set on the command line, e.g.
 *
 *	modprobe hello-5 myint=42 mystring=lab myintarray=10,-20,30 myslots=7,8
 *
 * The last argument of module_param() is the mode of the parameter's file
 * in /sys/module/hello_5/parameters/; a mode of 0 creates no file at all.
 * The kernel refuses modes that let everyone write.
 *
 * An array parameter either has a count variable, which the kernel sets to
 * the number of values given (myintarray), or none (NULL) and a fixed size
 * (myslots, myflags): the values given then fill it from the start, the
 * other elements keep their initial values, and sysfs shows all of them.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/printk.h>

#define MYINTARRAY_MAX 4
#define MYSLOTS_LEN 6
#define MYFLAGS_LEN 4

static short myshort = 1;
static int myint = 420;
static long mylong = 9999;
static char *mystring = "kmodlab";
static int myintarray[MYINTARRAY_MAX] = { 1, 2 };
/* How many elements of myintarray are in use; the kernel updates it. */
static int myintarray_count = 2;
/* Fixed-size arrays: every element is always in use. */
static int myslots[MYSLOTS_LEN] = { -1, -1, -1, -1, -1, -1 };
static bool myflags[MYFLAGS_LEN] = { true, true, false, false };

/* Not in sysfs: only visible through the line printed on load. */
module_param(myshort, short, 0);
MODULE_PARM_DESC(myshort, "A short integer, not shown in sysfs");

/* Root may change it at run time; everyone may read it. */
module_param(myint, int, 0644);
MODULE_PARM_DESC(myint, "An integer, writable by root");

/* Root may change it; the group may read it. */
module_param(mylong, long, 0640);
MODULE_PARM_DESC(mylong, "A long integer, readable by root and group");

/* Read-only for everyone once loaded. */
module_param(mystring, charp, 0444);
MODULE_PARM_DESC(mystring, "A character string, read-only");

/* Up to MYINTARRAY_MAX comma-separated values; root only. */
module_param_array(myintarray, int, &myintarray_count, 0600);
MODULE_PARM_DESC(myintarray, "Up to 4 comma-separated integers, root only");

/* No count variable: elements not given stay -1; read-only for everyone. */
module_param_array(myslots, int, NULL, 0444);
MODULE_PARM_DESC(myslots, "6 integer slots, -1 unless given, read-only");

/* No count variable: elements not given keep Y,Y,N,N; root may change them. */
module_param_array(myflags, bool, NULL, 0644);
MODULE_PARM_DESC(myflags, "4 flags (Y/N), the first ones given, writable by root");

static int __init hello5_start(void)
{
	int i;

	pr_info("hello, world; my parameters are:\n");
	pr_info("myshort=%d\n", myshort);
	pr_info("myint=%d\n", myint);
	pr_info("mylong=%ld\n", mylong);
	pr_info("mystring=\"%s\"\n", mystring);
	for (i = 0; i < myintarray_count; i++)
		pr_info("myintarray[%d]=%d\n", i, myintarray[i]);
	pr_info("myintarray count=%d\n", myintarray_count);
	for (i = 0; i < MYSLOTS_LEN; i++)
		pr_info("myslots[%d]=%d\n", i, myslots[i]);
	for (i = 0; i < MYFLAGS_LEN; i++)
		pr_info("myflags[%d]=%c\n", i, myflags[i] ? 'Y' : 'N');
	return 0;
}

static void __exit hello5_stop(void)
{
	pr_info("goodbye, world (parameters)\n");
}

module_init(hello5_start);
module_exit(hello5_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 5: module parameters of several types");
