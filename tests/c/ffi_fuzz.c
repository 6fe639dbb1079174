/*
 * ffi_fuzz: hostile but legal PKCS#11 calls from a plain C application, for p11ha's C ABI tests.
 *
 * usage: ffi_fuzz -m MODULE -t LABEL [-p PIN] [-P] -r SEED -c CALLS   random calls
 *        ffi_fuzz -m MODULE -t LABEL [-p PIN] [-P] -a CASE|all        absurd-length cases
 *        ffi_fuzz -L                                                  list the cases
 *   -P  also make the calls only p11ha promises to survive (below); without it every call is
 *       one any conforming module must survive
 *   -H  at the end print the HA state of the slot (p11ha_group_status, when the module has it):
 *       "member <serial> alive=<0|1> last_error=0x<rv>"
 * Output: random mode prints "#<n> C_Function(<arguments>)" before each call (flushed, so an
 * abort shows the call) and " = 0x<rv>" after it; case mode prints
 * "case <name> class=<same|p11ha> rv=0x<rv> len=<output length> sum=<checksum>".
 * Then "done calls=<n>". Exit: 0 when every call returned, 2 set-up error.
 *
 * What is legal to pass, and why the calls below are:
 * - Input lengths (data, PINs, templates, parameters) are read by the library: each is at most
 *   the size of the real buffer passed with it. A larger one is not a legal call: the library
 *   may read that much. The exceptions, with -P only, are lengths no buffer can have (over
 *   2^63 - 1 bytes, or counts whose arrays would be), which p11ha promises to refuse unread
 *   (CKR_ARGUMENTS_BAD), PINs over 4 KiB, which it refuses unread (CKR_PIN_LEN_RANGE), and
 *   NULL with a non-zero length (CKR_ARGUMENTS_BAD).
 * - Output capacities (*pulSignatureLen, ulValueLen of C_GetAttributeValue, ulMaxObjectCount)
 *   only bound what the module writes, and the module writes what it produces: any capacity,
 *   ULONG_MAX included, is legal as long as the real buffer holds the largest output the call
 *   can produce here. Every output buffer below is larger than anything SoftHSM produces for
 *   these inputs (inputs are at most 4 KiB; values at most 2 KiB; at most 4096 objects).
 * - C_GenerateRandom(h, buf, n) writes n bytes: n is an input length, never more than the buffer
 *   (the C_GenerateRandom(h, buf, ULONG_MAX) is legal only as a p11ha promise, -P).
 * - Mechanism parameters: only mechanisms whose parameters hold no pointer get random bytes;
 *   pointer-bearing ones (GCM, OAEP, ECDH) get well-formed structures pointing at real buffers.
 * - Attribute types with CKF_ARRAY_ATTRIBUTE (nested templates) are never chosen: their values
 *   hold pointers.
 * - Never: C_Finalize with NULL (it would end the run), blocking C_WaitForSlotEvent, C_InitToken /
 *   C_InitPIN / C_SetPIN with a right PIN (they would wipe the token or change its PIN), RSA key
 *   generation beyond 1024 bits (minutes of work a member may be timed out for).
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "p11ha.h"

#define BIG ((CK_ULONG)1 << 40)
#define OVER_ISIZE ((CK_ULONG)1 << 63)
#define OUT_SIZE 8192
#define IN_SIZE 4096
#define VAL_SIZE 2048
#define MAX_ATTRS 16
#define MAX_SESSIONS 16
#define MAX_OBJECTS 256

static CK_FUNCTION_LIST_PTR f;
static void *lib;
static CK_SLOT_ID slot;
static const char *pin = "1234";
static int promises;

static CK_BYTE in_buf[IN_SIZE];
static CK_BYTE out_buf[OUT_SIZE];
static CK_BYTE pin_buf[5000];
static CK_ATTRIBUTE attrs[MAX_ATTRS];
static CK_BYTE values[MAX_ATTRS][VAL_SIZE];
static CK_OBJECT_HANDLE found[4096];
static CK_SLOT_ID slot_list[256];
static CK_MECHANISM_TYPE mech_list[1024];

static CK_SESSION_HANDLE sessions[MAX_SESSIONS];
static int n_sessions;
static CK_OBJECT_HANDLE objects[MAX_OBJECTS];
static int n_objects;

/* xorshift64*: a run is a function of its seed alone. */
static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 2685821657736338717ULL;
}
static CK_ULONG below(CK_ULONG n) { return n ? rnd() % n : 0; }
static int one_in(CK_ULONG n) { return below(n) == 0; }

static CK_ULONG sum(const CK_BYTE *p, CK_ULONG n)
{
    CK_ULONG s = 0;
    for (CK_ULONG i = 0; i < n; i++)
        s += p[i];
    return s;
}

/* ---- value pools ---------------------------------------------------------------------- */

static CK_ULONG any_ulong(void)
{
    switch (below(6)) {
    case 0: return 0;
    case 1: return ULONG_MAX;
    case 2: return below(64);
    case 3: return (CK_ULONG)(uint32_t)rnd();
    case 4: return BIG;
    default: return (CK_ULONG)rnd();
    }
}

static CK_SESSION_HANDLE any_session(void)
{
    if (n_sessions && !one_in(5))
        return sessions[below(n_sessions)];
    return any_ulong();
}

static CK_OBJECT_HANDLE any_object(void)
{
    if (n_objects && !one_in(5))
        return objects[below(n_objects)];
    return any_ulong();
}

static CK_SLOT_ID any_slot(void) { return one_in(4) ? any_ulong() : slot; }

static void add_object(CK_OBJECT_HANDLE o)
{
    if (n_objects < MAX_OBJECTS)
        objects[n_objects++] = o;
    else
        objects[below(MAX_OBJECTS)] = o;
}

/* An input length for a buffer of `cap` bytes: at most cap, or (-P) one p11ha refuses unread. */
static CK_ULONG in_len(CK_ULONG cap)
{
    if (promises && one_in(12))
        return one_in(2) ? OVER_ISIZE : ULONG_MAX;
    switch (below(5)) {
    case 0: return 0;
    case 1: return 1 + below(32 < cap ? 32 : cap);
    case 2: return cap;
    default: return below(cap + 1);
    }
}

/* An input buffer: real, or NULL (with length 0 always legal; otherwise only with -P). */
static CK_BYTE_PTR in_ptr(CK_ULONG *len, CK_ULONG cap)
{
    *len = in_len(cap);
    if (one_in(10)) {
        if (!promises)
            *len = 0;
        return NULL;
    }
    for (CK_ULONG i = 0; i < 16; i++)
        in_buf[below(IN_SIZE)] = (CK_BYTE)rnd();
    return in_buf;
}

/* An output capacity: any value, since out_buf holds every output. */
static CK_ULONG out_cap(void)
{
    static const CK_ULONG caps[] = { 0, 1, 16, 31, 32, 64, 255, 256, 512, OUT_SIZE,
                                     (CK_ULONG)1 << 32, BIG, OVER_ISIZE, ULONG_MAX };
    return caps[below(sizeof caps / sizeof caps[0])];
}

static CK_BYTE_PTR out_ptr(void) { return one_in(6) ? NULL : out_buf; }
static CK_ULONG out_len_storage;
static CK_ULONG_PTR out_len(void)
{
    out_len_storage = out_cap();
    return one_in(12) ? NULL : &out_len_storage;
}

/* ---- templates ------------------------------------------------------------------------ */

