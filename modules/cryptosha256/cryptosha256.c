// SPDX-License-Identifier: GPL-2.0-only
/*
 * cryptosha256: SHA-256 digests with the kernel's crypto API.
 *
 * The crypto API hands out "transforms" by algorithm name: the module asks
 * for "sha256" with crypto_alloc_shash() and gets the best implementation
 * the machine has (sha256-avx2, sha256-ssse3, sha256-generic, ...; the
 * crypto manager tested it when it was registered).  A transform holds
 * what never changes (here: nothing, SHA-256 has no key); each hash being
 * computed has its own request state, a struct shash_desc.
 *
 * At load the module hashes the text of its "text" parameter in one call,
 * crypto_shash_tfm_digest(), and logs the digest:
 *
 *	cryptosha256: sha256("kmodlab") = 790a065c...
 *	$ printf kmodlab | sha256sum
 *	790a065c...  -
 *
 * /proc/cryptosha256 then hashes whatever is written to it: each open for
 * writing starts a hash (crypto_shash_init()), each write() adds its bytes
 * (crypto_shash_update()), and the close finishes it (crypto_shash_final())
 * and makes it the digest that reads return, as 64 hex digits and a
 * newline.  The bytes are hashed exactly as written, so the result is the
 * one sha256sum gives for the same input, whatever its size:
 *
 *	# printf abc > /proc/cryptosha256
 *	$ cat /proc/cryptosha256
 *	ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
 *	# cat /etc/hostname > /proc/cryptosha256  (same as sha256sum /etc/hostname)
 *
 * Until the first write the file shows the digest of the load text.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <crypto/hash.h>
#include <crypto/sha2.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/printk.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define CRYPTOSHA256_PROC "cryptosha256"
/* Bytes copied from user space and hashed at a time. */
#define CRYPTOSHA256_CHUNK 256
/* 64 hex digits, a newline and the terminating NUL. */
#define CRYPTOSHA256_HEX_LEN (2 * SHA256_DIGEST_SIZE + 2)

static char *text = "kmodlab";
module_param(text, charp, 0444);
MODULE_PARM_DESC(text, "Text whose SHA-256 digest is logged at load");

/* Shared by every hash: a shash transform is used by many descs at once. */
static struct crypto_shash *cryptosha256_tfm;
static struct proc_dir_entry *cryptosha256_entry;

/* The digest reads return: the load text's, then the last one written. */
static DEFINE_MUTEX(cryptosha256_lock);
static u8 cryptosha256_digest[SHA256_DIGEST_SIZE];

/* One open for writing: the hash being computed. */
struct cryptosha256_writer {
	struct mutex lock;	/* serialises the writes of one open file */
	int error;		/* a failed update spoils the whole hash */
	struct shash_desc *desc;
};

static int cryptosha256_open(struct inode *inode, struct file *file)
{
	struct cryptosha256_writer *writer;
	int ret;

	if (!(file->f_mode & FMODE_WRITE))
		return nonseekable_open(inode, file);

	writer = kzalloc(sizeof(*writer), GFP_KERNEL);
	if (!writer)
		return -ENOMEM;

	/* The desc is followed by the algorithm's own state (descsize). */
	writer->desc = kzalloc(sizeof(*writer->desc) +
			       crypto_shash_descsize(cryptosha256_tfm),
			       GFP_KERNEL);
	if (!writer->desc) {
		kfree(writer);
		return -ENOMEM;
	}
	writer->desc->tfm = cryptosha256_tfm;
	mutex_init(&writer->lock);

	ret = crypto_shash_init(writer->desc);
	if (ret) {
		kfree(writer->desc);
		kfree(writer);
		return ret;
	}

	file->private_data = writer;
	return nonseekable_open(inode, file);
}

