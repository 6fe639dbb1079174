/* A PKCS#11 pass-through module for deterministic faults in tests.
 *
 * FAULT_MODULE   the real module to forward to (read at C_GetFunctionList)
 * FAULT_CONTROL  a file read at every faultable call; each line "C_Function 0x<rv>" makes that
 *                function return rv, "C_Function hang" makes it block until the line is gone.
 *                An empty or missing file means: forward everything.
 *                "C_GetTokenInfo ped" makes the token claim a protected authentication path.
 * Faultable: C_GetTokenInfo, C_OpenSession, C_Login, C_SignInit, C_Sign, C_FindObjectsInit.
 *
 * The name "*" stands for every function but C_GetFunctionList, C_Initialize and C_Finalize:
 * "* 0x30" is a dead member (every call CKR_DEVICE_ERROR at once, as a p11-kit member whose
 * server is gone), "* hang" a hung one (every call blocks, as behind a SIGSTOPped server), and
 * emptying the file brings it back. C_Initialize and C_Finalize always reach the real module, so
 * its initialization follows the caller's calls: a recovery that finalizes and initializes the
 * member again meets the same module state a real reconnect would.
 * The wrappers that only "*" reaches are at the end of this file.
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
            if (strcmp(name, fn) != 0 && strcmp(name, "*") != 0) continue;
            if (strcmp(what, "ped") == 0) continue;
            if (strcmp(what, "hang") == 0) hang = 1;
            else rv = (CK_RV)strtoul(what, NULL, 0);
        }
        fclose(f);
        if (!hang) return rv;
        usleep(20000);
    }
}

static void install_wildcard_wrappers(void);

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
    install_wildcard_wrappers();
    *pp = &ours;
    return CKR_OK;
}


/* Every other function: forwarded unless "*" (or its own name) says otherwise. */
#define WILDCARD(name, params, args) \
    static CK_RV w_##name params { \
        FAULT(C_##name); \
        return real.C_##name ? real.C_##name args : CKR_FUNCTION_NOT_SUPPORTED; \
    }
