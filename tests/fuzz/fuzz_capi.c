/* A fuzz target for the whole C API: every dn_* entry point with arbitrary
 * extents, layouts, modes, flags, scalars (NaN, inf, negative, huge) and
 * NULL pointers, decoded from the input bytes. Properties: no crash and no
 * sanitizer report; every status is a dn_status; a call that fails writes
 * nothing (outputs are filled with a sentinel and checked). One op byte in
 * four (bits 5 and 6 set) calls the _f16 (even op) or _bf16 (odd op)
 * variant of a tensor function instead (half_call). Ops 18 and 19 are the
 * fused blocks (f32, f64; f16, bf16 in half_call), training picking the
 * function: 0 the training forward, 1 inference, 2 the backward; the
 * activation is decoded as a mode (0, 1 or any int), p is b.
 *
 * Built two ways (CMakeLists.txt):
 *   - with clang -fsanitize=fuzzer (DN_LIBFUZZER): a libFuzzer target, run
 *     by .ci/run for a bounded time from tests/fuzz/corpus;
 *   - otherwise a plain driver: fuzz_capi [-n COUNT] [FILE or DIR ...] runs
 *     the files, then COUNT inputs from a fixed-seed generator (ctest). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dropnorm/dropnorm.h"

/* ---- Reading the input. ---------------------------------------------------- */

typedef struct reader {
    const uint8_t *p;
    size_t left;
} reader;

static uint64_t take(reader *r, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v |= (uint64_t)(r->left ? *r->p : 0) << (8 * i);
        if (r->left) {
            r->p++;
            r->left--;
        }
    }
    return v;
}

/* An extent: mostly small, sometimes 0, negative or huge. */
static int64_t take_extent(reader *r)
{
    const unsigned kind = (unsigned)take(r, 1);
    if (kind < 200) return 1 + (int64_t)(take(r, 1) % 24);
    if (kind < 210) return 0;
    if (kind < 220) return -(int64_t)take(r, 2) - 1;
    if (kind < 235) return (int64_t)(take(r, 8) >> 1);
    return (int64_t)1 << (take(r, 1) % 63);
}

/* A double: mostly in range for p, eps and momentum, sometimes anything. */
static double take_real(reader *r)
{
    const unsigned kind = (unsigned)take(r, 1);
    const uint64_t bits = take(r, 8);
    double v;
    if (kind < 180) return (double)(bits % 1001) / 1000.0;
    if (kind < 190) return kind % 2 ? NAN : INFINITY;
    if (kind < 200) return -(double)(bits % 1000) / 100.0;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static int take_enum(reader *r)
{
    const unsigned kind = (unsigned)take(r, 1);
    if (kind < 220) return (int)(kind % 2);
    return (int)(int32_t)take(r, 4);
}

/* ---- Buffers with a sentinel: what an error must leave alone. ------------- */

#define SENTINEL 0xA5

typedef struct buffer {
    unsigned char *bytes;
    size_t size;
} buffer;

static buffer make(size_t size, reader *r, int fill_from_input)
{
    buffer b;
    b.size = size;
    b.bytes = (unsigned char *)malloc(size ? size : 1);
    if (b.bytes == NULL) abort();
    for (size_t i = 0; i < size; i++)
        b.bytes[i] = fill_from_input ? (unsigned char)take(r, 1) : SENTINEL;
    return b;
}

static int untouched(const buffer *b)
{
    for (size_t i = 0; i < b->size; i++)
        if (b->bytes[i] != SENTINEL) return 0;
    return 1;
}

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_capi: property failed: %s\n", what);
        abort();
    }
}

static void check_status(dn_status st)
{
    check(st >= DN_OK && st <= DN_ERR_BAD_MODE, "the status is a dn_status");
    check(dn_status_str(st) != NULL, "dn_status_str gives text");
}

/* ---- One input: one call. -------------------------------------------------- */

#define SMALL_TOTAL (1 << 14)