static const CK_ATTRIBUTE_TYPE attr_types[] = {
    CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_APPLICATION, CKA_VALUE, CKA_OBJECT_ID,
    CKA_CERTIFICATE_TYPE, CKA_KEY_TYPE, CKA_ID, CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT,
    CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY, CKA_DERIVE, CKA_MODULUS, CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT, CKA_VALUE_LEN, CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE, CKA_MODIFIABLE, CKA_EC_PARAMS, CKA_EC_POINT, CKA_CHECK_VALUE,
    CKA_START_DATE, CKA_SUBJECT, CKA_VENDOR_DEFINED,
};

static CK_ATTRIBUTE_TYPE any_attr_type(void)
{
    if (one_in(8)) {
        /* anything but a nested template (CKF_ARRAY_ATTRIBUTE): those hold pointers */
        return (CK_ATTRIBUTE_TYPE)(uint32_t)rnd() & ~(CK_ATTRIBUTE_TYPE)CKF_ARRAY_ATTRIBUTE;
    }
    return attr_types[below(sizeof attr_types / sizeof attr_types[0])];
}

/* Fills attrs[0..n) for input: values are real buffers, lengths at most theirs (or -P). */
static CK_ULONG input_template(void)
{
    CK_ULONG n = below(MAX_ATTRS / 2 + 1);
    for (CK_ULONG i = 0; i < n; i++) {
        attrs[i].type = any_attr_type();
        CK_ULONG len;
        switch (below(4)) {
        case 0: /* a CK_BBOOL or CK_ULONG, as most attributes are */
            values[i][0] = (CK_BYTE)below(2);
            len = one_in(2) ? 1 : sizeof(CK_ULONG);
            if (len == sizeof(CK_ULONG)) {
                CK_ULONG v = below(8);
                memcpy(values[i], &v, sizeof v);
            }
            break;
        default:
            len = in_len(VAL_SIZE);
            for (CK_ULONG k = 0; k < 8; k++)
                values[i][below(VAL_SIZE)] = (CK_BYTE)rnd();
        }
        attrs[i].pValue = values[i];
        attrs[i].ulValueLen = len;
        if (one_in(12)) {
            attrs[i].pValue = NULL;
            if (!promises)
                attrs[i].ulValueLen = 0;
        }
    }
    return n;
}

/* Fills attrs[0..n) for C_GetAttributeValue: any capacity (values are at most VAL_SIZE). */
static CK_ULONG output_template(void)
{
    CK_ULONG n = 1 + below(MAX_ATTRS / 2);
    for (CK_ULONG i = 0; i < n; i++) {
        attrs[i].type = any_attr_type();
        attrs[i].pValue = one_in(4) ? NULL : values[i];
        attrs[i].ulValueLen = out_cap();
    }
    return n;
}

/* A template count for attrs: at most what was filled, or (-P) one no array can have. */
static CK_ULONG tmpl_count(CK_ULONG filled)
{
    if (promises && one_in(15))
        return one_in(2) ? ((CK_ULONG)1 << 60) : ULONG_MAX;
    return below(filled + 1);
}

static CK_ATTRIBUTE_PTR tmpl_ptr(void) { return one_in(10) ? NULL : attrs; }

/* ---- mechanisms ----------------------------------------------------------------------- */

static CK_MECHANISM mech;
static CK_BYTE mech_raw[256];
static CK_RSA_PKCS_PSS_PARAMS pss;
static CK_GCM_PARAMS gcm;
static CK_RSA_PKCS_OAEP_PARAMS oaep;
static CK_ECDH1_DERIVE_PARAMS ecdh;
static CK_BYTE iv[64], aad[256], label[64], pubdata[128];

enum kind { NONE, RAW, IV, PSS, GCM, OAEP, ECDH };
static const struct { CK_MECHANISM_TYPE type; enum kind kind; } mechs[] = {
    { CKM_SHA256_RSA_PKCS, NONE },      { CKM_RSA_PKCS, NONE },
    { CKM_SHA256_RSA_PKCS_PSS, PSS },   { CKM_RSA_PKCS_PSS, PSS },
    { CKM_RSA_PKCS_OAEP, OAEP },        { CKM_ECDSA, NONE },
    { CKM_AES_ECB, NONE },              { CKM_AES_CBC, IV },
    { CKM_AES_CBC_PAD, IV },            { CKM_AES_GCM, GCM },
    { CKM_AES_CTR, RAW },               { CKM_SHA256_HMAC, NONE },
    { CKM_SHA256_HMAC_GENERAL, RAW },   { CKM_SHA256, NONE },
    { CKM_SHA_1, NONE },                { CKM_AES_KEY_GEN, NONE },
    { CKM_GENERIC_SECRET_KEY_GEN, NONE }, { CKM_ECDH1_DERIVE, ECDH },
    { CKM_AES_KEY_WRAP, NONE },         { CKM_VENDOR_DEFINED, RAW },
};

static CK_MECHANISM_PTR any_mech(void)
{
    if (one_in(15))
        return NULL;
    int k = (int)below(sizeof mechs / sizeof mechs[0]);
    mech.mechanism = mechs[k].type;
    if (mech.mechanism == CKM_VENDOR_DEFINED)
        mech.mechanism |= (CK_MECHANISM_TYPE)(uint32_t)rnd() & 0x7fffffff;
    mech.pParameter = NULL;
    mech.ulParameterLen = 0;
    enum kind kind = one_in(8) ? RAW : mechs[k].kind;
    /* RAW bytes only where no pointer can be read out of them */
    if (kind == RAW && (mechs[k].kind == GCM || mechs[k].kind == OAEP || mechs[k].kind == ECDH))
        kind = NONE;
    switch (kind) {
    case NONE:
        break;
    case RAW:
        for (int i = 0; i < 8; i++)
            mech_raw[below(sizeof mech_raw)] = (CK_BYTE)rnd();
        mech.pParameter = mech_raw;
        mech.ulParameterLen = below(sizeof mech_raw + 1);
        break;
    case IV:
        mech.pParameter = iv;
        mech.ulParameterLen = one_in(3) ? below(sizeof iv + 1) : 16;
        break;
    case PSS:
        pss.hashAlg = one_in(3) ? any_ulong() : CKM_SHA256;
        pss.mgf = one_in(3) ? any_ulong() : CKG_MGF1_SHA256;
        pss.sLen = one_in(3) ? any_ulong() : 32;
        mech.pParameter = &pss;
        mech.ulParameterLen = one_in(5) ? below(sizeof pss + 1) : sizeof pss;
        break;
    case GCM:
        gcm.pIv = iv;
        gcm.ulIvLen = below(sizeof iv + 1);
        gcm.ulIvBits = gcm.ulIvLen * 8;
        gcm.pAAD = one_in(3) ? NULL : aad;
        gcm.ulAADLen = gcm.pAAD ? below(sizeof aad + 1) : 0;
        gcm.ulTagBits = one_in(3) ? any_ulong() : 128;
        mech.pParameter = &gcm;
        mech.ulParameterLen = sizeof gcm;
        break;
    case OAEP:
        oaep.hashAlg = one_in(3) ? CKM_SHA256 : CKM_SHA_1;
        oaep.mgf = one_in(3) ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
        oaep.source = CKZ_DATA_SPECIFIED;
        oaep.pSourceData = one_in(2) ? NULL : label;
        oaep.ulSourceDataLen = oaep.pSourceData ? below(sizeof label + 1) : 0;
        mech.pParameter = &oaep;
        mech.ulParameterLen = sizeof oaep;
        break;
    case ECDH:
        ecdh.kdf = one_in(4) ? any_ulong() : CKD_NULL;
        ecdh.pSharedData = NULL;
        ecdh.ulSharedDataLen = 0;
        ecdh.pPublicData = pubdata;
        ecdh.ulPublicDataLen = below(sizeof pubdata + 1);
        mech.pParameter = &ecdh;
        mech.ulParameterLen = sizeof ecdh;
        break;
    }
    if (promises && mech.pParameter && one_in(12)) {
        mech.pParameter = NULL; /* with a non-zero length: p11ha refuses */
        mech.ulParameterLen = 1 + below(64);
    }
    return &mech;
}

