/* Run-time choice of the instruction-set variant of the dropout kernels.
 * Wheels are built for the baseline ISA; the faster variants are compiled
 * separately (with -mavx2, -mavx512f) and used only where the CPU has them.
 * Nothing is cached: the check is cheap next to any kernel. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "keep_window.h"

static void dn_keep_window_portable_fn(const dn_philox_stream *ps, uint64_t block0,
                                       uint32_t *DN_RESTRICT keep, uint64_t *bits)
{
    dn_keep_window_portable(ps, block0, keep, bits);
}

#if (defined(DN_HAVE_AVX2) || defined(DN_HAVE_AVX512)) && defined(__GNUC__)
#  define DN_CPU_HAS(feature) __builtin_cpu_supports(feature)
#else
#  define DN_CPU_HAS(feature) 0
#endif

int dn_simd_level(void)
{
    /* the fastest allowed: "portable" < "avx2" < "avx512" */
    const char *cap = getenv("DROPNORM_SIMD");
    int limit = 2;
    if (cap != NULL) {
        if (strcmp(cap, "portable") == 0) limit = 0;
        else if (strcmp(cap, "avx2") == 0) limit = 1;
    }
    (void)limit;
#if defined(DN_HAVE_AVX512)
    if (limit >= 2 && DN_CPU_HAS("avx512f")) return 2;
#endif
#if defined(DN_HAVE_AVX2)
    if (limit >= 1 && DN_CPU_HAS("avx2")) return 1;
#endif
    return 0;
}

dn_keep_window_fn dn_select_keep_window(const char **name)
{
    switch (dn_simd_level()) {
#if defined(DN_HAVE_AVX512)
    case 2:
        if (name) *name = "avx512";
        return dn_keep_window_avx512;
#endif
#if defined(DN_HAVE_AVX2)
    case 1:
        if (name) *name = "avx2";
        return dn_keep_window_avx2;
#endif
    default:
        if (name) *name = "portable";
        return dn_keep_window_portable_fn;
    }
}

dn_drop_windows_fn_f32 dn_select_drop_windows_f32(void)
{
    const char *name = "portable";
    dn_select_keep_window(&name);
#if defined(DN_HAVE_AVX512)
    if (strcmp(name, "avx512") == 0) return dn_drop_windows_avx512_f32;
#endif
#if defined(DN_HAVE_AVX2)
    if (strcmp(name, "avx2") == 0) return dn_drop_windows_avx2_f32;
#endif
    return NULL;
}

dn_drop_windows_fn_f64 dn_select_drop_windows_f64(void)
{
    const char *name = "portable";
    dn_select_keep_window(&name);
#if defined(DN_HAVE_AVX512)
    if (strcmp(name, "avx512") == 0) return dn_drop_windows_avx512_f64;
#endif
#if defined(DN_HAVE_AVX2)
    if (strcmp(name, "avx2") == 0) return dn_drop_windows_avx2_f64;
#endif
    return NULL;
}

const char *dn_kernel_variant(void)
{
    const char *name = "portable";
    dn_select_keep_window(&name);
    return name;
}
