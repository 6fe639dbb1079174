/*
 * ha_client: a plain C PKCS#11 application for p11ha tests.
 *
 * dlopens a module, C_Initialize with CKF_OS_LOCKING_OK, finds the token by label, logs in and
 * signs with CKM_SHA256_RSA_PKCS using the private key with CKA_ID 01, from N threads, for a
 * duration or a count, then prints "ok=<n> failed=<n>" (and one "rv 0x.. count" line per failing
 * return value).
 *
 * SIGPIPE keeps its DEFAULT action on purpose: if the module lets a SIGPIPE through when a
 * member dies, this process dies with it (shell exit status 141), which is what the tests look for.
 *
 * usage: ha_client -m MODULE -t LABEL [-p PIN] [-n THREADS] [-d SECONDS] [-c COUNT]
 *                  [-i IDLE_MS] [-q] [-T] [-l] [-S STOPFILE]
 *   -d  run for SECONDS (default 2); -c  stop each thread after COUNT signatures
 *   -i  sleep IDLE_MS between signatures (idle connections: the SIGPIPE case)
 *   -T  C_Initialize with CKF_LIBRARY_CANT_CREATE_OS_THREADS too (as p11-kit/GnuTLS do)
 *   -l  timeline on stdout, times in CLOCK_MONOTONIC seconds (the clock of every process):
 *       "F <thread> <start> <end> 0x<rv>" for each failed signature and
 *       "S <thread> <start> <end>" for the first one that succeeds after a failure
 *   -S  each thread also stops (before its next signature) once STOPFILE exists
 * Prints "READY" (flushed) after login, so a test can time a kill.
 * Exit: 0 no failed operation, 1 some failed, 2 set-up error.
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static double duration = 2.0;
static long count = -1;
static long idle_ms;
static int quiet;
static int no_threads;
static int timeline;
static const char *stop_file;

#define MAX_RV 64
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long total_ok, total_failed;
static struct { CK_RV rv; unsigned long n; } rvs[MAX_RV];
static int n_rvs;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record(CK_RV rv)
{
    pthread_mutex_lock(&stats_lock);
    if (rv == CKR_OK) {
        total_ok++;
    } else {
        int i;
        total_failed++;
        for (i = 0; i < n_rvs && rvs[i].rv != rv; i++)
            ;
        if (i == n_rvs && n_rvs < MAX_RV)
            rvs[n_rvs++].rv = rv;
        if (i < MAX_RV)
            rvs[i].n++;
    }
    pthread_mutex_unlock(&stats_lock);
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static CK_RV find_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *key)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_BYTE id[] = { 0x01 };
    CK_ATTRIBUTE tmpl[] = {
        { CKA_CLASS, &cls, sizeof cls },
        { CKA_ID, id, sizeof id },
    };
    CK_ULONG n = 0;
    CK_RV rv = f->C_FindObjectsInit(s, tmpl, 2);
    if (rv != CKR_OK)
        return rv;
    rv = f->C_FindObjects(s, key, 1, &n);
    f->C_FindObjectsFinal(s);
    if (rv == CKR_OK && n != 1)
        rv = CKR_KEY_HANDLE_INVALID;
    return rv;
}

static void *worker(void *arg)
{
    long idx = (long)arg;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key;
    CK_MECHANISM mech = { CKM_SHA256_RSA_PKCS, NULL, 0 };
    CK_BYTE data[64], sig[512];
    double end = now() + duration;
    long done = 0;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        fprintf(stderr, "thread %ld: C_OpenSession: 0x%lx\n", idx, rv);
        record(rv);
        return NULL;
    }
    rv = find_key(s, &key);
    if (rv != CKR_OK) {
        fprintf(stderr, "thread %ld: find key id 01: 0x%lx\n", idx, rv);
        record(rv);
        return NULL;
    }
    memset(data, (int)idx, sizeof data);
    int failing = 0;
    while (now() < end && (count < 0 || done < count)) {
        CK_ULONG len = sizeof sig;
        if (stop_file && access(stop_file, F_OK) == 0)
            break;
        double t_start = now();
        rv = f->C_SignInit(s, &mech, key);
        if (rv == CKR_OK)
            rv = f->C_Sign(s, data, sizeof data, sig, &len);
        record(rv);
        done++;
        if (timeline && rv != CKR_OK)
            printf("F %ld %.6f %.6f 0x%lx\n", idx, t_start, now(), rv);
        else if (timeline && failing)
            printf("S %ld %.6f %.6f\n", idx, t_start, now());
        failing = rv != CKR_OK;
        if (rv != CKR_OK && !quiet)
            fprintf(stderr, "thread %ld: sign #%ld: rv 0x%lx\n", idx, done, rv);
        if (idle_ms > 0)
            sleep_ms(idle_ms);
        else if (rv != CKR_OK)
            sleep_ms(1); /* do not spin on a dead member */
    }
    f->C_CloseSession(s);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: ha_client -m MODULE -t LABEL [-p PIN] [-n THREADS] [-d SECONDS] "
                    "[-c COUNT] [-i IDLE_MS] [-q] [-T] [-l] [-S STOPFILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *module = NULL, *label = NULL, *pin = "1234";
    long threads = 1;
    int opt;
    while ((opt = getopt(argc, argv, "m:t:p:n:d:c:i:qTlS:")) != -1) {
        switch (opt) {
        case 'm': module = optarg; break;
        case 't': label = optarg; break;
        case 'p': pin = optarg; break;
        case 'n': threads = atol(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'c': count = atol(optarg); break;
        case 'i': idle_ms = atol(optarg); break;
        case 'q': quiet = 1; break;
        case 'T': no_threads = 1; break;
        case 'l': timeline = 1; break;
        case 'S': stop_file = optarg; break;
        default: usage();
        }
    }
    if (!module || !label || threads < 1 || threads > 256)
        usage();

    void *h = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", module, dlerror());
        return 2;
    }
    CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (!gfl || gfl(&f) != CKR_OK || !f) {
        fprintf(stderr, "C_GetFunctionList failed\n");
        return 2;
    }
    CK_C_INITIALIZE_ARGS ia;
    memset(&ia, 0, sizeof ia);
    ia.flags = CKF_OS_LOCKING_OK | (no_threads ? CKF_LIBRARY_CANT_CREATE_OS_THREADS : 0);
    CK_RV rv = f->C_Initialize(&ia);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_Initialize: 0x%lx\n", rv);
        return 2;
    }

    CK_SLOT_ID slots[64];
    CK_ULONG n = 64, i;
    int found = 0;
    rv = f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_GetSlotList: 0x%lx\n", rv);
        return 2;
    }
    for (i = 0; i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        char lbl[33];
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue;
        memcpy(lbl, ti.label, 32);
        lbl[32] = 0;
        for (int k = 31; k >= 0 && lbl[k] == ' '; k--)
            lbl[k] = 0;
        if (strcmp(lbl, label) == 0) {
            slot = slots[i];
            found = 1;
        }
    }
    if (!found) {
        fprintf(stderr, "no token labelled '%s' among %lu slots\n", label, n);
        return 2;
    }

    CK_SESSION_HANDLE login_s;
    rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &login_s);
    if (rv == CKR_OK)
        rv = f->C_Login(login_s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        fprintf(stderr, "open session / C_Login: 0x%lx\n", rv);
        return 2;
    }
    printf("READY slot=%lu threads=%ld\n", (unsigned long)slot, threads);
    fflush(stdout);

    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    double t0 = now();
    for (long t = 0; t < threads; t++)
        if (pthread_create(&tids[t], NULL, worker, (void *)t) != 0) {
            fprintf(stderr, "pthread_create failed\n");
            return 2;
        }
    for (long t = 0; t < threads; t++)
        pthread_join(tids[t], NULL);
    double el = now() - t0;
    free(tids);

    f->C_CloseSession(login_s);
    rv = f->C_Finalize(NULL);
    printf("ok=%lu failed=%lu elapsed=%.2f finalize=0x%lx\n", total_ok, total_failed, el, rv);
    for (int k = 0; k < n_rvs; k++)
        printf("rv 0x%lx count %lu\n", rvs[k].rv, rvs[k].n);
    fflush(stdout);
    /* no dlclose: modules with threads do not always unload cleanly */
    return total_failed ? 1 : 0;
}