/* ---- calls ---------------------------------------------------------------------------- */

static long n_call;
static int watch_members; /* -H: after each call, say which member went down on it */
static unsigned char was_alive[P11HA_MAX_MEMBERS];
static CK_RV (*group_status)(unsigned long, P11haGroupStatus *);

static void report(CK_RV rv)
{
    printf(" = 0x%lx\n", rv);
    if (watch_members && group_status) {
        static P11haGroupStatus st;
        if (group_status(slot, &st) == CKR_OK)
            for (unsigned long i = 0; i < st.member_count && i < P11HA_MAX_MEMBERS; i++) {
                if (was_alive[i] && !st.members[i].alive)
                    printf("   member %s down after this call: last_error=0x%lx\n",
                           st.members[i].serial, st.members[i].last_error);
                was_alive[i] = st.members[i].alive;
            }
    }
    fflush(stdout);
}

#define P(p) ((p) ? "buf" : "NULL")

static void random_call(void)
{
    CK_RV rv = 0;
    CK_ULONG n, m, k;
    CK_BYTE_PTR in, out;
    CK_ULONG_PTR plen;
    CK_SESSION_HANDLE h = any_session();
    CK_OBJECT_HANDLE o = any_object();
    CK_MECHANISM_PTR mp;
    CK_ATTRIBUTE_PTR tp;
    switch (below(46)) {
    case 0: {
        CK_INFO info;
        CK_INFO_PTR p = one_in(5) ? NULL : &info;
        printf("#%ld C_GetInfo(%s)", ++n_call, P(p));
        fflush(stdout);
        rv = f->C_GetInfo(p);
        break;
    }
    case 1:
        plen = out_len();
        out = one_in(4) ? NULL : (CK_BYTE_PTR)slot_list;
        if (plen && *plen > 256 && *plen < ((CK_ULONG)1 << 32))
            *plen = 256; /* a capacity the slot list array has: it is written as given */
        printf("#%ld C_GetSlotList(%s, %s, %lu)", ++n_call, P(out), P(plen),
               plen ? *plen : 0);
        fflush(stdout);
        rv = f->C_GetSlotList((CK_BBOOL)below(2), (CK_SLOT_ID_PTR)out, plen);
        break;
    case 2: {
        CK_SLOT_INFO si;
        CK_SLOT_ID s = any_slot();
        CK_SLOT_INFO_PTR p = one_in(5) ? NULL : &si;
        printf("#%ld C_GetSlotInfo(%lu, %s)", ++n_call, s, P(p));
        fflush(stdout);
        rv = f->C_GetSlotInfo(s, p);
        break;
    }
    case 3: {
        CK_TOKEN_INFO ti;
        CK_SLOT_ID s = any_slot();
        CK_TOKEN_INFO_PTR p = one_in(5) ? NULL : &ti;
        printf("#%ld C_GetTokenInfo(%lu, %s)", ++n_call, s, P(p));
        fflush(stdout);
        rv = f->C_GetTokenInfo(s, p);
        break;
    }
    case 4: {
        CK_SLOT_ID s = any_slot();
        plen = out_len();
        out = one_in(4) ? NULL : (CK_BYTE_PTR)mech_list;
        printf("#%ld C_GetMechanismList(%lu, %s, %lu)", ++n_call, s, P(out), plen ? *plen : 0);
        fflush(stdout);
        rv = f->C_GetMechanismList(s, (CK_MECHANISM_TYPE_PTR)out, plen);
        break;
    }
    case 5: {
        CK_MECHANISM_INFO mi;
        CK_SLOT_ID s = any_slot();
        CK_MECHANISM_TYPE t = one_in(2) ? mechs[below(sizeof mechs / sizeof mechs[0])].type
                                        : any_ulong();
        CK_MECHANISM_INFO_PTR p = one_in(5) ? NULL : &mi;
        printf("#%ld C_GetMechanismInfo(%lu, 0x%lx, %s)", ++n_call, s, t, P(p));
        fflush(stdout);
        rv = f->C_GetMechanismInfo(s, t, p);
        break;
    }
    case 6: {
        CK_SESSION_HANDLE nh = 0;
        CK_SLOT_ID s = any_slot();
        CK_FLAGS fl = one_in(4) ? any_ulong() : (CKF_SERIAL_SESSION | (below(2) ? CKF_RW_SESSION : 0));
        CK_SESSION_HANDLE_PTR p = one_in(8) ? NULL : &nh;
        printf("#%ld C_OpenSession(%lu, 0x%lx, %s)", ++n_call, s, fl, P(p));
        fflush(stdout);
        rv = f->C_OpenSession(s, fl, NULL, NULL, p);
        if (rv == CKR_OK && p) {
            if (n_sessions < MAX_SESSIONS)
                sessions[n_sessions++] = nh;
            else
                sessions[below(MAX_SESSIONS)] = nh;
        }
        break;
    }
    case 7:
        if (!one_in(4))
            return; /* closing is rarer than opening: keep sessions to work with */
        printf("#%ld C_CloseSession(%lu)", ++n_call, h);
        fflush(stdout);
        rv = f->C_CloseSession(h);
        break;
    case 8:
        if (!one_in(20))
            return;
        {
            CK_SLOT_ID s = any_slot();
            printf("#%ld C_CloseAllSessions(%lu)", ++n_call, s);
            fflush(stdout);
            rv = f->C_CloseAllSessions(s);
        }
        break;
    case 9: {
        CK_SESSION_INFO si;
        CK_SESSION_INFO_PTR p = one_in(5) ? NULL : &si;
        printf("#%ld C_GetSessionInfo(%lu, %s)", ++n_call, h, P(p));
        fflush(stdout);
        rv = f->C_GetSessionInfo(h, p);
        break;
    }
    case 10: {
        CK_USER_TYPE u = one_in(5) ? any_ulong() : (one_in(4) ? CKU_SO : CKU_USER);
        CK_BYTE_PTR p;
        n = 0;
        switch (below(5)) {
        case 0: /* the right PIN */
            p = (CK_BYTE_PTR)pin;
            n = strlen(pin);
            break;
        case 1: /* protected authentication path */
            p = NULL;
            break;
        case 2: /* a long PIN, read from a real buffer of its length */
            memset(pin_buf, '7', sizeof pin_buf);
            n = below(sizeof pin_buf + 1);
            p = pin_buf;
            break;
        default:
            for (int i = 0; i < 16; i++)
                pin_buf[i] = (CK_BYTE)('0' + below(10));
            n = in_len(16);
            p = pin_buf;
            if (n == 4 && memcmp(pin_buf, pin, 4) == 0)
                pin_buf[0] ^= 1;
        }
        if (promises && one_in(8))
            n = one_in(2) ? ((CK_ULONG)1 << 62) : OVER_ISIZE;
        printf("#%ld C_Login(%lu, %lu, %s, %lu)", ++n_call, h, u, P(p), n);
        fflush(stdout);
        rv = f->C_Login(h, u, p, n);
        break;
    }
    case 11:
        if (!one_in(4))
            return;
        printf("#%ld C_Logout(%lu)", ++n_call, h);
        fflush(stdout);
        rv = f->C_Logout(h);
        break;
    case 12: {
        CK_OBJECT_HANDLE no = 0;
        k = input_template();
        n = tmpl_count(k);
        tp = tmpl_ptr();
        CK_OBJECT_HANDLE_PTR p = one_in(8) ? NULL : &no;
        printf("#%ld C_CreateObject(%lu, %s, %lu, %s)", ++n_call, h, P(tp), n, P(p));
        fflush(stdout);
        rv = f->C_CreateObject(h, tp, n, p);
        if (rv == CKR_OK && p)
            add_object(no);
        break;
    }
    case 13: {
        CK_OBJECT_HANDLE no = 0;
        k = input_template();
        n = tmpl_count(k);
        tp = tmpl_ptr();
        CK_OBJECT_HANDLE_PTR p = one_in(8) ? NULL : &no;
        printf("#%ld C_CopyObject(%lu, %lu, %s, %lu, %s)", ++n_call, h, o, P(tp), n, P(p));
        fflush(stdout);
        rv = f->C_CopyObject(h, o, tp, n, p);
        if (rv == CKR_OK && p)
            add_object(no);
        break;
    }
    case 14:
        if (!one_in(6))
            return;
        printf("#%ld C_DestroyObject(%lu, %lu)", ++n_call, h, o);
        fflush(stdout);
        rv = f->C_DestroyObject(h, o);
        break;
    case 15: {
        CK_ULONG size;
        CK_ULONG_PTR p = one_in(5) ? NULL : &size;
        printf("#%ld C_GetObjectSize(%lu, %lu, %s)", ++n_call, h, o, P(p));
        fflush(stdout);
        rv = f->C_GetObjectSize(h, o, p);
        break;
    }
    case 16:
    case 17:
        k = output_template();
        n = tmpl_count(k);
        /* Never 0 here: p11-kit 0.24's client aborts the application on an empty template
           (the case getattr_count_0 shows it), which would end every run early. */
        if (n == 0)
            n = k;
        tp = tmpl_ptr();
        printf("#%ld C_GetAttributeValue(%lu, %lu, %s, %lu: type 0x%lx cap %lu)", ++n_call, h, o,
               P(tp), n, attrs[0].type, attrs[0].ulValueLen);
        fflush(stdout);
        rv = f->C_GetAttributeValue(h, o, tp, n);
        break;
    case 18:
        k = input_template();
        n = tmpl_count(k);
        tp = tmpl_ptr();
        printf("#%ld C_SetAttributeValue(%lu, %lu, %s, %lu)", ++n_call, h, o, P(tp), n);
        fflush(stdout);
        rv = f->C_SetAttributeValue(h, o, tp, n);
        break;
    case 19:
        k = input_template();
        n = tmpl_count(k);
        tp = tmpl_ptr();
        printf("#%ld C_FindObjectsInit(%lu, %s, %lu)", ++n_call, h, P(tp), n);
        fflush(stdout);
        rv = f->C_FindObjectsInit(h, tp, n);
        break;
    case 20: {
        CK_ULONG got = 0;
        CK_ULONG_PTR p = one_in(8) ? NULL : &got;
        CK_OBJECT_HANDLE_PTR buf = one_in(8) ? NULL : found;
        /* found[] holds more handles than any token here has objects */
        m = one_in(3) ? out_cap() : below(16);
        printf("#%ld C_FindObjects(%lu, %s, %lu, %s)", ++n_call, h, P(buf), m, P(p));
        fflush(stdout);
        rv = f->C_FindObjects(h, buf, m, p);
        if (rv == CKR_OK && p && buf)
            for (CK_ULONG i = 0; i < got && i < 4096; i++)
                if (one_in(4))
                    add_object(found[i]);
        break;
    }
    case 21:
        printf("#%ld C_FindObjectsFinal(%lu)", ++n_call, h);
        fflush(stdout);
        rv = f->C_FindObjectsFinal(h);
        break;
    case 22: case 23: case 24: case 25: case 26: case 27: {
        /* X_Init with a mechanism and a key */
        static const char *names[] = { "C_EncryptInit", "C_DecryptInit", "C_SignInit",
                                       "C_VerifyInit", "C_SignRecoverInit", "C_VerifyRecoverInit" };
        int which = (int)below(6);
        mp = any_mech();
        printf("#%ld %s(%lu, %s 0x%lx len %lu, %lu)", ++n_call, names[which], h,
               mp ? "mech" : "NULL", mp ? mp->mechanism : 0, mp ? mp->ulParameterLen : 0, o);
        fflush(stdout);
        switch (which) {
        case 0: rv = f->C_EncryptInit(h, mp, o); break;
        case 1: rv = f->C_DecryptInit(h, mp, o); break;
        case 2: rv = f->C_SignInit(h, mp, o); break;
        case 3: rv = f->C_VerifyInit(h, mp, o); break;
        case 4: rv = f->C_SignRecoverInit(h, mp, o); break;
        default: rv = f->C_VerifyRecoverInit(h, mp, o); break;
        }
        break;
    }
    case 28:
        mp = any_mech();
        printf("#%ld C_DigestInit(%lu, %s 0x%lx)", ++n_call, h, mp ? "mech" : "NULL",
               mp ? mp->mechanism : 0);
        fflush(stdout);
        rv = f->C_DigestInit(h, mp);
        break;
    case 29: case 30: case 31: case 32: case 33: case 34: case 35: case 36: case 37: case 38: {
        /* one-shot and update calls with an output: data in, bytes out */
        static const char *names[] = { "C_Encrypt", "C_EncryptUpdate", "C_Decrypt",
                                       "C_DecryptUpdate", "C_Digest", "C_Sign",
                                       "C_SignRecover", "C_VerifyRecover",
                                       "C_DigestEncryptUpdate", "C_SignEncryptUpdate" };
        int which = (int)below(10);
        in = in_ptr(&n, IN_SIZE);
        out = out_ptr();
        plen = out_len();
        printf("#%ld %s(%lu, %s, %lu, %s, %lu)", ++n_call, names[which], h, P(in), n, P(out),
               plen ? *plen : 0);
        fflush(stdout);
        switch (which) {
        case 0: rv = f->C_Encrypt(h, in, n, out, plen); break;
        case 1: rv = f->C_EncryptUpdate(h, in, n, out, plen); break;
        case 2: rv = f->C_Decrypt(h, in, n, out, plen); break;
        case 3: rv = f->C_DecryptUpdate(h, in, n, out, plen); break;
        case 4: rv = f->C_Digest(h, in, n, out, plen); break;
        case 5: rv = f->C_Sign(h, in, n, out, plen); break;
        case 6: rv = f->C_SignRecover(h, in, n, out, plen); break;
        case 7: rv = f->C_VerifyRecover(h, in, n, out, plen); break;
        case 8: rv = f->C_DigestEncryptUpdate(h, in, n, out, plen); break;
        default: rv = f->C_SignEncryptUpdate(h, in, n, out, plen); break;
        }
        break;
    }
    case 39: {
        /* finals: bytes out */
        static const char *names[] = { "C_EncryptFinal", "C_DecryptFinal", "C_DigestFinal",
                                       "C_SignFinal", "C_GetOperationState" };
        int which = (int)below(5);
        out = out_ptr();
        plen = out_len();
        printf("#%ld %s(%lu, %s, %lu)", ++n_call, names[which], h, P(out), plen ? *plen : 0);
        fflush(stdout);
        switch (which) {
        case 0: rv = f->C_EncryptFinal(h, out, plen); break;
        case 1: rv = f->C_DecryptFinal(h, out, plen); break;
        case 2: rv = f->C_DigestFinal(h, out, plen); break;
        case 3: rv = f->C_SignFinal(h, out, plen); break;
        default: rv = f->C_GetOperationState(h, out, plen); break;
        }
        break;
    }
    case 40: {
        /* data in, nothing out */
        static const char *names[] = { "C_DigestUpdate", "C_SignUpdate", "C_VerifyUpdate",
                                       "C_VerifyFinal", "C_Verify", "C_SeedRandom",
                                       "C_SetOperationState", "C_DigestKey" };
        int which = (int)below(8);
        CK_ULONG n2;
        CK_BYTE_PTR in2;
        in = in_ptr(&n, IN_SIZE / 2);
        /* a second input in the upper half of in_buf: C_Verify reads both */
        in2 = in_ptr(&n2, IN_SIZE / 2);
        if (in2)
            in2 += IN_SIZE / 2;
        printf("#%ld %s(%lu, %s, %lu, %s, %lu)", ++n_call, names[which], h, P(in), n, P(in2), n2);
        fflush(stdout);
        switch (which) {
        case 0: rv = f->C_DigestUpdate(h, in, n); break;
        case 1: rv = f->C_SignUpdate(h, in, n); break;
        case 2: rv = f->C_VerifyUpdate(h, in, n); break;
        case 3: rv = f->C_VerifyFinal(h, in, n); break;
        case 4: rv = f->C_Verify(h, in, n, in2, n2); break;
        case 5: rv = f->C_SeedRandom(h, in, n); break;
        case 6: rv = f->C_SetOperationState(h, in, n, any_object(), any_object()); break;
        default: rv = f->C_DigestKey(h, o); break;
        }
        break;
    }
    case 41:
        /* C_GenerateRandom writes n bytes: n is an input length (see the top of the file) */
        n = in_len(OUT_SIZE);
        out = one_in(8) ? NULL : out_buf;
        if (!out && !promises)
            n = 0;
        printf("#%ld C_GenerateRandom(%lu, %s, %lu)", ++n_call, h, P(out), n);
        fflush(stdout);
        rv = f->C_GenerateRandom(h, out, n);
        break;
    case 42: {
        CK_OBJECT_HANDLE key = 0;
        mp = any_mech();
        k = input_template();
        n = tmpl_count(k);
        tp = tmpl_ptr();
        CK_OBJECT_HANDLE_PTR p = one_in(8) ? NULL : &key;
        /* secret keys only: their generation is quick whatever the template says */
        if (mp && mp->mechanism != CKM_AES_KEY_GEN && mp->mechanism != CKM_GENERIC_SECRET_KEY_GEN)
            mp->mechanism = CKM_AES_KEY_GEN;
        printf("#%ld C_GenerateKey(%lu, %s 0x%lx, %s, %lu, %s)", ++n_call, h, mp ? "mech" : "NULL",
               mp ? mp->mechanism : 0, P(tp), n, P(p));
        fflush(stdout);
        rv = f->C_GenerateKey(h, mp, tp, n, p);
        if (rv == CKR_OK && p)
            add_object(key);
        break;
    }
    case 43: {
        /* EC P-256 or RSA-1024 key pairs, well-formed templates with random flags */
        static CK_BYTE p256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
        static CK_ULONG bits = 1024;
        static CK_BYTE yes = CK_TRUE, no = CK_FALSE;
        int ec = below(4) != 0;
        CK_MECHANISM gm = { ec ? CKM_EC_KEY_PAIR_GEN : CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0 };
        CK_ATTRIBUTE pub[] = {
            { ec ? CKA_EC_PARAMS : CKA_MODULUS_BITS, ec ? (void *)p256 : (void *)&bits,
              ec ? sizeof p256 : sizeof bits },
            { CKA_TOKEN, below(2) ? &yes : &no, 1 },
            { CKA_VERIFY, &yes, 1 },
        };
        CK_ATTRIBUTE priv[] = {
            { CKA_TOKEN, below(2) ? &yes : &no, 1 },
            { CKA_SIGN, &yes, 1 },
            { CKA_SENSITIVE, below(2) ? &yes : &no, 1 },
        };
        CK_OBJECT_HANDLE hpub = 0, hpriv = 0;
        CK_ULONG npub = below(4), npriv = below(4);
        printf("#%ld C_GenerateKeyPair(%lu, 0x%lx, %lu, %lu)", ++n_call, h, gm.mechanism, npub,
               npriv);
        fflush(stdout);
        rv = f->C_GenerateKeyPair(h, &gm, pub, npub, priv, npriv, &hpub, &hpriv);
        if (rv == CKR_OK) {
            add_object(hpub);
            add_object(hpriv);
        }
        break;
    }
    case 44: {
        CK_OBJECT_HANDLE wrapping = any_object();
        mp = any_mech();
        out = out_ptr();
        plen = out_len();
        printf("#%ld C_WrapKey(%lu, %s 0x%lx, %lu, %lu, %s, %lu)", ++n_call, h,
               mp ? "mech" : "NULL", mp ? mp->mechanism : 0, wrapping, o, P(out),
               plen ? *plen : 0);
        fflush(stdout);
        rv = f->C_WrapKey(h, mp, wrapping, o, out, plen);
        break;
    }
    default: {
        /* the rest: status calls, refusals that must not end the library */
        CK_SLOT_ID ev;
        CK_BYTE bad_pin[8] = "9z9z9z9z";
        switch (below(7)) {
        case 0:
            printf("#%ld C_WaitForSlotEvent(CKF_DONT_BLOCK)", ++n_call);
            fflush(stdout);
            rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, one_in(4) ? NULL : &ev, NULL);
            break;
        case 1:
            printf("#%ld C_GetFunctionStatus(%lu)", ++n_call, h);
            fflush(stdout);
            rv = f->C_GetFunctionStatus(h);
            break;
        case 2:
            printf("#%ld C_CancelFunction(%lu)", ++n_call, h);
            fflush(stdout);
            rv = f->C_CancelFunction(h);
            break;
        case 3: {
            CK_C_INITIALIZE_ARGS ia;
            memset(&ia, 0, sizeof ia);
            ia.flags = any_ulong();
            printf("#%ld C_Initialize(again, flags 0x%lx)", ++n_call, ia.flags);
            fflush(stdout);
            rv = f->C_Initialize(one_in(2) ? NULL : &ia);
            break;
        }
        case 4:
            /* pReserved must be NULL: a library that finalizes anyway fails every later call */
            printf("#%ld C_Finalize(non-NULL)", ++n_call);
            fflush(stdout);
            rv = f->C_Finalize(bad_pin);
            break;
        case 5:
            printf("#%ld C_SetPIN(%lu, wrong old PIN)", ++n_call, h);
            fflush(stdout);
            rv = f->C_SetPIN(h, bad_pin, in_len(sizeof bad_pin), bad_pin, in_len(sizeof bad_pin));
            break;
        default: {
            CK_HA_STATUS st;
            unsigned long (*ha)(unsigned long, CK_HA_STATUS *) =
                (unsigned long (*)(unsigned long, CK_HA_STATUS *))dlsym(lib, "CA_GetHAState");
            CK_SLOT_ID s = any_slot();
            if (!ha)
                return;
            printf("#%ld CA_GetHAState(%lu)", ++n_call, s);
            fflush(stdout);
            rv = ha(s, one_in(4) ? NULL : &st);
        }
        }
    }
    }
    report(rv);
}