/* The arguments of one call, decoded. */
typedef struct call {
    int64_t n, c, s, count;
    dn_layout layout;
    int channelwise, training, small;
    dn_dropout_mode mode;
    double a, b;
    uint64_t seed, stream, offset;
    unsigned nulls;
} call;

/* The _f16 (even op) and _bf16 (odd op) variants of the tensor functions:
 * uint16_t tensors, float per-channel arrays; the same NULL rules as the
 * float calls below. */
static dn_status half_call(unsigned op, const call *k, buffer *in1, buffer *in2, buffer *v1,
                           buffer *v2, buffer *v3, buffer *mask_in, buffer *out, buffer *o1,
                           buffer *o2, buffer *o3, buffer *o4, buffer *mask_out, buffer *parts,
                           buffer *sums, buffer *out2)
{
    const int bf = op % 2;
    const int64_t n = k->n, c = k->c, s = k->s;
    const unsigned nulls = k->nulls;
#define HARG(i, buf) ((nulls >> (i)) & 1u || (!k->small && (i) <= 1) ? NULL : (void *)(buf)->bytes)
#define HSARG(i, buf) ((nulls >> (i)) & 1u || !k->small ? NULL : (void *)(buf)->bytes)
    switch (op / 2) {
    case 0:
        return (bf ? dn_batchnorm_forward_train_bf16 : dn_batchnorm_forward_train_f16)(
            n, c, s, k->layout, HARG(0, in1), HARG(2, v1), HARG(3, v2), k->a, k->b, HARG(4, o1),
            HARG(5, o2), HARG(1, out), HARG(6, o3), HARG(7, v3));
    case 1:
        return (bf ? dn_batchnorm_forward_infer_bf16 : dn_batchnorm_forward_infer_f16)(
            n, c, s, k->layout, HARG(0, in1), HARG(2, v1), HARG(3, v2), HARG(4, v3), HARG(5, v3),
            k->a, HARG(1, out));
    case 2:
        return (bf ? dn_batchnorm_backward_bf16 : dn_batchnorm_backward_f16)(
            n, c, s, k->layout, HARG(0, in1), HARG(1, in2), HARG(2, v1), HARG(3, v2), HARG(4, v3),
            HARG(5, out), HARG(6, o1), HARG(7, o2));
    case 3:
        return (bf ? dn_batchnorm_backward_infer_bf16 : dn_batchnorm_backward_infer_f16)(
            n, c, s, k->layout, HARG(0, in1), HARG(1, in2), HARG(2, v1), HARG(3, v2), HARG(4, v3),
            k->a, HARG(5, out), HARG(6, o1), HARG(7, o2));
    case 4:
        return (bf ? dn_dropout_forward_bf16 : dn_dropout_forward_f16)(
            n, c, s, k->layout, k->channelwise, HARG(0, in1), k->a, k->seed, k->stream, k->mode,
            k->training, HARG(1, out), HARG(2, mask_out));
    case 5:
        return (bf ? dn_dropout_apply_mask_bf16 : dn_dropout_apply_mask_f16)(
            n, c, s, k->layout, k->channelwise, HARG(0, in1), HARG(2, mask_in), k->a, k->mode,
            HARG(1, out));
    case 6:
        return (bf ? dn_dropout_backward_bf16 : dn_dropout_backward_f16)(
            n, c, s, k->layout, k->channelwise, HARG(0, in1), k->a, k->seed, k->stream, k->mode,
            HARG(2, mask_in), HARG(1, out));
    case 10:
        return (bf ? dn_batchnorm_partial_stats_bf16 : dn_batchnorm_partial_stats_f16)(
            n, c, s, k->layout, HSARG(0, in1), HSARG(1, sums));
    case 11: {
        const double *pd = (const double *)HSARG(2, parts);
        return (bf ? dn_batchnorm_forward_apply_bf16 : dn_batchnorm_forward_apply_f16)(
            n, c, s, k->layout, HSARG(0, in1), pd, pd ? pd + c : NULL,
            pd && HSARG(3, parts) ? pd + 2 * c : NULL, HSARG(4, v1), HSARG(5, v2), k->a, k->b,
            HSARG(6, o1), HSARG(7, o2), HSARG(1, out), HSARG(8, o3), HSARG(9, o4));
    }
    case 12:
        return (bf ? dn_batchnorm_backward_reduce_bf16 : dn_batchnorm_backward_reduce_f16)(
            n, c, s, k->layout, HSARG(0, in1), HSARG(2, in2), HSARG(3, v1), HSARG(1, sums));
    case 13:
        return (bf ? dn_batchnorm_backward_apply_bf16 : dn_batchnorm_backward_apply_f16)(
            n, c, s, k->layout, HSARG(0, in1), HSARG(2, in2), HSARG(3, v1), HSARG(4, v2),
            HSARG(5, v3), HSARG(6, parts), k->count, HSARG(7, parts), HSARG(1, out),
            HSARG(8, o1), HSARG(9, o2));
    case 14:
        return (bf ? dn_dropout_forward_offset_bf16 : dn_dropout_forward_offset_f16)(
            n, c, s, k->layout, k->channelwise, HARG(0, in1), k->a, k->seed, k->stream, k->offset,
            k->mode, k->training, HARG(1, out), HARG(2, mask_out));
    case 15:
        return (bf ? dn_dropout_backward_offset_bf16 : dn_dropout_backward_offset_f16)(
            n, c, s, k->layout, k->channelwise, HARG(0, in1), k->a, k->seed, k->stream, k->offset,
            k->mode, HARG(2, mask_in), HARG(1, out));
    case 9: /* the fused blocks; the extra tensors only for small extents */
        if (k->training == 0)
            return (bf ? dn_batchnorm_forward_train_fused_bf16
                       : dn_batchnorm_forward_train_fused_f16)(
                n, c, s, k->layout, HARG(0, in1), HSARG(8, in2), HARG(2, v1), HARG(3, v2), k->a,
                0.1, HARG(4, o1), HARG(5, o2), (dn_activation)k->mode, k->b, k->seed, k->stream,
                HARG(1, out), HARG(6, o3), HARG(7, o4), HSARG(9, mask_out));
        if (k->training == 1)
            return (bf ? dn_batchnorm_forward_infer_fused_bf16
                       : dn_batchnorm_forward_infer_fused_f16)(
                n, c, s, k->layout, HARG(0, in1), HSARG(8, in2), HARG(2, v1), HARG(3, v2),
                HARG(4, v3), HARG(5, v3), k->a, (dn_activation)k->mode, HARG(1, out));
        return (bf ? dn_batchnorm_backward_fused_bf16 : dn_batchnorm_backward_fused_f16)(
            n, c, s, k->layout, HARG(0, in1), HARG(1, in2), HSARG(8, in1), HSARG(9, mask_in),
            HARG(2, v1), HARG(3, v2), HARG(4, v3), (dn_activation)k->mode, k->b, k->seed,
            k->stream, HARG(5, out), HARG(6, o1), HARG(7, o2), HSARG(10, out2));
    default:
        return dn_half_kernel_variant() != NULL ? DN_OK : DN_ERR_BAD_VALUE;
    }
#undef HARG
#undef HSARG
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size};
    const unsigned op_byte = (unsigned)take(&r, 1);
    const unsigned op = op_byte % 32;
    /* one op byte in four calls a half type's variant (half_call) */
    const int half = ((op_byte >> 5) & 3u) == 3u;
    const int64_t n = take_extent(&r), c = take_extent(&r), s = take_extent(&r);
    const dn_layout layout = (dn_layout)take_enum(&r);
    const int channelwise = (int)(take(&r, 1) % 3) - (take(&r, 1) == 255); /* -1, 0, 1, 2 */
    const dn_dropout_mode mode = (dn_dropout_mode)take_enum(&r);
    const int training = (int)(take(&r, 1) % 3);
    const double a = take_real(&r), b = take_real(&r);
    const uint64_t seed = take(&r, 8), stream = take(&r, 8), offset = take(&r, 8);
    /* shards: a count of values per channel, the number of shards merged */
    const int64_t count = (int64_t)take(&r, 8) >> (take(&r, 1) % 64);
    const int64_t shards = 1 + (int64_t)(take(&r, 1) % 4);
    /* bit k: argument k is NULL (each about one time in eight) */
    const unsigned nulls = (unsigned)(take(&r, 2) & take(&r, 2) & take(&r, 2));
    /* real buffers only for small valid extents; otherwise the tensors are
     * NULL, so that a call the extents allow fails before reading memory */
    const int small = n >= 0 && c >= 1 && s >= 1 && n <= SMALL_TOTAL && c <= SMALL_TOTAL
                      && s <= SMALL_TOTAL && n * c * s <= SMALL_TOTAL;
    const size_t total = small ? (size_t)(n * c * s) : 1, chans = small ? (size_t)c : 1;
    /* tensors and per-channel arrays: float, double, or (half) uint16_t and float */
    const size_t esize = half ? sizeof(uint16_t) : (op % 2) ? sizeof(double) : sizeof(float);
    const size_t csize = half ? sizeof(float) : esize;
    const size_t mask_bytes = (total + 7) / 8;
    buffer in1 = make(total * esize, &r, 1), in2 = make(total * esize, &r, 1);
    buffer v1 = make(chans * csize, &r, 1), v2 = make(chans * csize, &r, 1);
    buffer v3 = make(chans * csize, &r, 1), mask_in = make(mask_bytes, &r, 1);
    buffer out = make(total * esize, &r, 0), o1 = make(chans * csize, &r, 0);
    buffer o2 = make(chans * csize, &r, 0), o3 = make(chans * csize, &r, 0);
    buffer mask_out = make(mask_bytes, &r, 0), o4 = make(chans * csize, &r, 0);
    /* per-channel partials in double: read (shards of 3*c), written (3*c) */
    buffer parts = make(4 * 3 * chans * sizeof(double), &r, 1);
    buffer sums = make(3 * chans * sizeof(double), &r, 0);
    /* the fused backward's d_residual */
    buffer out2 = make(total * esize, &r, 0);
    dn_status st = DN_OK;
