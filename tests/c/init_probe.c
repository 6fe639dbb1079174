/*
 * init_probe: a plain C application that only initializes a PKCS#11 module, for the
 * configuration tests (tests/config_errors.rs). C_Initialize's CK_RV is what an application sees
 * of a configuration p11ha refuses; a C process also shows what Rust tests cannot: an abort, a
 * hang, memory running out.
 *
 * usage: init_probe MODULE [WAIT_MS [AS_LIMIT_MB]]
 *   dlopens MODULE, calls C_GetFunctionList and C_Initialize (CKF_OS_LOCKING_OK), prints
 *   "C_Initialize rv=0x<hex>"; when that is CKR_OK: "slots=<n>" (C_GetSlotList, all slots),
 *   then after WAIT_MS (default 0) "later C_GetSlotList rv=0x<hex>" (a library that finalized
 *   itself in the meantime answers CKR_CRYPTOKI_NOT_INITIALIZED), then C_Finalize.
 *   AS_LIMIT_MB (default none) caps this process's address space, so a module that reads an
 *   endless file fails fast instead of exhausting the machine.
 * Exit: 0 every call returned CKR_OK, 1 one did not, 2 set-up error.
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s MODULE [WAIT_MS [AS_LIMIT_MB]]\n", argv[0]);
        return 2;
    }
    long wait_ms = argc > 2 ? atol(argv[2]) : 0;
    if (argc > 3) {
        struct rlimit rl;
        rl.rlim_cur = rl.rlim_max = (rlim_t)atol(argv[3]) * 1024 * 1024;
        if (setrlimit(RLIMIT_AS, &rl) != 0) {
            perror("setrlimit");
            return 2;
        }
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR f = NULL;
    if (!get || get(&f) != CKR_OK || !f) {
        fprintf(stderr, "C_GetFunctionList failed\n");
        return 2;
    }
    CK_C_INITIALIZE_ARGS args;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = f->C_Initialize(&args);
    printf("C_Initialize rv=0x%lx\n", (unsigned long)rv);
    fflush(stdout);
    if (rv != CKR_OK)
        return 1;

    CK_ULONG n = 0;
    rv = f->C_GetSlotList(CK_FALSE, NULL, &n);
    printf("slots=%lu\n", rv == CKR_OK ? (unsigned long)n : 0UL);
    if (wait_ms > 0) {
        struct timespec ts = { wait_ms / 1000, (wait_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    CK_RV later = f->C_GetSlotList(CK_FALSE, NULL, &n);
    printf("later C_GetSlotList rv=0x%lx\n", (unsigned long)later);
    CK_RV fin = f->C_Finalize(NULL);
    printf("C_Finalize rv=0x%lx\n", (unsigned long)fin);
    return rv == CKR_OK && later == CKR_OK && fin == CKR_OK ? 0 : 1;
}
