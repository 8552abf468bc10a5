/* The one dispatch point: which instruction-set variant of the kernels runs.
 * Wheels are built for the baseline ISA; the faster variants are compiled
 * separately (-mavx2 -mf16c, -mavx512f, -mavx512bf16 for bfloat16's
 * rounding) and used only where the CPU has them. The
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
    &dn_bn_kernels_f16_portable, &dn_bn_kernels_bf16_portable,
    dn_keep_window_portable_fn, NULL, NULL, NULL, NULL, &dn_half_convert_portable,
    "portable", "portable", "portable", "portable",
};

#if defined(DN_HAVE_AVX2)
/* AVX2 with F16C (every AVX2 CPU made has it): the half types convert
 * with vcvtph2ps/vcvtps2ph (binary16) and AVX2 integer arithmetic
 * (bfloat16). */
static const dn_kernel_table dn_table_avx2 = {
    &dn_bn_kernels_f32_avx2, &dn_bn_kernels_f64_avx2,
    &dn_bn_kernels_f16_avx2, &dn_bn_kernels_bf16_avx2,
    dn_keep_window_avx2, dn_drop_windows_avx2_f32, dn_drop_windows_avx2_f64,
    dn_drop_windows_avx2_f16, dn_drop_windows_avx2_bf16, &dn_half_convert_avx2,
    "avx2", "avx2", "avx2", "avx2",
};
#endif

#if defined(DN_HAVE_AVX512) && defined(DN_HAVE_AVX2)
/* float and double batch norm: the AVX2 build's loops, with the
 * channels-last elementwise passes in 64-byte vectors (batchnorm_avx512.c;
 * an -mavx512f build of all the loops measured slower). The half types
 * stay on their AVX2 build. */
static const dn_kernel_table dn_table_avx512 = {
    &dn_bn_kernels_f32_avx512, &dn_bn_kernels_f64_avx512,
    &dn_bn_kernels_f16_avx2, &dn_bn_kernels_bf16_avx2,
    dn_keep_window_avx512, dn_drop_windows_avx512_f32, dn_drop_windows_avx512_f64,
    dn_drop_windows_avx512_f16, dn_drop_windows_avx512_bf16, &dn_half_convert_avx2,
    "avx512", "avx512", "avx512", "avx2",
};
#endif

#if defined(DN_HAVE_AVX512) && defined(DN_HAVE_AVX2) && defined(DN_HAVE_AVX512BF16)
/* The same, with bfloat16 rounded by AVX512-BF16's vcvtneps2bf16. */
static const dn_kernel_table dn_table_avx512_bf16 = {
    &dn_bn_kernels_f32_avx512, &dn_bn_kernels_f64_avx512,
    &dn_bn_kernels_f16_avx2, &dn_bn_kernels_bf16_avx512bf16,
    dn_keep_window_avx512, dn_drop_windows_avx512_f32, dn_drop_windows_avx512_f64,
    dn_drop_windows_avx512_f16, dn_drop_windows_avx512bf16_bf16, &dn_half_convert_avx512bf16,
    "avx512", "avx512", "avx512", "avx512bf16",
};
#endif

#if (defined(DN_HAVE_AVX2) || defined(DN_HAVE_AVX512)) && defined(__GNUC__)
#  include <cpuid.h>
#  define DN_CPU_HAS(feature) __builtin_cpu_supports(feature)
/* CPUID bits that not every compiler's __builtin_cpu_supports knows; the
 * OS's support of the registers they use comes with "avx2" and "avx512f"
 * (which check XCR0). */
static int dn_cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1u); /* CPUID.1:ECX.F16C */
}

static int dn_cpu_has_avx512bf16(void)
{
    unsigned a, b, c, d;
    /* CPUID.(7,0):EBX.AVX512DQ[17], .AVX512VL[31]; CPUID.(7,1):EAX.AVX512_BF16[5] */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((b >> 17) & 1u) || !((b >> 31) & 1u))
        return 0;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1u);
}
#else
#  define DN_CPU_HAS(feature) 0
#  define dn_cpu_has_f16c() 0
#  define dn_cpu_has_avx512bf16() 0
#endif

/* The fastest table this CPU runs, capped by DROPNORM_SIMD. */
static const dn_kernel_table *dn_pick_table(void)
{
    const char *cap = getenv("DROPNORM_SIMD");
    /* portable 0 < avx2 1 < avx512 2 < avx512 with AVX512-BF16 3 */
    int limit = 3;
    if (cap != NULL) {
        if (strcmp(cap, "portable") == 0) limit = 0;
        else if (strcmp(cap, "avx2") == 0) limit = 1;
        else if (strcmp(cap, "avx512") == 0) limit = 2;
    }
    (void)limit;
#if defined(DN_HAVE_AVX512) && defined(DN_HAVE_AVX2)
    if (limit >= 2 && DN_CPU_HAS("avx512f") && DN_CPU_HAS("avx2") && dn_cpu_has_f16c()) {
#  if defined(DN_HAVE_AVX512BF16)
        if (limit >= 3 && dn_cpu_has_avx512bf16()) return &dn_table_avx512_bf16;
#  endif
        return &dn_table_avx512;
    }
#endif
#if defined(DN_HAVE_AVX2)
    if (limit >= 1 && DN_CPU_HAS("avx2") && dn_cpu_has_f16c()) return &dn_table_avx2;
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

const char *dn_half_kernel_variant(void) { return dn_kernels()->half_variant; }
