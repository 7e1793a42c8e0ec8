// SPDX-License-Identifier: GPL-2.0-only
/*
 * blkram: a RAM disk, a block device on blk-mq whose sectors live in memory.
 *
 * Loading the module allocates size_mb MiB (16 unless the parameter says
 * otherwise, 1 to 256) of zeroed memory with vmalloc() and makes it a disk:
 * /dev/blkram, a block device on a major register_blkdev() chooses (listed
 * in /proc/devices under "Block devices").  It holds any file system:
 *
 *	# mkfs.ext4 -q /dev/blkram
 *	# mount /dev/blkram /mnt
 *
 * The contents are lost when the module is unloaded; the kernel refuses to
 * unload it while the disk is open or mounted (the disk's owner is this
 * module, so every open holds a reference to it).
 *
 * How it fits together:
 *  - a tag set (struct blk_mq_tag_set) describes the queue: one hardware
 *    queue, up to BLKRAM_QUEUE_DEPTH requests in flight, and the driver's
 *    blk_mq_ops, of which only queue_rq is needed here;
 *  - blk_mq_alloc_disk() makes the request queue and the gendisk; the
 *    capacity is set in 512-byte sectors and add_disk() makes the disk
 *    appear (sysfs, then udev creates /dev/blkram);
 *  - queue_rq receives each request: reads and writes copy each segment
 *    (struct bio_vec, part of one page) from or to the memory; discard and
 *    write-zeroes requests zero the range; a flush has nothing to do (there
 *    is no cache: a write is in memory when it completes); anything else is
 *    refused with BLK_STS_NOTSUPP.  Everything completes at once, in
 *    queue_rq, so queue_rq never has to sleep or wait;
 *  - on unload, del_gendisk() writes back and drops what the page cache
 *    holds, waits for the requests in flight and stops new ones; only then
 *    are the disk, the tag set, the major and the memory released.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/bvec.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/numa.h>
#include <linux/printk.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#define BLKRAM_NAME "blkram"
#define BLKRAM_SIZE_MIN_MB 1
#define BLKRAM_SIZE_MAX_MB 256
#define BLKRAM_QUEUE_DEPTH 64
/* Largest discard or write-zeroes request, zeroed in one go: 4 MiB. */
#define BLKRAM_MAX_ZERO_SECTORS ((4U << 20) >> SECTOR_SHIFT)

static unsigned int size_mb = 16;
module_param(size_mb, uint, 0444);
MODULE_PARM_DESC(size_mb, "Size of the RAM disk in MiB (1-256)");

struct blkram_dev {
	u8 *data;		/* the disk's contents: size bytes */
	size_t size;
	int major;
	struct blk_mq_tag_set tag_set;
	struct gendisk *disk;
};

static struct blkram_dev blkram;

/* Carries out one request; the status it completes with. */
static blk_status_t blkram_transfer(struct blkram_dev *dev, struct request *rq)
{
	u64 pos = (u64)blk_rq_pos(rq) << SECTOR_SHIFT;
	u64 len = blk_rq_bytes(rq);
	struct req_iterator iter;
	struct bio_vec bvec;

	switch (req_op(rq)) {
	case REQ_OP_FLUSH:
		/* No write cache: every completed write is in memory already. */
		return BLK_STS_OK;
	case REQ_OP_READ:
	case REQ_OP_WRITE:
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		break;
	default:
		return BLK_STS_NOTSUPP;
	}

	/* The block layer checks this too; never trust a range blindly. */
	if (pos > dev->size || len > dev->size - pos)
		return BLK_STS_IOERR;

	switch (req_op(rq)) {
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		/* Discarded sectors read back as zeroes, like written zeroes. */
		memset(dev->data + pos, 0, len);
		break;
	case REQ_OP_READ:
		/* One segment at a time: a part of one page of the request. */
		rq_for_each_segment(bvec, rq, iter) {
			memcpy_to_bvec(&bvec, dev->data + pos);
			pos += bvec.bv_len;
		}
		break;
	default:	/* REQ_OP_WRITE */
		rq_for_each_segment(bvec, rq, iter) {
			memcpy_from_bvec(dev->data + pos, &bvec);
			pos += bvec.bv_len;
		}
		break;
	}
	return BLK_STS_OK;
}

static blk_status_t blkram_queue_rq(struct blk_mq_hw_ctx *hctx,
				    const struct blk_mq_queue_data *bd)
{
	struct blkram_dev *dev = hctx->queue->queuedata;
	struct request *rq = bd->rq;

	blk_mq_start_request(rq);
	blk_mq_end_request(rq, blkram_transfer(dev, rq));
	return BLK_STS_OK;
}