/* ---- absurd-length cases -------------------------------------------------------------- */

static CK_OBJECT_HANDLE rsa_priv, rsa_pub, cert, aes;

static CK_RV find1(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, CK_BYTE id, CK_OBJECT_HANDLE *o)
{
    CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_ID, &id, 1 } };
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(s, t, 2);
    if (rv != CKR_OK)
        return rv;
    rv = f->C_FindObjects(s, o, 1, &n);
    f->C_FindObjectsFinal(s);
    return rv != CKR_OK ? rv : n == 1 ? CKR_OK : CKR_OBJECT_HANDLE_INVALID;
}

/* Result of one case: rv, and the output's length and checksum (0 when there is none). */
struct out { CK_RV rv; CK_ULONG len, sum; };
static struct out res(CK_RV rv, CK_ULONG len, const void *p)
{
    struct out o = { rv, len, 0 };
    if (rv == CKR_OK && p && len <= OUT_SIZE)
        o.sum = sum(p, len);
    return o;
}

static CK_BYTE data32[32] = "p11ha: thirty-two bytes of data";

/*
 * class "same": legal for any module; the answer must equal SoftHSM's.
 * class "p11ha": legal only as p11ha's promise (see the top); the answer must be the one
 * p11ha documents (expect). Class "mech": the same, for mechanism parameters. Class "odd":
 * see the table. "-a all" runs the classes same and p11ha; the others run by name.
 */
