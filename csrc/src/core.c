/* Status text, version and thread control. */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L /* pthread_atfork under -std=c99 */
#endif
#include "common.h"

#if defined(_OPENMP) && !defined(_WIN32)
#  include <pthread.h>
#  define DN_FORK_GUARD 1
#endif

const char *dn_status_str(dn_status status)
{
    switch (status) {
    case DN_OK: return "success";
    case DN_ERR_NULL_POINTER: return "a required pointer is NULL";
    case DN_ERR_BAD_SHAPE: return "an extent is zero or negative";
    case DN_ERR_SIZE_OVERFLOW: return "the tensor size overflows the address space";
    case DN_ERR_BAD_LAYOUT: return "layout is not DN_LAYOUT_NCS or DN_LAYOUT_NSC";
    case DN_ERR_BAD_VALUE: return "an argument value is out of range or NaN";
    case DN_ERR_BATCH_TOO_SMALL: return "training statistics need at least 2 values per channel";
    case DN_ERR_OUT_OF_MEMORY: return "out of memory";
    case DN_ERR_BAD_MODE: return "mode is not a dn_dropout_mode value";
    }
    return "unknown status";
}

const char *dn_version(void) { return DN_VERSION_STRING; }

int dn_version_number(void) { return DN_VERSION_NUMBER; }

const char *dn_compiler(void)
{
#if defined(__clang__)
    return "Clang " __clang_version__;
#elif defined(__GNUC__)
    return "GCC " __VERSION__;
#elif defined(_MSC_VER)
#  define DN_STR2(x) #x
#  define DN_STR(x) DN_STR2(x)
    return "MSVC " DN_STR(_MSC_FULL_VER);
#else
    return "unknown C compiler";
#endif
}

int dn_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---- Fork safety. ---------------------------------------------------------
 * libgomp's thread pool does not survive fork(): the child inherits the
 * pool's bookkeeping but not its threads, and its first parallel region
 * waits forever for them. As PyTorch does, a child of fork() runs every
 * kernel on one thread (a team of one never touches the pool). Each copy
 * of the library (the Python extension modules each link one) registers
 * its handler when it is loaded, so a child is known as one whichever copy
 * started the parent's threads. */
#if defined(DN_FORK_GUARD)
static int dn_in_forked_child; /* set only in a child, before it runs anything */

static void dn_mark_forked_child(void) { dn_in_forked_child = 1; }

static void dn_register_fork_handler(void) { pthread_atfork(NULL, NULL, dn_mark_forked_child); }

static pthread_once_t dn_fork_handler_once = PTHREAD_ONCE_INIT;

#  if defined(__GNUC__)
__attribute__((constructor)) static void dn_fork_guard_at_load(void)
{
    pthread_once(&dn_fork_handler_once, dn_register_fork_handler);
}
#  endif
#endif

int dn_get_max_threads(void)
{
#ifdef _OPENMP
#  if defined(DN_FORK_GUARD)
    pthread_once(&dn_fork_handler_once, dn_register_fork_handler);
    if (dn_in_forked_child) return 1;
#  endif
    return omp_get_max_threads();
#else
    return 1;
#endif
}


dn_status dn_set_num_threads(int n)
{
    if (n < 1) return DN_ERR_BAD_VALUE;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    return DN_OK;
}
