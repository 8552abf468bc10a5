/* Every instruction-set variant of the keep window gives the portable
 * variant's bits, also where the low counter word wraps into the high one
 * (block indices near 2^32, i.e. tensors of 2^34 elements and more). */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "check.h"

#if defined(__GNUC__) && (defined(DN_HAVE_AVX2) || defined(DN_HAVE_AVX512))
#  define CPU_HAS(feature) __builtin_cpu_supports(feature)
#else
#  define CPU_HAS(feature) 0
#endif

static void compare(dn_keep_window_fn fn, const char *name)
{
    static const uint64_t starts[] = {0, 16, 1000, 0xFFFFFFF8ULL, 0xFFFFFFF0ULL + 9,
                                      0x100000000ULL - 3, 0x7FFFFFFFFFFFFFF0ULL};
    static const uint32_t thresholds[] = {1, 0x80000000u, 0xFFFFFFFFu, 0x19999999u};
    dn_philox_stream ps = {0x12345678u, 0x9abcdef0u, 7u, 0x80000001u, 0};
    uint32_t want[DN_WIN], got[DN_WIN];
    uint64_t want_bits, got_bits, unpacked;
    int mismatches = 0;
    for (size_t i = 0; i < sizeof starts / sizeof starts[0]; i++)
        for (size_t t = 0; t < sizeof thresholds / sizeof thresholds[0]; t++) {
            ps.thr = thresholds[t];
            dn_keep_window_portable(&ps, starts[i], want, &want_bits);
            fn(&ps, starts[i], got, &got_bits);
            mismatches += memcmp(want, got, sizeof want) != 0 || want_bits != got_bits;
            unpacked = 0;
            for (int j = 0; j < DN_WIN; j++) unpacked |= (uint64_t)want[j] << j;
            CHECK(unpacked == want_bits);
            fn(&ps, starts[i], got, NULL); /* bits are optional */
            mismatches += memcmp(want, got, sizeof want) != 0;
        }
    printf("%s: %d mismatching windows\n", name, mismatches);
    CHECK(mismatches == 0);
}

/* The fused windows: y = keep ? x*scale : +0, the bits as the keep window's,
 * NaN and inf dropped to +0, in place too; three windows, so that a pair
 * and a single one both run, the first across the counter carry at 2^32. */
#define NW 3
static void compare_fused(dn_drop_windows_fn_f32 f32, dn_drop_windows_fn_f64 f64,
                          const char *name)
{
    dn_philox_stream ps = {0xdeadbeefu, 3u, 11u, 0u, 0x66666666u};
    const uint64_t block0 = 0xFFFFFFF9ULL;
    uint32_t keep[NW * DN_WIN];
    uint64_t want_bits[NW], bits32[NW], bits64[NW];
    float xf[NW * DN_WIN], yf[NW * DN_WIN];
    double xd[NW * DN_WIN], yd[NW * DN_WIN];
    int bad = 0;
    for (int i = 0; i < NW * DN_WIN; i++) {
        xf[i] = (float)(i - 20) * 0.37f;
        xd[i] = (double)(i - 20) * 0.37;
    }
    xf[5] = NAN;
    xd[6] = INFINITY;
    xf[DN_WIN + 7] = -INFINITY;
    for (int w = 0; w < NW; w++)
        dn_keep_window_portable(&ps, block0 + (uint64_t)(w * DN_WIN_BLOCKS), keep + w * DN_WIN,
                                &want_bits[w]);
    for (int mul = 0; mul < 2; mul++) {
        f32(&ps, block0, NW, xf, yf, 1.25f, mul, bits32);
        f64(&ps, block0, NW, xd, yd, 1.25, mul, bits64);
        for (int w = 0; w < NW; w++)
            bad += bits32[w] != want_bits[w] || bits64[w] != want_bits[w];
        for (int i = 0; i < NW * DN_WIN; i++) {
            const float ef = keep[i] ? (mul ? xf[i] * 1.25f : xf[i]) : 0.0f;
            const double ed = keep[i] ? (mul ? xd[i] * 1.25 : xd[i]) : 0.0;
            bad += memcmp(&yf[i], &ef, sizeof ef) != 0 && !(isnan(yf[i]) && isnan(ef));
            bad += memcmp(&yd[i], &ed, sizeof ed) != 0 && !(isnan(yd[i]) && isnan(ed));
        }
    }
    memcpy(yf, xf, sizeof xf);
    f32(&ps, block0, NW, yf, yf, 2.0f, 1, NULL); /* in place */
    for (int i = 0; i < NW * DN_WIN; i++) {
        const float ef = keep[i] ? xf[i] * 2.0f : 0.0f;
        bad += memcmp(&yf[i], &ef, sizeof ef) != 0 && !(isnan(yf[i]) && isnan(ef));
    }
    printf("%s fused: %d mismatches\n", name, bad);
    CHECK(bad == 0);
}

int main(void)
{
    const dn_kernel_table *table = dn_kernels();
    const char *name = table->dropout_variant;
    dn_keep_window_fn best = table->keep_window;
    uint32_t keep[DN_WIN];
    dn_philox_stream ps = {0, 0, 0, 0, 0x80000000u};
    int kept = 0;
    CHECK(best != NULL && name != NULL);
    compare(best, name);
#if defined(DN_HAVE_AVX2)
    if (CPU_HAS("avx2")) {
        compare(dn_keep_window_avx2, "avx2");
        compare_fused(dn_drop_windows_avx2_f32, dn_drop_windows_avx2_f64, "avx2");
    }
#endif
#if defined(DN_HAVE_AVX512)
    if (CPU_HAS("avx512f")) {
        compare(dn_keep_window_avx512, "avx512");
        compare_fused(dn_drop_windows_avx512_f32, dn_drop_windows_avx512_f64, "avx512");
    }
#endif
    CHECK((table->drop_windows_f32 == NULL) == (strcmp(name, "portable") == 0));
    CHECK((table->drop_windows_f64 == NULL) == (strcmp(name, "portable") == 0));
    /* one table for the process: later calls return the same */
    CHECK(dn_kernels() == table);
    CHECK(strcmp(dn_kernel_variant(), table->level) == 0);
    CHECK(strcmp(dn_dropout_kernel_variant(), name) == 0);
    CHECK(strcmp(dn_batchnorm_kernel_variant(), table->batchnorm_variant) == 0);
    /* known answer: block 0 of key 0, stream 0 is 6627e8d5 e169c58d bc57ac4c 9b00dbd8;
     * against threshold 2^31, words 0..3 give keep 0, 1, 1, 1 */
    best(&ps, 0, keep, NULL);
    CHECK(keep[0] == 0 && keep[1] == 1 && keep[2] == 1 && keep[3] == 1);
    for (int i = 0; i < DN_WIN; i++) kept += (int)keep[i];
    CHECK(kept > 16 && kept < 48);
    return check_report("test_keep_window");
}