static struct out c_sign_len(CK_SESSION_HANDLE s, CK_ULONG cap, int null_buf)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_SignInit(s, &m, rsa_priv);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = cap;
    rv = f->C_Sign(s, data32, sizeof data32, null_buf ? NULL : out_buf, &len);
    return res(rv, len, null_buf ? NULL : out_buf);
}
static struct out sign_sig_len_ulong_max(CK_SESSION_HANDLE s) { return c_sign_len(s, ULONG_MAX, 0); }
static struct out sign_sig_len_2p40(CK_SESSION_HANDLE s) { return c_sign_len(s, BIG, 0); }
static struct out sign_query_len_ulong_max(CK_SESSION_HANDLE s) { return c_sign_len(s, ULONG_MAX, 1); }

static struct out sign_final_sig_len_2p40(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_SignInit(s, &m, rsa_priv);
    if (rv == CKR_OK)
        rv = f->C_SignUpdate(s, data32, sizeof data32);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = BIG;
    rv = f->C_SignFinal(s, out_buf, &len);
    return res(rv, len, out_buf);
}

static struct out encrypt_out_len_2p40(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_AES_ECB, NULL, 0 };
    CK_RV rv = f->C_EncryptInit(s, &m, aes);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = BIG;
    rv = f->C_Encrypt(s, data32, sizeof data32, out_buf, &len);
    return res(rv, len, out_buf);
}

