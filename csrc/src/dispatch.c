/* The one dispatch point: which instruction-set variant of the kernels runs.
 * Wheels are built for the baseline ISA; the faster variants are compiled
 * separately (-mavx2, -mavx512f) and used only where the CPU has them. The
 * choice is made once, on the first kernel call, from the CPU and the
 * environment variable DROPNORM_SIMD, and kept for the life of the process
 * (zstd's and numpy's way): a table of function pointers, published with
 * one atomic store. Two threads that race to make it pick the same table. */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static void dn_keep_window_portable_fn(const dn_philox_stream *ps, uint64_t block0,
                                       uint32_t *DN_RESTRICT keep, uint64_t *bits)
{
    dn_keep_window_portable(ps, block0, keep, bits);
}

static const dn_kernel_table dn_table_portable = {
    &dn_bn_kernels_f32_portable, &dn_bn_kernels_f64_portable,
    dn_keep_window_portable_fn, NULL, NULL,
    "portable", "portable", "portable",
};

#if defined(DN_HAVE_AVX2)
static const dn_kernel_table dn_table_avx2 = {
    &dn_bn_kernels_f32_avx2, &dn_bn_kernels_f64_avx2,
    dn_keep_window_avx2, dn_drop_windows_avx2_f32, dn_drop_windows_avx2_f64,
    "avx2", "avx2", "avx2",
};
#endif

#if defined(DN_HAVE_AVX512) && defined(DN_HAVE_AVX2)
/* The batch-norm loops stay on their AVX2 build: an -mavx512f build of them
 * measured slower here than either. */
static const dn_kernel_table dn_table_avx512 = {
    &dn_bn_kernels_f32_avx2, &dn_bn_kernels_f64_avx2,
    dn_keep_window_avx512, dn_drop_windows_avx512_f32, dn_drop_windows_avx512_f64,
    "avx512", "avx2", "avx512",
};
#endif

#if (defined(DN_HAVE_AVX2) || defined(DN_HAVE_AVX512)) && defined(__GNUC__)
#  define DN_CPU_HAS(feature) __builtin_cpu_supports(feature)
#else
#  define DN_CPU_HAS(feature) 0
#endif

/* The fastest table this CPU runs, capped by DROPNORM_SIMD. */
static const dn_kernel_table *dn_pick_table(void)
{
    const char *cap = getenv("DROPNORM_SIMD");
    int limit = 2; /* portable 0 < avx2 1 < avx512 2 */
    if (cap != NULL) {
        if (strcmp(cap, "portable") == 0) limit = 0;
        else if (strcmp(cap, "avx2") == 0) limit = 1;
    }
    (void)limit;
#if defined(DN_HAVE_AVX512) && defined(DN_HAVE_AVX2)
    if (limit >= 2 && DN_CPU_HAS("avx512f") && DN_CPU_HAS("avx2")) return &dn_table_avx512;
#endif
#if defined(DN_HAVE_AVX2)
    if (limit >= 1 && DN_CPU_HAS("avx2")) return &dn_table_avx2;
#endif
    return &dn_table_portable;
}

static const dn_kernel_table *dn_active_table;

const dn_kernel_table *dn_kernels(void)
{
#if defined(__GNUC__)
    const dn_kernel_table *t = __atomic_load_n(&dn_active_table, __ATOMIC_ACQUIRE);
    if (t == NULL) {
        t = dn_pick_table();
        __atomic_store_n(&dn_active_table, t, __ATOMIC_RELEASE);
    }
    return t;
#else
    /* MSVC: aligned pointer loads and stores are atomic, and volatile ones
     * have acquire/release order (/volatile:ms, the x86-64 default) */
    const dn_kernel_table *volatile *slot = (const dn_kernel_table *volatile *)&dn_active_table;
    const dn_kernel_table *t = *slot;
    if (t == NULL) {
        t = dn_pick_table();
        *slot = t;
    }
    return t;
#endif
}

const char *dn_kernel_variant(void) { return dn_kernels()->level; }

const char *dn_batchnorm_kernel_variant(void) { return dn_kernels()->batchnorm_variant; }

const char *dn_dropout_kernel_variant(void) { return dn_kernels()->dropout_variant; }