static const struct blk_mq_ops blkram_mq_ops = {
	.queue_rq = blkram_queue_rq,
};

/* Called when udev asks for the node's mode: root and group disk, 0660. */
static char *blkram_devnode(struct gendisk *disk, umode_t *mode)
{
	if (mode)
		*mode = 0660;
	return NULL;
}

static const struct block_device_operations blkram_fops = {
	.owner = THIS_MODULE,
	.devnode = blkram_devnode,
};

static int __init blkram_start(void)
{
	struct gendisk *disk;
	int ret;

	if (size_mb < BLKRAM_SIZE_MIN_MB || size_mb > BLKRAM_SIZE_MAX_MB) {
		pr_err("size_mb=%u is out of range (%d-%d)\n", size_mb,
		       BLKRAM_SIZE_MIN_MB, BLKRAM_SIZE_MAX_MB);
		return -EINVAL;
	}

	blkram.size = (size_t)size_mb << 20;
	/* No allocation-failure splat: the message below says it all. */
	blkram.data = __vmalloc(blkram.size,
				GFP_KERNEL | __GFP_ZERO | __GFP_NOWARN);
	if (!blkram.data) {
		pr_err("cannot allocate %u MiB of memory\n", size_mb);
		return -ENOMEM;
	}

	ret = register_blkdev(0, BLKRAM_NAME);
	if (ret < 0) {
		pr_err("cannot register a block major: error %d\n", ret);
		goto err_data;
	}
	blkram.major = ret;

	blkram.tag_set.ops = &blkram_mq_ops;
	blkram.tag_set.nr_hw_queues = 1;
	blkram.tag_set.queue_depth = BLKRAM_QUEUE_DEPTH;
	blkram.tag_set.numa_node = NUMA_NO_NODE;
	blkram.tag_set.flags = BLK_MQ_F_SHOULD_MERGE;
	ret = blk_mq_alloc_tag_set(&blkram.tag_set);
	if (ret) {
		pr_err("cannot allocate the tag set: error %d\n", ret);
		goto err_major;
	}

	/* The queue's queuedata is &blkram, for queue_rq. */
	disk = blk_mq_alloc_disk(&blkram.tag_set, &blkram);
	if (IS_ERR(disk)) {
		ret = PTR_ERR(disk);
		pr_err("cannot allocate the disk: error %d\n", ret);
		goto err_tag_set;
	}

	disk->major = blkram.major;
	disk->first_minor = 0;
	disk->minors = 1;
	disk->flags |= GENHD_FL_NO_PART;
	disk->fops = &blkram_fops;
	disk->private_data = &blkram;
	strscpy(disk->disk_name, BLKRAM_NAME, DISK_NAME_LEN);
	set_capacity(disk, blkram.size >> SECTOR_SHIFT);

	blk_queue_logical_block_size(disk->queue, SECTOR_SIZE);
	blk_queue_physical_block_size(disk->queue, PAGE_SIZE);
	blk_queue_flag_set(QUEUE_FLAG_NONROT, disk->queue);
	disk->queue->limits.discard_granularity = SECTOR_SIZE;
	blk_queue_max_discard_sectors(disk->queue, BLKRAM_MAX_ZERO_SECTORS);
	blk_queue_max_write_zeroes_sectors(disk->queue,
					   BLKRAM_MAX_ZERO_SECTORS);

	ret = add_disk(disk);
	if (ret) {
		pr_err("cannot add /dev/%s: error %d\n", BLKRAM_NAME, ret);
		goto err_disk;
	}
	blkram.disk = disk;

	pr_info("registered block major %d, /dev/%s ready: %u MiB, %llu sectors\n",
		blkram.major, BLKRAM_NAME, size_mb,
		(unsigned long long)get_capacity(disk));
	return 0;

err_disk:
	put_disk(disk);
err_tag_set:
	blk_mq_free_tag_set(&blkram.tag_set);
err_major:
	unregister_blkdev(blkram.major, BLKRAM_NAME);
err_data:
	vfree(blkram.data);
	return ret;
}

static void __exit blkram_stop(void)
{
	/* Writes back the page cache, waits for requests, stops new ones. */
	del_gendisk(blkram.disk);
	put_disk(blkram.disk);
	blk_mq_free_tag_set(&blkram.tag_set);
	unregister_blkdev(blkram.major, BLKRAM_NAME);
	vfree(blkram.data);
	pr_info("removed /dev/%s and freed %u MiB (block major %d)\n",
		BLKRAM_NAME, size_mb, blkram.major);
}

module_init(blkram_start);
module_exit(blkram_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 29: a RAM disk on blk-mq");