static struct out decrypt_out_len_ulong_max(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_AES_ECB, NULL, 0 };
    CK_BYTE ct[32];
    CK_ULONG len = sizeof ct;
    CK_RV rv = f->C_EncryptInit(s, &m, aes);
    if (rv == CKR_OK)
        rv = f->C_Encrypt(s, data32, sizeof data32, ct, &len);
    if (rv == CKR_OK)
        rv = f->C_DecryptInit(s, &m, aes);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    len = ULONG_MAX;
    rv = f->C_Decrypt(s, ct, sizeof ct, out_buf, &len);
    return res(rv, len, out_buf);
}

static struct out digest_out_len_ulong_max(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256, NULL, 0 };
    CK_RV rv = f->C_DigestInit(s, &m);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = ULONG_MAX;
    rv = f->C_Digest(s, data32, sizeof data32, out_buf, &len);
    return res(rv, len, out_buf);
}

static struct out getattr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
                          CK_ULONG cap, int null_buf)
{
    CK_ATTRIBUTE a = { t, null_buf ? NULL : out_buf, cap };
    CK_RV rv = f->C_GetAttributeValue(s, o, &a, 1);
    return res(rv, a.ulValueLen, null_buf ? NULL : out_buf);
}
static struct out getattr_value_len_2p40(CK_SESSION_HANDLE s) { return getattr(s, rsa_pub, CKA_MODULUS, BIG, 0); }
static struct out getattr_value_len_ulong_max(CK_SESSION_HANDLE s) { return getattr(s, cert, CKA_VALUE, ULONG_MAX, 0); }
static struct out getattr_query_len_2p40(CK_SESSION_HANDLE s) { return getattr(s, rsa_pub, CKA_MODULUS, BIG, 1); }

static struct out findobjects_max_2p40(CK_SESSION_HANDLE s)
{
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(s, NULL, 0);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    rv = f->C_FindObjects(s, found, BIG, &n);
    f->C_FindObjectsFinal(s);
    return res(rv, n, NULL);
}

static struct out getmechlist_count_2p40(CK_SESSION_HANDLE s)
{
    (void)s;
    CK_ULONG n = BIG;
    CK_RV rv = f->C_GetMechanismList(slot, mech_list, &n);
    /* only the answer is compared: p11-kit carries fewer mechanisms than SoftHSM has */
    return res(rv, 0, NULL);
}

static struct out getslotlist_count_2p40(CK_SESSION_HANDLE s)
{
    (void)s;
    CK_ULONG n = BIG;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, slot_list, &n);
    return res(rv, 0, NULL); /* slot sets differ: only the answer is compared */
}

static struct out login_pin(CK_SESSION_HANDLE s, CK_BYTE_PTR p, CK_ULONG n)
{
    f->C_Logout(s);
    CK_RV rv = f->C_Login(s, CKU_USER, p, n);
    /* log in again for what follows; an earlier case may have logged the token in already */
    f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    return res(rv, 0, NULL);
}
static struct out login_pin_len_2p62(CK_SESSION_HANDLE s) { return login_pin(s, (CK_BYTE_PTR)pin, (CK_ULONG)1 << 62); }
static struct out login_pin_len_5000(CK_SESSION_HANDLE s)
{
    memset(pin_buf, '1', sizeof pin_buf);
    return login_pin(s, pin_buf, sizeof pin_buf);
}

static struct out findinit_count_2p60(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = { CKA_CLASS, &cls, sizeof cls };
    CK_RV rv = f->C_FindObjectsInit(s, &t, (CK_ULONG)1 << 60);
    if (rv == CKR_OK)
        f->C_FindObjectsFinal(s);
    return res(rv, 0, NULL);
}

static struct out getattr_count_2p60(CK_SESSION_HANDLE s)
{
    CK_ATTRIBUTE a = { CKA_MODULUS, out_buf, OUT_SIZE };
    return res(f->C_GetAttributeValue(s, rsa_pub, &a, (CK_ULONG)1 << 60), 0, NULL);
}

static struct out getattr_count_0(CK_SESSION_HANDLE s)
{
    CK_ATTRIBUTE a = { CKA_MODULUS, out_buf, OVER_ISIZE };
    return res(f->C_GetAttributeValue(s, rsa_pub, &a, 0), 0, NULL);
}

static struct out getattr_cap_2p63(CK_SESSION_HANDLE s)
{
    CK_ATTRIBUTE a = { CKA_MODULUS, out_buf, OVER_ISIZE };
    return res(f->C_GetAttributeValue(s, rsa_pub, &a, 1), a.ulValueLen, out_buf);
}