#define ARG(k, buf) ((nulls >> (k)) & 1u || (!small && (k) <= 1) ? NULL : (void *)(buf).bytes)
/* the shard functions accept NULL tensors for n == 0: every array is NULL
 * unless the extents are small, so that none is read past its buffer */
#define SARG(k, buf) ((nulls >> (k)) & 1u || !small ? NULL : (void *)(buf).bytes)
    if (half) {
        const call k = {n, c, s, count, layout, channelwise, training, small, mode, a, b,
                        seed, stream, offset, nulls};
        st = half_call(op, &k, &in1, &in2, &v1, &v2, &v3, &mask_in, &out, &o1, &o2, &o3, &o4,
                       &mask_out, &parts, &sums, &out2);
    } else switch (op) {
    case 0: case 1:
        st = op ? dn_batchnorm_forward_train_f64(n, c, s, layout, ARG(0, in1), ARG(2, v1),
                                                 ARG(3, v2), a, b, ARG(4, o1), ARG(5, o2),
                                                 ARG(1, out), ARG(6, o3), ARG(7, v3))
                : dn_batchnorm_forward_train_f32(n, c, s, layout, ARG(0, in1), ARG(2, v1),
                                                 ARG(3, v2), a, b, ARG(4, o1), ARG(5, o2),
                                                 ARG(1, out), ARG(6, o3), ARG(7, v3));
        break;
    case 2: case 3:
        st = op % 2 ? dn_batchnorm_forward_infer_f64(n, c, s, layout, ARG(0, in1), ARG(2, v1),
                                                     ARG(3, v2), ARG(4, v3), ARG(5, v3), a,
                                                     ARG(1, out))
                    : dn_batchnorm_forward_infer_f32(n, c, s, layout, ARG(0, in1), ARG(2, v1),
                                                     ARG(3, v2), ARG(4, v3), ARG(5, v3), a,
                                                     ARG(1, out));
        break;
    case 4: case 5:
        st = op % 2 ? dn_batchnorm_backward_f64(n, c, s, layout, ARG(0, in1), ARG(1, in2),
                                                ARG(2, v1), ARG(3, v2), ARG(4, v3), ARG(5, out),
                                                ARG(6, o1), ARG(7, o2))
                    : dn_batchnorm_backward_f32(n, c, s, layout, ARG(0, in1), ARG(1, in2),
                                                ARG(2, v1), ARG(3, v2), ARG(4, v3), ARG(5, out),
                                                ARG(6, o1), ARG(7, o2));
        break;
    case 6: case 7:
        st = op % 2 ? dn_batchnorm_backward_infer_f64(n, c, s, layout, ARG(0, in1), ARG(1, in2),
                                                      ARG(2, v1), ARG(3, v2), ARG(4, v3), a,
                                                      ARG(5, out), ARG(6, o1), ARG(7, o2))
                    : dn_batchnorm_backward_infer_f32(n, c, s, layout, ARG(0, in1), ARG(1, in2),
                                                      ARG(2, v1), ARG(3, v2), ARG(4, v3), a,
                                                      ARG(5, out), ARG(6, o1), ARG(7, o2));
        break;
    case 8: case 9:
        st = op % 2 ? dn_dropout_forward_f64(n, c, s, layout, channelwise, ARG(0, in1), a, seed,
                                             stream, mode, training, ARG(1, out),
                                             ARG(2, mask_out))
                    : dn_dropout_forward_f32(n, c, s, layout, channelwise, ARG(0, in1), a, seed,
                                             stream, mode, training, ARG(1, out),
                                             ARG(2, mask_out));
        break;
    case 10: case 11:
        st = op % 2 ? dn_dropout_apply_mask_f64(n, c, s, layout, channelwise, ARG(0, in1),
                                                ARG(2, mask_in), a, mode, ARG(1, out))
                    : dn_dropout_apply_mask_f32(n, c, s, layout, channelwise, ARG(0, in1),
                                                ARG(2, mask_in), a, mode, ARG(1, out));
        break;
    case 12: case 13:
        st = op % 2 ? dn_dropout_backward_f64(n, c, s, layout, channelwise, ARG(0, in1), a, seed,
                                              stream, mode, ARG(2, mask_in), ARG(1, out))
                    : dn_dropout_backward_f32(n, c, s, layout, channelwise, ARG(0, in1), a, seed,
                                              stream, mode, ARG(2, mask_in), ARG(1, out));
        break;
    case 14: /* the mask alone: n*c*s decisions */
        st = dn_dropout_mask(small ? n * c * s : n, a, seed, stream, ARG(0, mask_out));
        break;
    case 20: case 21: /* n may be 0: an empty shard */
        st = op % 2 ? dn_batchnorm_partial_stats_f64(n, c, s, layout, SARG(0, in1), SARG(1, sums))
                    : dn_batchnorm_partial_stats_f32(n, c, s, layout, SARG(0, in1), SARG(1, sums));
        break;
    case 22: case 23: { /* the statistics: mean, var, var_unbiased (c doubles each) */
        const double *base = (const double *)parts.bytes;
        const double *mean = SARG(2, parts) ? base : NULL;
        const double *var = SARG(10, parts) ? base + c : NULL;
        const double *vu = SARG(3, parts) ? base + 2 * c : NULL;
        st = op % 2 ? dn_batchnorm_forward_apply_f64(n, c, s, layout, SARG(0, in1), mean, var, vu,
                                                     SARG(4, v1), SARG(5, v2), a, b, SARG(6, o1),
                                                     SARG(7, o2), SARG(1, out), SARG(8, o3),
                                                     SARG(9, o4))
                    : dn_batchnorm_forward_apply_f32(n, c, s, layout, SARG(0, in1), mean, var, vu,
                                                     SARG(4, v1), SARG(5, v2), a, b, SARG(6, o1),
                                                     SARG(7, o2), SARG(1, out), SARG(8, o3),
                                                     SARG(9, o4));
        break;
    }
    case 24: case 25:
        st = op % 2 ? dn_batchnorm_backward_reduce_f64(n, c, s, layout, SARG(0, in1), SARG(2, in2),
                                                       SARG(3, v1), SARG(1, sums))
                    : dn_batchnorm_backward_reduce_f32(n, c, s, layout, SARG(0, in1), SARG(2, in2),
                                                       SARG(3, v1), SARG(1, sums));
        break;
    case 26: case 27:
        st = op % 2 ? dn_batchnorm_backward_apply_f64(n, c, s, layout, SARG(0, in1), SARG(2, in2),
                                                      SARG(3, v1), SARG(4, v2), SARG(5, v3),
                                                      SARG(6, parts), count, SARG(7, parts),
                                                      SARG(1, out), SARG(8, o1), SARG(9, o2))
                    : dn_batchnorm_backward_apply_f32(n, c, s, layout, SARG(0, in1), SARG(2, in2),
                                                      SARG(3, v1), SARG(4, v2), SARG(5, v3),
                                                      SARG(6, parts), count, SARG(7, parts),
                                                      SARG(1, out), SARG(8, o1), SARG(9, o2));
        break;
    case 28: { /* up to 4 shards of partials; outputs mean, var, var_unbiased */
        double *base = (double *)sums.bytes;
        st = dn_batchnorm_merge_stats(small ? shards : n, c, SARG(0, parts),
                                      SARG(1, sums) ? base : NULL,
                                      SARG(10, sums) ? base + c : NULL,
                                      SARG(2, sums) ? base + 2 * c : NULL);
        break;
    }
    case 29: case 30:
        st = op % 2 ? dn_dropout_forward_offset_f64(n, c, s, layout, channelwise, ARG(0, in1), a,
                                                    seed, stream, offset, mode, training,
                                                    ARG(1, out), ARG(2, mask_out))
                    : dn_dropout_backward_offset_f32(n, c, s, layout, channelwise, ARG(0, in1),
                                                     a, seed, stream, offset, mode,
                                                     ARG(2, mask_in), ARG(1, out));
        break;
    case 31:
        st = dn_dropout_mask_offset(small ? n * c * s : n, a, seed, stream, offset,
                                    ARG(0, mask_out));
        break;
    case 18: case 19: /* the fused blocks; the extra tensors only for small extents */
        if (training == 0)
            st = op % 2 ? dn_batchnorm_forward_train_fused_f64(
                              n, c, s, layout, ARG(0, in1), SARG(8, in2), ARG(2, v1), ARG(3, v2),
                              a, 0.1, ARG(4, o1), ARG(5, o2), (dn_activation)mode, b, seed,
                              stream, ARG(1, out), ARG(6, o3), ARG(7, o4), SARG(9, mask_out))
                        : dn_batchnorm_forward_train_fused_f32(
                              n, c, s, layout, ARG(0, in1), SARG(8, in2), ARG(2, v1), ARG(3, v2),
                              a, 0.1, ARG(4, o1), ARG(5, o2), (dn_activation)mode, b, seed,
                              stream, ARG(1, out), ARG(6, o3), ARG(7, o4), SARG(9, mask_out));
        else if (training == 1)
            st = op % 2 ? dn_batchnorm_forward_infer_fused_f64(
                              n, c, s, layout, ARG(0, in1), SARG(8, in2), ARG(2, v1), ARG(3, v2),
                              ARG(4, v3), ARG(5, v3), a, (dn_activation)mode, ARG(1, out))
                        : dn_batchnorm_forward_infer_fused_f32(
                              n, c, s, layout, ARG(0, in1), SARG(8, in2), ARG(2, v1), ARG(3, v2),
                              ARG(4, v3), ARG(5, v3), a, (dn_activation)mode, ARG(1, out));
        else
            st = op % 2 ? dn_batchnorm_backward_fused_f64(
                              n, c, s, layout, ARG(0, in1), ARG(1, in2), SARG(8, in1),
                              SARG(9, mask_in), ARG(2, v1), ARG(3, v2), ARG(4, v3),
                              (dn_activation)mode, b, seed, stream, ARG(5, out), ARG(6, o1),
                              ARG(7, o2), SARG(10, out2))
                        : dn_batchnorm_backward_fused_f32(
                              n, c, s, layout, ARG(0, in1), ARG(1, in2), SARG(8, in1),
                              SARG(9, mask_in), ARG(2, v1), ARG(3, v2), ARG(4, v3),
                              (dn_activation)mode, b, seed, stream, ARG(5, out), ARG(6, o1),
                              ARG(7, o2), SARG(10, out2));
        break;
    case 15: {
        uint32_t ctr[4] = {(uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)stream, 7u};
        const uint32_t key[2] = {(uint32_t)(stream >> 32), (uint32_t)n};
        dn_philox4x32_10(ctr, key, ctr); /* out may be ctr */
        break;
    }
    case 16:
        st = dn_set_num_threads((int)(int32_t)take(&r, 4));
        check(dn_get_max_threads() >= 1, "at least one thread");
        dn_set_num_threads(2);
        break;
    case 17:
        check(dn_status_str((dn_status)(int32_t)take(&r, 4)) != NULL, "status text");
        break;
    default:
        check(dn_version() != NULL && dn_version_number() > 0 && dn_compiler() != NULL
                  && dn_kernel_variant() != NULL && dn_batchnorm_kernel_variant() != NULL
                  && dn_dropout_kernel_variant() != NULL,
              "version and build facts");
        break;
    }
