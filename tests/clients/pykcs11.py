#!/usr/bin/python3
"""PyKCS11 client: open the token by label, log in, sign with RSA (CKM_SHA256_RSA_PKCS) and EC
(CKM_ECDSA over a SHA-256 digest: SoftHSM has no CKM_ECDSA_SHA256) and verify, HMAC-SHA256,
AES-CBC-PAD encrypt/decrypt, digest, random.

usage: pykcs11.py MODULE TOKEN_LABEL   (PIN from $PIN, default 1234)
"""
import hashlib
import os
import sys

import PyKCS11
from PyKCS11 import (CKA_CLASS, CKA_ID, CKF_RW_SESSION, CKF_SERIAL_SESSION, CKM_AES_CBC_PAD, CKM_AES_ECB,
                     CKM_ECDSA, CKM_SHA256, CKM_SHA256_HMAC, CKM_SHA256_RSA_PKCS,
                     CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY, Mechanism)

NAME = "pykcs11.py"


def fail(msg):
    print(f"{NAME}: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    module, label = sys.argv[1], sys.argv[2]
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slots = [s for s in lib.getSlotList(tokenPresent=True)
             if lib.getTokenInfo(s).label.strip() == label]
    if len(slots) != 1:
        fail(f"expected one token labelled {label!r}, found {len(slots)}")
    s = lib.openSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
    s.login(os.environ.get("PIN", "1234"))

    def key(cls, kid):
        objs = s.findObjects([(CKA_CLASS, cls), (CKA_ID, (kid,))])
        if len(objs) != 1:
            fail(f"class {cls} id {kid:02x}: {len(objs)} objects")
        return objs[0]

    data = os.urandom(200)
    digest = hashlib.sha256(data).digest()

    sig = s.sign(key(CKO_PRIVATE_KEY, 1), data, Mechanism(CKM_SHA256_RSA_PKCS))
    if not s.verify(key(CKO_PUBLIC_KEY, 1), data, sig, Mechanism(CKM_SHA256_RSA_PKCS)):
        fail("RSA signature does not verify")

    sig = s.sign(key(CKO_PRIVATE_KEY, 2), digest, Mechanism(CKM_ECDSA))
    if len(sig) != 64 or not s.verify(key(CKO_PUBLIC_KEY, 2), digest, sig, Mechanism(CKM_ECDSA)):
        fail("ECDSA signature does not verify")

    mac = s.sign(key(CKO_SECRET_KEY, 4), data, Mechanism(CKM_SHA256_HMAC))
    if len(mac) != 32 or not s.verify(key(CKO_SECRET_KEY, 4), data, mac,
                                      Mechanism(CKM_SHA256_HMAC)):
        fail("HMAC does not verify")

    # AES-ECB always; AES-CBC-PAD too, except that p11-kit-client 0.24 cannot carry mechanism
    # parameters (IVs) and answers CKR_MECHANISM_INVALID: tolerated only for that reason.
    aes = key(CKO_SECRET_KEY, 3)
    block = data[:192]
    ct = s.encrypt(aes, block, Mechanism(CKM_AES_ECB))
    if bytes(s.decrypt(aes, ct, Mechanism(CKM_AES_ECB))) != block or bytes(ct) == block:
        fail("AES-ECB round trip")
    iv = os.urandom(16)
    try:
        ct = s.encrypt(aes, data, Mechanism(CKM_AES_CBC_PAD, iv))
        if bytes(s.decrypt(aes, ct, Mechanism(CKM_AES_CBC_PAD, iv))) != data or bytes(ct) == data:
            fail("AES-CBC-PAD round trip")
    except PyKCS11.PyKCS11Error as e:
        if e.value != PyKCS11.CKR_MECHANISM_INVALID:
            raise
        print(f"{NAME}: note: AES-CBC-PAD not available (CKR_MECHANISM_INVALID), skipped")

    if bytes(s.digest(data, Mechanism(CKM_SHA256))) != digest:
        fail("SHA-256 digest differs from hashlib")

    rnd = s.generateRandom(32)
    if len(rnd) != 32:
        fail("C_GenerateRandom length")

    s.logout()
    s.closeSession()
    print(f"{NAME}: OK")


if __name__ == "__main__":
    try:
        main()
    except PyKCS11.PyKCS11Error as e:
        fail(f"PKCS#11 error: {e}")
