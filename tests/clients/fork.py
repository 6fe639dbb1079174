#!/usr/bin/python3
"""A process that uses the module, forks, and uses it again in the child after its own
C_Initialize (PKCS#11's rule for children). Usage: fork.py MODULE LABEL"""
import os
import sys

import PyKCS11


def sign_once(module, label, what):
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    slot = next(s for s in lib.getSlotList(tokenPresent=True)
                if lib.getTokenInfo(s).label.strip() == label)
    session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION)
    session.login("1234")
    key = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                               (PyKCS11.CKA_ID, (1,))])[0]
    sig = session.sign(key, what, PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS))
    assert len(sig) == 256, len(sig)
    return lib, session


def main():
    module, label = sys.argv[1], sys.argv[2]
    lib, session = sign_once(module, label, b"parent before fork")
    pid = os.fork()
    if pid == 0:
        try:
            # A fresh PyKCS11Lib runs C_GetFunctionList and C_Initialize in the child.
            sign_once(module, label, b"child")
            print("child signed")
            os._exit(0)
        except Exception as e:  # noqa: BLE001 - report anything to the parent
            print(f"FAIL: child: {e!r}")
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        print(f"FAIL: child status {status}")
        sys.exit(1)
    key = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                               (PyKCS11.CKA_ID, (1,))])[0]
    session.sign(key, b"parent after fork", PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS))
    print("parent signed after fork")


main()