#undef ARG
#undef SARG
    check_status(st);
    if (st != DN_OK) {
        check(untouched(&out) && untouched(&o1) && untouched(&o2) && untouched(&o3)
                  && untouched(&o4) && untouched(&mask_out) && untouched(&sums)
                  && untouched(&out2),
              "a failed call writes nothing");
    } else if ((op == 8 || op == 9 || (op == 14 && !half)) && !((nulls >> (op == 14 ? 0 : 2)) & 1u)
               && small) {
        /* the unused high bits of the mask's last byte are 0 */
        const int64_t bits = op == 14 || channelwise == 0 || s == 1 ? n * c * s : n * c;
        if (bits % 8) check((mask_out.bytes[(bits - 1) / 8] >> (bits % 8)) == 0, "mask padding");
    }
    free(in1.bytes);
    free(in2.bytes);
    free(v1.bytes);
    free(v2.bytes);
    free(v3.bytes);
    free(mask_in.bytes);
    free(out.bytes);
    free(o1.bytes);
    free(o2.bytes);
    free(o3.bytes);
    free(mask_out.bytes);
    free(o4.bytes);
    free(parts.bytes);
    free(sums.bytes);
    free(out2.bytes);
    return 0;
}

#if !defined(DN_LIBFUZZER)
/* ---- The plain driver. ----------------------------------------------------- */
#include <dirent.h>

static long run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t buf[1 << 16];
    size_t got;
    if (f == NULL) return 0;
    got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, got);
    return 1;
}

static long run_path(const char *path)
{
    DIR *dir = opendir(path);
    long count = 0;
    struct dirent *e;
    char full[4096];
    if (dir == NULL) return run_file(path);
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        count += run_file(full);
    }
    closedir(dir);
    return count;
}

int main(int argc, char **argv)
{
    long count = 10000, files = 0;
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    uint8_t buf[512];
    dn_set_num_threads(2);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) count = atol(argv[++i]);
        else files += run_path(argv[i]);
    }
    for (long k = 0; k < count; k++) {
        size_t len;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        len = (size_t)(state % sizeof buf);
        for (size_t i = 0; i < len; i++) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf[i] = (uint8_t)(state >> 24);
        }
        /* a third of the inputs: small extents with real buffers */
        if (len > 4 && k % 3 == 0) buf[1] = buf[3] = buf[5] = 0;
        LLVMFuzzerTestOneInput(buf, len);
    }
    printf("fuzz_capi: %ld corpus files and %ld generated inputs, no failure\n", files, count);
    return 0;
}
#endif
