/* A PKCS#11 pass-through module for deterministic faults in tests.
 *
 * FAULT_MODULE   the real module to forward to (read at C_GetFunctionList)
 * FAULT_CONTROL  a file read at every faultable call; each line "C_Function 0x<rv>" makes that
 *                function return rv, "C_Function hang" makes it block until the line is gone.
 *                An empty or missing file means: forward everything.
 *                "C_GetTokenInfo ped" makes the token claim a protected authentication path.
 * Faultable: C_GetTokenInfo, C_OpenSession, C_Login, C_SignInit, C_Sign, C_FindObjectsInit.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST real;
static CK_FUNCTION_LIST ours;
static char control[4096];

/* 0: forward; otherwise the CK_RV to return. Blocks while the function is told to hang. */
static CK_RV fault(const char *fn) {
    for (;;) {
        FILE *f = control[0] ? fopen(control, "r") : NULL;
        if (!f) return 0;
        char name[128], what[64];
        int hang = 0;
        CK_RV rv = 0;
        while (fscanf(f, "%127s %63s", name, what) == 2) {
            if (strcmp(name, fn) != 0) continue;
            if (strcmp(what, "ped") == 0) continue;
            if (strcmp(what, "hang") == 0) hang = 1;
            else rv = (CK_RV)strtoul(what, NULL, 0);
        }
        fclose(f);
        if (!hang) return rv;
        usleep(20000);
    }
}

#define FAULT(fn) do { CK_RV rv_ = fault(#fn); if (rv_) return rv_; } while (0)

/* Whether the control file has the line "fn what". */
static int said(const char *fn, const char *what) {
    FILE *f = control[0] ? fopen(control, "r") : NULL;
    if (!f) return 0;
    char name[128], w[64];
    int found = 0;
    while (fscanf(f, "%127s %63s", name, w) == 2)
        if (strcmp(name, fn) == 0 && strcmp(w, what) == 0) found = 1;
    fclose(f);
    return found;
}

static CK_RV w_GetTokenInfo(CK_SLOT_ID s, CK_TOKEN_INFO_PTR i) {
    FAULT(C_GetTokenInfo);
    CK_RV rv = real.C_GetTokenInfo(s, i);
    if (rv == CKR_OK && i && said("C_GetTokenInfo", "ped")) i->flags |= CKF_PROTECTED_AUTHENTICATION_PATH;
    return rv;
}
static CK_RV w_OpenSession(CK_SLOT_ID s, CK_FLAGS f, void *a, CK_NOTIFY n, CK_SESSION_HANDLE_PTR h) { FAULT(C_OpenSession); return real.C_OpenSession(s, f, a, n, h); }
static CK_RV w_Login(CK_SESSION_HANDLE h, CK_USER_TYPE u, CK_UTF8CHAR_PTR p, CK_ULONG l) { FAULT(C_Login); return real.C_Login(h, u, p, l); }
static CK_RV w_SignInit(CK_SESSION_HANDLE h, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) { FAULT(C_SignInit); return real.C_SignInit(h, m, k); }
static CK_RV w_Sign(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR s, CK_ULONG_PTR sl) { FAULT(C_Sign); return real.C_Sign(h, d, dl, s, sl); }
static CK_RV w_FindObjectsInit(CK_SESSION_HANDLE h, CK_ATTRIBUTE_PTR t, CK_ULONG n) { FAULT(C_FindObjectsInit); return real.C_FindObjectsInit(h, t, n); }

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp) {
    if (!pp) return CKR_ARGUMENTS_BAD;
    const char *path = getenv("FAULT_MODULE");
    const char *ctl = getenv("FAULT_CONTROL");
    if (!path) return CKR_GENERAL_ERROR;
    snprintf(control, sizeof control, "%s", ctl ? ctl : "");
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return CKR_GENERAL_ERROR;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    CK_FUNCTION_LIST_PTR list = NULL;
    if (!get || get(&list) != CKR_OK || !list) return CKR_GENERAL_ERROR;
    real = *list;
    ours = *list;
    ours.C_GetFunctionList = C_GetFunctionList;
    ours.C_GetTokenInfo = w_GetTokenInfo;
    ours.C_OpenSession = w_OpenSession;
    ours.C_Login = w_Login;
    ours.C_SignInit = w_SignInit;
    ours.C_Sign = w_Sign;
    ours.C_FindObjectsInit = w_FindObjectsInit;
    *pp = &ours;
    return CKR_OK;
}