/* Attribute values of a length their type cannot have: the member must say
   CKR_ATTRIBUTE_VALUE_INVALID (or similar), and nothing about the member is wrong. */
static struct out findinit_class_len_1(CK_SESSION_HANDLE s)
{
    CK_BYTE one = 3;
    CK_ATTRIBUTE t = { CKA_CLASS, &one, 1 };
    CK_RV rv = f->C_FindObjectsInit(s, &t, 1);
    if (rv == CKR_OK)
        f->C_FindObjectsFinal(s);
    return res(rv, 0, NULL);
}

static struct out create_token_len_8(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ULONG yes = 1;
    CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_TOKEN, &yes, sizeof yes } };
    CK_OBJECT_HANDLE o;
    CK_RV rv = f->C_CreateObject(s, t, 2, &o);
    if (rv == CKR_OK)
        f->C_DestroyObject(s, o);
    return res(rv, 0, NULL);
}

/* Empty data: legal; whatever the member answers, it is the caller's business */
static struct out sign_empty_data(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_SignInit(s, &m, rsa_priv);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = OUT_SIZE;
    rv = f->C_Sign(s, data32, 0, out_buf, &len);
    return res(rv, len, out_buf);
}

/* A capacity of 0 with a real buffer: CKR_BUFFER_TOO_SMALL and the length, from any module */
static struct out sign_cap_0(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_SignInit(s, &m, rsa_priv);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = 0;
    rv = f->C_Sign(s, data32, 7, out_buf, &len);
    return res(rv, len, NULL);
}

/* CKM_RSA_PKCS with a secret key: SoftHSM 2.6 accepts the C_SignInit and answers the C_Sign
   with CKR_GENERAL_ERROR. The caller's mistake; the member is fine. */
static struct out sign_rsa_pkcs_with_aes_key(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_SignInit(s, &m, aes);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = OUT_SIZE;
    rv = f->C_Sign(s, data32, sizeof data32, out_buf, &len);
    return res(rv, len, out_buf);
}

static struct out decrypt_empty_data(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_AES_ECB, NULL, 0 };
    CK_RV rv = f->C_DecryptInit(s, &m, aes);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = OUT_SIZE;
    rv = f->C_Decrypt(s, data32, 0, out_buf, &len);
    return res(rv, len, out_buf);
}

static struct out verify_empty(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_VerifyInit(s, &m, rsa_pub);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    return res(f->C_Verify(s, data32, 0, out_buf, 0), 0, NULL);
}

static struct out create_count_ulong_max(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t = { CKA_CLASS, &cls, sizeof cls };
    CK_OBJECT_HANDLE o;
    return res(f->C_CreateObject(s, &t, ULONG_MAX, &o), 0, NULL);
}

static struct out create_value_len_2p63(CK_SESSION_HANDLE s)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE t[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_LABEL, data32, OVER_ISIZE } };
    CK_OBJECT_HANDLE o;
    return res(f->C_CreateObject(s, t, 2, &o), 0, NULL);
}

static struct out sign_data_len_2p63(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_SignInit(s, &m, rsa_priv);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    CK_ULONG len = OUT_SIZE;
    return res(f->C_Sign(s, data32, OVER_ISIZE, out_buf, &len), 0, NULL);
}

static struct out verify_sig_len_2p63(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_RV rv = f->C_VerifyInit(s, &m, rsa_pub);
    if (rv != CKR_OK)
        return res(rv, 0, NULL);
    return res(f->C_Verify(s, data32, sizeof data32, out_buf, OVER_ISIZE), 0, NULL);
}

static struct out random_len_ulong_max(CK_SESSION_HANDLE s)
{
    return res(f->C_GenerateRandom(s, out_buf, ULONG_MAX), 0, NULL);
}

static struct out seed_len_2p63(CK_SESSION_HANDLE s)
{
    return res(f->C_SeedRandom(s, data32, OVER_ISIZE), 0, NULL);
}

static struct out mech_param_len_2p63(CK_SESSION_HANDLE s)
{
    CK_MECHANISM m = { CKM_SHA256_RSA_PKCS_PSS, &pss, OVER_ISIZE };
    return res(f->C_SignInit(s, &m, rsa_priv), 0, NULL);
}

static struct out gcm_iv_len_2p63(CK_SESSION_HANDLE s)
{
    CK_GCM_PARAMS g = { iv, OVER_ISIZE, 96, NULL, 0, 128 };
    CK_MECHANISM m = { CKM_AES_GCM, &g, sizeof g };
    return res(f->C_EncryptInit(s, &m, aes), 0, NULL);
}

static struct out gcm_null_iv_len_12(CK_SESSION_HANDLE s)
{
    CK_GCM_PARAMS g = { NULL, 12, 96, NULL, 0, 128 };
    CK_MECHANISM m = { CKM_AES_GCM, &g, sizeof g };
    return res(f->C_EncryptInit(s, &m, aes), 0, NULL);
}

