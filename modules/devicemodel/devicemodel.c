// SPDX-License-Identifier: GPL-2.0-only
/*
 * devicemodel: a platform driver and the platform device it drives.
 *
 * The Linux device model keeps devices and drivers on buses.  When a
 * device and a driver of the same bus match, the driver core binds them:
 * it calls the driver's probe() for the device, and remove() when they
 * are taken apart again.  Platform devices are the ones nobody can
 * discover (no PCI or USB enumeration): board code, device tree or, here,
 * a module registers them, and they match a platform driver by name.
 *
 * At load the module registers the driver "devicemodel", then the device
 * "devicemodel.0" with platform data (a greeting and a number), which the
 * driver core binds at once:
 *
 *	$ ls -l /sys/bus/platform/drivers/devicemodel/
 *	bind  devicemodel.0 -> ../../../../devices/platform/devicemodel.0
 *	module -> ../../../../module/devicemodel  uevent  unbind
 *	$ cat /sys/bus/platform/devices/devicemodel.0/greeting
 *	hello from the kmodlab platform device
 *
 * probe() keeps its per-device state in memory allocated with
 * devm_kzalloc(): the driver core frees it after remove(), so no error
 * path or remove() has to.  The files "greeting" and "number" are the
 * driver's device attributes (driver.dev_groups): they exist only while
 * the device is bound.  Root can take the two apart and bind them again:
 *
 *	# echo devicemodel.0 > /sys/bus/platform/drivers/devicemodel/unbind
 *	(remove() runs; "greeting" and "number" are gone)
 *	# echo devicemodel.0 > /sys/bus/platform/drivers/devicemodel/bind
 *	(probe() runs again)
 *
 * The driver also has power management callbacks (struct dev_pm_ops):
 * on suspend to RAM or disk the PM core calls suspend() for the device,
 * and resume() when the system wakes up, and each says so in the log.
 *
 * At unload the device is unregistered first (remove() runs, the device
 * is freed), then the driver.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/device.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/pm.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/version.h>

#define DEVICEMODEL_NAME "devicemodel"
#define DEVICEMODEL_ID 0
#define DEVICEMODEL_GREETING_LEN 48

/*
 * What the code that registers the device tells the driver about it.
 * platform_device_register_data() keeps a copy in dev.platform_data.
 */
struct devicemodel_pdata {
	char greeting[DEVICEMODEL_GREETING_LEN];
	int number;
};

/* The driver's state for one bound device (its driver data). */
struct devicemodel_state {
	struct devicemodel_pdata pdata;
};

static struct platform_device *devicemodel_pdev;

static ssize_t greeting_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	struct devicemodel_state *state = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%s\n", state->pdata.greeting);
}

static ssize_t number_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct devicemodel_state *state = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%d\n", state->pdata.number);
}

static DEVICE_ATTR_RO(greeting);
static DEVICE_ATTR_RO(number);

static struct attribute *devicemodel_attrs[] = {
	&dev_attr_greeting.attr,
	&dev_attr_number.attr,
	NULL,
};
ATTRIBUTE_GROUPS(devicemodel);

static int devicemodel_probe(struct platform_device *pdev)
{
	const struct devicemodel_pdata *pdata = dev_get_platdata(&pdev->dev);
	struct devicemodel_state *state;

	if (!pdata) {
		pr_err("probe %s: no platform data\n", dev_name(&pdev->dev));
		return -EINVAL;
	}

	/* Freed by the driver core when the device is unbound. */
	state = devm_kzalloc(&pdev->dev, sizeof(*state), GFP_KERNEL);
	if (!state)
		return -ENOMEM;

	state->pdata = *pdata;
	platform_set_drvdata(pdev, state);

	pr_info("probe %s: greeting \"%s\", number %d\n", dev_name(&pdev->dev),
		state->pdata.greeting, state->pdata.number);
	return 0;
}

/* Nothing to undo by hand: devm_kzalloc() memory goes after this returns. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
static void devicemodel_remove(struct platform_device *pdev)
{
	pr_info("remove %s\n", dev_name(&pdev->dev));
}
#else
static int devicemodel_remove(struct platform_device *pdev)
{
	pr_info("remove %s\n", dev_name(&pdev->dev));
	return 0;
}
#endif

/* A real driver would save the hardware's state here and power it down. */
static int devicemodel_suspend(struct device *dev)
{
	pr_info("suspend %s\n", dev_name(dev));
	return 0;
}

/* ... and restore it here. */
static int devicemodel_resume(struct device *dev)
{
	pr_info("resume %s\n", dev_name(dev));
	return 0;
}

/* suspend/resume for suspend to RAM, freeze/thaw/poweroff/restore for disk. */
static DEFINE_SIMPLE_DEV_PM_OPS(devicemodel_pm_ops, devicemodel_suspend,
				devicemodel_resume);

static struct platform_driver devicemodel_driver = {
	.driver = {
		.name = DEVICEMODEL_NAME,
		.pm = pm_sleep_ptr(&devicemodel_pm_ops),
		.dev_groups = devicemodel_groups,
	},
	.probe = devicemodel_probe,
	.remove = devicemodel_remove,
};

static int __init devicemodel_start(void)
{
	static const struct devicemodel_pdata pdata = {
		.greeting = "hello from the kmodlab platform device",
		.number = 42,
	};
	int ret;

	pr_info("registering platform driver %s\n", DEVICEMODEL_NAME);
	ret = platform_driver_register(&devicemodel_driver);
	if (ret) {
		pr_err("cannot register platform driver %s: error %d\n",
		       DEVICEMODEL_NAME, ret);
		return ret;
	}

	/* The driver is there: registering the device binds it (probe()). */
	devicemodel_pdev = platform_device_register_data(NULL, DEVICEMODEL_NAME,
							 DEVICEMODEL_ID, &pdata,
							 sizeof(pdata));
	if (IS_ERR(devicemodel_pdev)) {
		ret = PTR_ERR(devicemodel_pdev);
		pr_err("cannot register platform device %s.%d: error %d\n",
		       DEVICEMODEL_NAME, DEVICEMODEL_ID, ret);
		platform_driver_unregister(&devicemodel_driver);
		return ret;
	}

	if (devicemodel_pdev->dev.driver)
		pr_info("device %s is bound to driver %s\n",
			dev_name(&devicemodel_pdev->dev), DEVICEMODEL_NAME);
	else
		pr_warn("device %s is registered but no driver is bound to it\n",
			dev_name(&devicemodel_pdev->dev));
	return 0;
}

static void __exit devicemodel_stop(void)
{
	/* Unbinds the device if bound (remove()), then frees it. */
	platform_device_unregister(devicemodel_pdev);
	platform_driver_unregister(&devicemodel_driver);
	pr_info("unregistered platform device and driver %s\n",
		DEVICEMODEL_NAME);
}

module_init(devicemodel_start);
module_exit(devicemodel_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 34: a platform driver bound to a platform device");