WILDCARD(GetInfo, (CK_INFO_PTR a), (a))
WILDCARD(GetSlotList, (CK_BBOOL a, CK_SLOT_ID_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(GetSlotInfo, (CK_SLOT_ID a, CK_SLOT_INFO_PTR b), (a, b))
WILDCARD(GetMechanismList, (CK_SLOT_ID a, CK_MECHANISM_TYPE_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(GetMechanismInfo, (CK_SLOT_ID a, CK_MECHANISM_TYPE b, CK_MECHANISM_INFO_PTR c), (a, b, c))
WILDCARD(InitToken, (CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d), (a, b, c, d))
WILDCARD(InitPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(SetPIN, (CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e), (a, b, c, d, e))
WILDCARD(CloseSession, (CK_SESSION_HANDLE a), (a))
WILDCARD(CloseAllSessions, (CK_SLOT_ID a), (a))
WILDCARD(GetSessionInfo, (CK_SESSION_HANDLE a, CK_SESSION_INFO_PTR b), (a, b))
WILDCARD(GetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(SetOperationState, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e), (a, b, c, d, e))
WILDCARD(Logout, (CK_SESSION_HANDLE a), (a))
WILDCARD(CreateObject, (CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d), (a, b, c, d))
WILDCARD(CopyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
WILDCARD(DestroyObject, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
WILDCARD(GetObjectSize, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(GetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
WILDCARD(SetAttributeValue, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d), (a, b, c, d))
WILDCARD(FindObjects, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE_PTR b, CK_ULONG c, CK_ULONG_PTR d), (a, b, c, d))
WILDCARD(FindObjectsFinal, (CK_SESSION_HANDLE a), (a))
WILDCARD(EncryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WILDCARD(Encrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(EncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(EncryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(DecryptInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WILDCARD(Decrypt, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(DecryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(DecryptFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(DigestInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b), (a, b))
WILDCARD(Digest, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(DigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(DigestKey, (CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b), (a, b))
WILDCARD(DigestFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(SignUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(SignFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c), (a, b, c))
WILDCARD(SignRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WILDCARD(SignRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(VerifyInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WILDCARD(Verify, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e), (a, b, c, d, e))
WILDCARD(VerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(VerifyFinal, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(VerifyRecoverInit, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c), (a, b, c))
WILDCARD(VerifyRecover, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(DigestEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(DecryptDigestUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(SignEncryptUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(DecryptVerifyUpdate, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e), (a, b, c, d, e))
WILDCARD(GenerateKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e), (a, b, c, d, e))
WILDCARD(GenerateKeyPair, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f2, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h2), (a, b, c, d, e, f2, g, h2))
WILDCARD(WrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f2), (a, b, c, d, e, f2))
WILDCARD(UnwrapKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f2, CK_ULONG g, CK_OBJECT_HANDLE_PTR h2), (a, b, c, d, e, f2, g, h2))
WILDCARD(DeriveKey, (CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f2), (a, b, c, d, e, f2))
WILDCARD(SeedRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(GenerateRandom, (CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c), (a, b, c))
WILDCARD(GetFunctionStatus, (CK_SESSION_HANDLE a), (a))
WILDCARD(CancelFunction, (CK_SESSION_HANDLE a), (a))
WILDCARD(WaitForSlotEvent, (CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c), (a, b, c))

static void install_wildcard_wrappers(void) {
    ours.C_GetInfo = w_GetInfo;
    ours.C_GetSlotList = w_GetSlotList;
    ours.C_GetSlotInfo = w_GetSlotInfo;
    ours.C_GetMechanismList = w_GetMechanismList;
    ours.C_GetMechanismInfo = w_GetMechanismInfo;
    ours.C_InitToken = w_InitToken;
    ours.C_InitPIN = w_InitPIN;
    ours.C_SetPIN = w_SetPIN;
    ours.C_CloseSession = w_CloseSession;
    ours.C_CloseAllSessions = w_CloseAllSessions;
    ours.C_GetSessionInfo = w_GetSessionInfo;
    ours.C_GetOperationState = w_GetOperationState;
    ours.C_SetOperationState = w_SetOperationState;
    ours.C_Logout = w_Logout;
    ours.C_CreateObject = w_CreateObject;
    ours.C_CopyObject = w_CopyObject;
    ours.C_DestroyObject = w_DestroyObject;
    ours.C_GetObjectSize = w_GetObjectSize;
    ours.C_GetAttributeValue = w_GetAttributeValue;
    ours.C_SetAttributeValue = w_SetAttributeValue;
    ours.C_FindObjects = w_FindObjects;
    ours.C_FindObjectsFinal = w_FindObjectsFinal;
    ours.C_EncryptInit = w_EncryptInit;
    ours.C_Encrypt = w_Encrypt;
    ours.C_EncryptUpdate = w_EncryptUpdate;
    ours.C_EncryptFinal = w_EncryptFinal;
    ours.C_DecryptInit = w_DecryptInit;
    ours.C_Decrypt = w_Decrypt;
    ours.C_DecryptUpdate = w_DecryptUpdate;
    ours.C_DecryptFinal = w_DecryptFinal;
    ours.C_DigestInit = w_DigestInit;
    ours.C_Digest = w_Digest;
    ours.C_DigestUpdate = w_DigestUpdate;
    ours.C_DigestKey = w_DigestKey;
    ours.C_DigestFinal = w_DigestFinal;
    ours.C_SignUpdate = w_SignUpdate;
    ours.C_SignFinal = w_SignFinal;
    ours.C_SignRecoverInit = w_SignRecoverInit;
    ours.C_SignRecover = w_SignRecover;
    ours.C_VerifyInit = w_VerifyInit;
    ours.C_Verify = w_Verify;
    ours.C_VerifyUpdate = w_VerifyUpdate;
    ours.C_VerifyFinal = w_VerifyFinal;
    ours.C_VerifyRecoverInit = w_VerifyRecoverInit;
    ours.C_VerifyRecover = w_VerifyRecover;
    ours.C_DigestEncryptUpdate = w_DigestEncryptUpdate;
    ours.C_DecryptDigestUpdate = w_DecryptDigestUpdate;
    ours.C_SignEncryptUpdate = w_SignEncryptUpdate;
    ours.C_DecryptVerifyUpdate = w_DecryptVerifyUpdate;
    ours.C_GenerateKey = w_GenerateKey;
    ours.C_GenerateKeyPair = w_GenerateKeyPair;
    ours.C_WrapKey = w_WrapKey;
    ours.C_UnwrapKey = w_UnwrapKey;
    ours.C_DeriveKey = w_DeriveKey;
    ours.C_SeedRandom = w_SeedRandom;
    ours.C_GenerateRandom = w_GenerateRandom;
    ours.C_GetFunctionStatus = w_GetFunctionStatus;
    ours.C_CancelFunction = w_CancelFunction;
    ours.C_WaitForSlotEvent = w_WaitForSlotEvent;
}