static const struct {
    const char *name, *class;
    CK_RV expect; /* class p11ha: p11ha's documented answer */
    struct out (*run)(CK_SESSION_HANDLE);
} cases[] = {
    { "sign_sig_len_ulong_max", "same", 0, sign_sig_len_ulong_max },
    { "sign_sig_len_2p40", "same", 0, sign_sig_len_2p40 },
    { "sign_query_len_ulong_max", "same", 0, sign_query_len_ulong_max },
    { "sign_final_sig_len_2p40", "same", 0, sign_final_sig_len_2p40 },
    { "encrypt_out_len_2p40", "same", 0, encrypt_out_len_2p40 },
    { "decrypt_out_len_ulong_max", "same", 0, decrypt_out_len_ulong_max },
    { "digest_out_len_ulong_max", "same", 0, digest_out_len_ulong_max },
    { "getattr_value_len_2p40", "same", 0, getattr_value_len_2p40 },
    { "getattr_value_len_ulong_max", "same", 0, getattr_value_len_ulong_max },
    { "getattr_query_len_2p40", "same", 0, getattr_query_len_2p40 },
    { "findobjects_max_2p40", "same", 0, findobjects_max_2p40 },
    { "getmechlist_count_2p40", "same", 0, getmechlist_count_2p40 },
    { "getslotlist_count_2p40", "same", 0, getslotlist_count_2p40 },
    { "sign_empty_data", "same", 0, sign_empty_data },
    { "sign_cap_0", "same", 0, sign_cap_0 },
    { "decrypt_empty_data", "same", 0, decrypt_empty_data },
    { "verify_empty", "same", 0, verify_empty },
    { "getattr_cap_2p63", "same", 0, getattr_cap_2p63 },
    /* class odd: legal calls some member module answers oddly (p11-kit 0.24's client aborts on
       an empty template, says CKR_DEVICE_ERROR of a CK_ULONG attribute one byte long; SoftHSM
       says CKR_GENERAL_ERROR of a key of the wrong type): the member is fine, and must stay
       in the group */
    { "getattr_count_0", "odd", 0, getattr_count_0 },
    { "findinit_class_len_1", "odd", 0, findinit_class_len_1 },
    { "create_token_len_8", "odd", 0, create_token_len_8 },
    { "sign_rsa_pkcs_with_aes_key", "odd", 0, sign_rsa_pkcs_with_aes_key },
    /* refused unread, with what a token says of a PIN it cannot take (src/ffi/functions.rs) */
    { "login_pin_len_5000", "p11ha", CKR_PIN_INCORRECT, login_pin_len_5000 },
    { "login_pin_len_2p62", "p11ha", CKR_PIN_INCORRECT, login_pin_len_2p62 },
    { "findinit_count_2p60", "p11ha", CKR_ARGUMENTS_BAD, findinit_count_2p60 },
    { "getattr_count_2p60", "p11ha", CKR_ARGUMENTS_BAD, getattr_count_2p60 },
    { "create_count_ulong_max", "p11ha", CKR_ARGUMENTS_BAD, create_count_ulong_max },
    { "create_value_len_2p63", "p11ha", CKR_ARGUMENTS_BAD, create_value_len_2p63 },
    { "sign_data_len_2p63", "p11ha", CKR_ARGUMENTS_BAD, sign_data_len_2p63 },
    { "verify_sig_len_2p63", "p11ha", CKR_ARGUMENTS_BAD, verify_sig_len_2p63 },
    { "random_len_ulong_max", "p11ha", CKR_ARGUMENTS_BAD, random_len_ulong_max },
    { "seed_len_2p63", "p11ha", CKR_ARGUMENTS_BAD, seed_len_2p63 },
    /* class mech: the same promises for mechanism parameters and the buffers they point to
       (a NULL buffer with a length, passed on, crashes the member: SoftHSM reads it) */
    { "mech_param_len_2p63", "mech", CKR_ARGUMENTS_BAD, mech_param_len_2p63 },
    { "gcm_iv_len_2p63", "mech", CKR_ARGUMENTS_BAD, gcm_iv_len_2p63 },
    { "gcm_null_iv_len_12", "mech", CKR_ARGUMENTS_BAD, gcm_null_iv_len_12 },
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* One case on a fresh logged-in R/W session (closed after, ending whatever it left active). */
static int run_case(int k)
{
    CK_SESSION_HANDLE s;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "case %s: C_OpenSession: 0x%lx\n", cases[k].name, rv);
        return 2;
    }
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        fprintf(stderr, "case %s: C_Login: 0x%lx\n", cases[k].name, rv);
        return 2;
    }
    if ((rv = find1(s, CKO_PRIVATE_KEY, 1, &rsa_priv)) != CKR_OK ||
        (rv = find1(s, CKO_PUBLIC_KEY, 1, &rsa_pub)) != CKR_OK ||
        (rv = find1(s, CKO_CERTIFICATE, 1, &cert)) != CKR_OK ||
        (rv = find1(s, CKO_SECRET_KEY, 3, &aes)) != CKR_OK) {
        fprintf(stderr, "case %s: finding the keys: 0x%lx\n", cases[k].name, rv);
        return 2;
    }
    printf("case %s class=%s expect=0x%lx", cases[k].name, cases[k].class, cases[k].expect);
    fflush(stdout);
    struct out o = cases[k].run(s);
    printf(" rv=0x%lx len=%lu sum=%lu\n", o.rv, o.len, o.sum);
    fflush(stdout);
    f->C_CloseSession(s);
    return 0;
}

/* ---- set-up --------------------------------------------------------------------------- */

static void ha_state(void)
{
    CK_RV (*gs)(unsigned long, P11haGroupStatus *) =
        (CK_RV(*)(unsigned long, P11haGroupStatus *))dlsym(lib, "p11ha_group_status");
    if (!gs)
        return;
    P11haGroupStatus st;
    memset(&st, 0, sizeof st);
    CK_RV rv = gs(slot, &st);
    printf("status rv=0x%lx members=%lu\n", rv, st.member_count);
    for (unsigned long i = 0; rv == CKR_OK && i < st.member_count && i < P11HA_MAX_MEMBERS; i++)
        printf("member %s alive=%u last_error=0x%lx\n", st.members[i].serial,
               st.members[i].alive, st.members[i].last_error);
}

static void usage(void)
{
    fprintf(stderr, "usage: ffi_fuzz -m MODULE -t LABEL [-p PIN] [-P] [-H] "
                    "(-r SEED -c CALLS | -a CASE|all) | -L\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *module = NULL, *label = NULL, *only = NULL;
    unsigned long long seed = 0;
    long calls = -1;
    int opt, status = 0;
    while ((opt = getopt(argc, argv, "m:t:p:Pr:c:a:LH")) != -1) {
        switch (opt) {
        case 'm': module = optarg; break;
        case 't': label = optarg; break;
        case 'p': pin = optarg; break;
        case 'P': promises = 1; break;
        case 'r': seed = strtoull(optarg, NULL, 0); break;
        case 'c': calls = atol(optarg); break;
        case 'a': only = optarg; break;
        case 'H': status = watch_members = 1; break;
        case 'L':
            for (int k = 0; k < N_CASES; k++)
                printf("%s %s\n", cases[k].name, cases[k].class);
            return 0;
        default: usage();
        }
    }
    if (!module || !label || (calls < 0) == (only == NULL))
        usage();
    rng ^= seed * 0x9e3779b97f4a7c15ULL;
    if (!rng)
        rng = 1;

    lib = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", module, dlerror());
        return 2;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    if (!gfl || gfl(&f) != CKR_OK || !f) {
        fprintf(stderr, "C_GetFunctionList failed\n");
        return 2;
    }
    CK_C_INITIALIZE_ARGS ia;
    memset(&ia, 0, sizeof ia);
    ia.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_Initialize: 0x%lx\n", rv);
        return 2;
    }
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    int ok = 0;
    if (f->C_GetSlotList(CK_TRUE, slots, &n) == CKR_OK)
        for (CK_ULONG i = 0; i < n && !ok; i++) {
            CK_TOKEN_INFO ti;
            if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
                continue;
            size_t l = strlen(label);
            if (l <= 32 && memcmp(ti.label, label, l) == 0 &&
                (l == 32 || ti.label[l] == ' ')) {
                slot = slots[i];
                ok = 1;
            }
        }
    if (!ok) {
        fprintf(stderr, "no token labelled '%s'\n", label);
        return 2;
    }

    group_status = (CK_RV(*)(unsigned long, P11haGroupStatus *))dlsym(lib, "p11ha_group_status");
    memset(was_alive, 1, sizeof was_alive);
    if (only) {
        for (int k = 0; k < N_CASES; k++)
            if ((strcmp(only, "all") == 0 && (strcmp(cases[k].class, "same") == 0 ||
                                              strcmp(cases[k].class, "p11ha") == 0)) ||
                strcmp(only, cases[k].name) == 0) {
                if (run_case(k))
                    return 2;
                ok = 2;
            }
        if (ok != 2) {
            fprintf(stderr, "no case %s\n", only);
            return 2;
        }
    } else {
        /* a few sessions and the provisioned objects to start from */
        for (int i = 0; i < 3; i++) {
            CK_SESSION_HANDLE s;
            if (f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) ==
                CKR_OK)
                sessions[n_sessions++] = s;
        }
        if (n_sessions == 0) {
            fprintf(stderr, "no session\n");
            return 2;
        }
        f->C_Login(sessions[0], CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
        CK_ULONG got = 0;
        if (f->C_FindObjectsInit(sessions[0], NULL, 0) == CKR_OK) {
            f->C_FindObjects(sessions[0], found, 64, &got);
            f->C_FindObjectsFinal(sessions[0]);
        }
        for (CK_ULONG i = 0; i < got; i++)
            add_object(found[i]);
        while (n_call < calls)
            random_call();
    }
    if (status)
        ha_state();
    printf("done calls=%ld\n", n_call);
    fflush(stdout);
    /* no C_Finalize: the library must be whole after all of the above, which the caller
       judges from the HA state printed above and the HA log */
    return 0;
}
