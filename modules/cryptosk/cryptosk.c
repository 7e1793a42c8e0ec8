// SPDX-License-Identifier: GPL-2.0-only
/*
 * cryptosk: symmetric-key encryption with the crypto API's skcipher.
 *
 * At load the module asks the crypto API for "cbc(aes)": AES, a block
 * cipher, in cipher block chaining mode.  The kernel builds it from the
 * best AES and CBC it has (cbc-aes-aesni on most x86 CPUs, else
 * cbc(aes-generic)) and says which in the log.  With a fixed 128-bit key
 * and IV the module encrypts a known 32-byte text (two AES blocks) in
 * place, compares the ciphertext with the known answer (what OpenSSL or
 * Python's cryptography package gives for the same key, IV and text),
 * decrypts it again and checks that the plaintext came back:
 *
 *	cryptosk: driver cbc-aes-aesni provides cbc(aes)
 *	cryptosk: encrypted 32 bytes: b7cfddf8...
 *	cryptosk: round trip matched: decrypted "sixteen by two: a cbc(aes) test."
 *
 * If either check fails the module refuses to load (EIO).
 *
 * What the example shows:
 *  - the data is described by a scatterlist, so it must live in memory
 *    the kernel can map page by page: kmalloc(), never the stack or the
 *    module's own static data (which vmalloc memory may hold);
 *  - the IV buffer is updated by the cipher (CBC leaves the last
 *    ciphertext block there), so it is set again before decrypting;
 *  - requests may complete asynchronously (the AES-NI driver hands them
 *    to a kernel thread when the FPU cannot be used): encrypt() and
 *    decrypt() may return -EINPROGRESS or -EBUSY (backlogged), and
 *    crypto_wait_req() sleeps until crypto_req_done() completes the
 *    request and returns its real result.
 *
 * The transform is freed once the test is done; unloading has nothing to
 * release.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <crypto/aes.h>
#include <crypto/skcipher.h>
#include <linux/crypto.h>
#include <linux/err.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/string.h>

#define CRYPTOSK_ALG "cbc(aes)"
#define CRYPTOSK_TEXT_LEN 32	/* a multiple of AES_BLOCK_SIZE: no padding */

/* Strings for readability: only their first 16 bytes are used. */
static const u8 cryptosk_key[AES_KEYSIZE_128 + 1] = "kmodlab-aes-key!";
static const u8 cryptosk_iv[AES_BLOCK_SIZE + 1] = "kmodlab-cbc-iv!!";
static const char cryptosk_plaintext[CRYPTOSK_TEXT_LEN + 1] =
	"sixteen by two: a cbc(aes) test.";

/* AES-128-CBC of the text above with that key and IV (no padding). */
static const u8 cryptosk_expected[CRYPTOSK_TEXT_LEN] = {
	0xb7, 0xcf, 0xdd, 0xf8, 0x3d, 0x39, 0xbe, 0x96,
	0xdd, 0x20, 0xe8, 0x06, 0xdc, 0xdf, 0x49, 0xf3,
	0x21, 0xec, 0x9a, 0xb4, 0xe1, 0x29, 0x98, 0xda,
	0x01, 0x90, 0x29, 0xe4, 0x83, 0x72, 0x56, 0xa7,
};

/*
 * Encrypt or decrypt @buf in place with @req, whose IV buffer is @iv.
 * Returns the request's result once it has completed.
 */
static int cryptosk_run(struct skcipher_request *req, u8 *buf, u8 *iv,
			bool encrypt)
{
	struct scatterlist sg;
	DECLARE_CRYPTO_WAIT(wait);

	memcpy(iv, cryptosk_iv, AES_BLOCK_SIZE);
	sg_init_one(&sg, buf, CRYPTOSK_TEXT_LEN);

	/*
	 * MAY_BACKLOG: a busy driver queues the request (-EBUSY) instead of
	 * refusing it; MAY_SLEEP: we are in process context.  Either way
	 * crypto_req_done() completes "wait" when the request is done.
	 */
	skcipher_request_set_callback(req, CRYPTO_TFM_REQ_MAY_BACKLOG |
					   CRYPTO_TFM_REQ_MAY_SLEEP,
				      crypto_req_done, &wait);
	skcipher_request_set_crypt(req, &sg, &sg, CRYPTOSK_TEXT_LEN, iv);

	if (encrypt)
		return crypto_wait_req(crypto_skcipher_encrypt(req), &wait);
	return crypto_wait_req(crypto_skcipher_decrypt(req), &wait);
}

static int __init cryptosk_start(void)
{
	struct crypto_skcipher *tfm;
	struct skcipher_request *req;
	u8 *buf, *iv;
	int ret;

	tfm = crypto_alloc_skcipher(CRYPTOSK_ALG, 0, 0);
	if (IS_ERR(tfm)) {
		ret = PTR_ERR(tfm);
		pr_err("cannot allocate a %s transform: error %d\n",
		       CRYPTOSK_ALG, ret);
		return ret;
	}
	pr_info("driver %s provides %s\n", crypto_skcipher_driver_name(tfm),
		CRYPTOSK_ALG);

	ret = crypto_skcipher_setkey(tfm, cryptosk_key, AES_KEYSIZE_128);
	if (ret) {
		pr_err("cannot set the key: error %d\n", ret);
		goto out_tfm;
	}

	req = skcipher_request_alloc(tfm, GFP_KERNEL);
	buf = kmalloc(CRYPTOSK_TEXT_LEN, GFP_KERNEL);
	iv = kmalloc(AES_BLOCK_SIZE, GFP_KERNEL);
	if (!req || !buf || !iv) {
		ret = -ENOMEM;
		goto out_free;
	}
	memcpy(buf, cryptosk_plaintext, CRYPTOSK_TEXT_LEN);

	ret = cryptosk_run(req, buf, iv, true);
	if (ret) {
		pr_err("encryption failed: error %d\n", ret);
		goto out_free;
	}
	pr_info("encrypted %d bytes: %*phN\n", CRYPTOSK_TEXT_LEN,
		CRYPTOSK_TEXT_LEN, buf);
	if (memcmp(buf, cryptosk_expected, CRYPTOSK_TEXT_LEN)) {
		pr_err("the ciphertext differs from the known answer\n");
		ret = -EIO;
		goto out_free;
	}

	ret = cryptosk_run(req, buf, iv, false);
	if (ret) {
		pr_err("decryption failed: error %d\n", ret);
		goto out_free;
	}
	if (memcmp(buf, cryptosk_plaintext, CRYPTOSK_TEXT_LEN)) {
		pr_err("round trip failed: decrypted %*phN\n",
		       CRYPTOSK_TEXT_LEN, buf);
		ret = -EIO;
		goto out_free;
	}
	pr_info("round trip matched: decrypted \"%.*s\"\n", CRYPTOSK_TEXT_LEN,
		buf);

out_free:
	kfree_sensitive(iv);
	kfree_sensitive(buf);
	skcipher_request_free(req);
out_tfm:
	crypto_free_skcipher(tfm);
	return ret;
}

static void __exit cryptosk_stop(void)
{
	pr_info("unloaded: the transform was freed after the test at load\n");
}

module_init(cryptosk_start);
module_exit(cryptosk_stop);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kmodlab <kmodlab@example.org>");
MODULE_DESCRIPTION("kmodlab lab 38: AES-CBC encryption and decryption with skcipher");