static ssize_t cryptosha256_write(struct file *file, const char __user *buf,
				  size_t count, loff_t *ppos)
{
	struct cryptosha256_writer *writer = file->private_data;
	u8 chunk[CRYPTOSHA256_CHUNK];
	size_t done = 0;
	int ret;

	mutex_lock(&writer->lock);
	while (done < count && !writer->error) {
		size_t len = min_t(size_t, count - done, sizeof(chunk));

		/* A write is hashed whole or spoils the hash: no partial writes. */
		if (copy_from_user(chunk, buf + done, len)) {
			writer->error = -EFAULT;
			break;
		}
		writer->error = crypto_shash_update(writer->desc, chunk, len);
		done += len;
		cond_resched();
	}
	ret = writer->error;
	mutex_unlock(&writer->lock);

	memzero_explicit(chunk, sizeof(chunk));
	return ret ? ret : count;
}

static int cryptosha256_release(struct inode *inode, struct file *file)
{
	struct cryptosha256_writer *writer = file->private_data;
	u8 digest[SHA256_DIGEST_SIZE];
	int ret;

	if (!writer)
		return 0;

	ret = writer->error;
	if (!ret)
		ret = crypto_shash_final(writer->desc, digest);
	if (!ret) {
		mutex_lock(&cryptosha256_lock);
		memcpy(cryptosha256_digest, digest, sizeof(digest));
		mutex_unlock(&cryptosha256_lock);
	} else {
		pr_warn("a write failed (error %d): the digest is unchanged\n",
			ret);
	}

	/* The desc holds a partial hash of the data: wipe it. */
	kfree_sensitive(writer->desc);
	kfree(writer);
	return 0;
}

static ssize_t cryptosha256_read(struct file *file, char __user *buf,
				 size_t count, loff_t *ppos)
{
	char hex[CRYPTOSHA256_HEX_LEN];
	int len;

	mutex_lock(&cryptosha256_lock);
	len = scnprintf(hex, sizeof(hex), "%*phN\n", SHA256_DIGEST_SIZE,
			cryptosha256_digest);
	mutex_unlock(&cryptosha256_lock);

	return simple_read_from_buffer(buf, count, ppos, hex, len);
}

static const struct proc_ops cryptosha256_proc_ops = {
	.proc_open = cryptosha256_open,
	.proc_read = cryptosha256_read,
	.proc_write = cryptosha256_write,
	.proc_release = cryptosha256_release,
};

static int __init cryptosha256_start(void)
{
	const char *load_text = text ? text : "";
	int ret;

	cryptosha256_tfm = crypto_alloc_shash("sha256", 0, 0);
	if (IS_ERR(cryptosha256_tfm)) {
		ret = PTR_ERR(cryptosha256_tfm);
		pr_err("cannot allocate a sha256 transform: error %d\n", ret);
		return ret;
	}
	pr_info("sha256 is provided by driver %s\n",
		crypto_shash_driver_name(cryptosha256_tfm));

	/* init + update + final in one call, with a desc on the stack. */
	ret = crypto_shash_tfm_digest(cryptosha256_tfm, load_text,
				      strlen(load_text), cryptosha256_digest);
	if (ret) {
		pr_err("cannot hash the load text: error %d\n", ret);
		goto err_tfm;
	}
	pr_info("sha256(\"%s\") = %*phN\n", load_text, SHA256_DIGEST_SIZE,
		cryptosha256_digest);

	cryptosha256_entry = proc_create(CRYPTOSHA256_PROC, 0644, NULL,
					 &cryptosha256_proc_ops);
	if (!cryptosha256_entry) {
		pr_err("cannot create /proc/%s\n", CRYPTOSHA256_PROC);
		ret = -ENOMEM;
		goto err_tfm;
	}

	pr_info("created /proc/%s: write text to it, read its digest\n",
		CRYPTOSHA256_PROC);
	return 0;

err_tfm:
	crypto_free_shash(cryptosha256_tfm);
	return ret;
}

static void __exit cryptosha256_stop(void)
{
	/* Waits for readers and writers, and releases files still open. */
	proc_remove(cryptosha256_entry);
	crypto_free_shash(cryptosha256_tfm);
	pr_info("removed /proc/%s\n", CRYPTOSHA256_PROC);
}

module_init(cryptosha256_start);
module_exit(cryptosha256_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 37: SHA-256 digests with the crypto API");
