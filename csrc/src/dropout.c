/* Dropout: the Philox4x32-10 keep decisions, packed masks, and the shared
 * blocking; the f32, f64, f16 and bf16 kernels come from dropout_impl.h.
 *
 * The decision for index i (an element, or an (n, c) pair in channel
 * dropout) is a pure function of (seed, stream, i): word i mod 4 of Philox
 * block i div 4, compared with threshold = floor(p * 2^32). Work is cut into
 * windows of DN_WIN = 64 consecutive indices (16 Philox blocks, 8 mask
 * bytes), windows into thread blocks of DN_APPLY_BLOCK elements; so every
 * mask byte is written by one thread and nothing depends on the thread
 * count. */
#include <string.h>

#include "common.h"
#include "half.h"
#include "kernels.h"

/* Channel dropout, channels last: channels of one task (its decisions are
 * kept on the stack), and the fewest rows a task applies them to. */
#define DN_NSC_CHUNK 1024
#define DN_NSC_MIN_ROWS 16

/* Channel dropout, channels first: rows shorter than this are spread. */
#define DN_NCS_SHORT 16

#if DN_APPLY_BLOCK % DN_WIN != 0
#  error "DN_APPLY_BLOCK must be a multiple of DN_WIN (whole mask bytes per thread)"
#endif

void dn_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    dn_philox4x32_10_lanes(1, &c0, &c1, &c2, &c3, key[0], key[1]);
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* ---- Where keep decisions come from. ------------------------------------ */

typedef struct dn_keep_src {
    const uint8_t *mask;   /* a caller's packed mask, or NULL: generate */
    int64_t nbits;         /* number of decisions */
    dn_philox_stream ps;   /* key, stream and threshold (0 < p < 1 here) */
    uint64_t offset;       /* generated: the index of decision 0 in the whole mask */
    dn_keep_window_fn gen; /* the generator variant for this CPU */
} dn_keep_src;

static int dn_bad_p(double p) { return !(p >= 0.0 && p <= 1.0); }

static int dn_bad_mode(dn_dropout_mode mode)
{
    return (int)mode != (int)DN_DROPOUT_INVERTED && (int)mode != (int)DN_DROPOUT_CLASSIC;
}

static void dn_src_generate(dn_keep_src *src, int64_t nbits, double p, uint64_t seed,
                            uint64_t stream, uint64_t offset)
{
    src->mask = NULL;
    src->nbits = nbits;
    src->offset = offset;
    src->ps = dn_philox_stream_of(p, seed, stream);
    src->gen = dn_kernels()->keep_window;
}

static void dn_src_mask(dn_keep_src *src, int64_t nbits, const uint8_t *mask)
{
    memset(src, 0, sizeof *src);
    src->mask = mask;
    src->nbits = nbits;
}

/* Packs keep[0 .. len) into (len + 7)/8 bytes, LSB first; unused high bits
 * of a last partial byte are 0. */
static inline void dn_window_pack(const uint32_t *DN_RESTRICT keep, int len,
                                  uint8_t *DN_RESTRICT out)
{
    const int full = len / 8;
    for (int b = 0; b < full; b++) {
        uint32_t v = 0;
        for (int k = 0; k < 8; k++) v |= keep[8 * b + k] << k;
        out[b] = (uint8_t)v;
    }
    if (len % 8) {
        uint32_t v = 0;
        for (int k = 0; k < len % 8; k++) v |= keep[8 * full + k] << k;
        out[full] = (uint8_t)v;
    }
}

/* Writes the first len bits of a window's packed mask: (len + 7)/8 bytes,
 * LSB first, unused high bits of a last partial byte 0. */
static inline void dn_store_bits(uint64_t bits, int len, uint8_t *DN_RESTRICT out)
{
    if (len < DN_WIN) bits &= ((uint64_t)1 << len) - 1u;
    for (int b = 0; b < (len + 7) / 8; b++) out[b] = (uint8_t)(bits >> (8 * b));
}

/* keep[j] = 1 if index base + j is kept, else 0, for the window at `base`
 * (a multiple of DN_WIN); len = min(DN_WIN, nbits - base) entries are
 * meaningful (a caller's mask is not read past them). If pack is not NULL,
 * the window's (len + 7)/8 mask bytes go there too. */
static inline void dn_window_keep(const dn_keep_src *src, int64_t base, int len,
                                  uint32_t *DN_RESTRICT keep, uint8_t *DN_RESTRICT pack)
{
    if (src->mask == NULL) {
        const uint64_t g = src->offset + (uint64_t)base; /* in the whole mask */
        uint64_t bits = 0;
        if ((g & 3u) == 0) {
            src->gen(&src->ps, g >> 2, keep, pack ? &bits : NULL);
        } else {
            /* a window that starts inside a Philox block: the words of two
             * windows of blocks, shifted */
            uint32_t two[2 * DN_WIN];
            src->gen(&src->ps, g >> 2, two, NULL);
            src->gen(&src->ps, (g >> 2) + DN_WIN_BLOCKS, two + DN_WIN, NULL);
            memcpy(keep, two + (g & 3u), sizeof(uint32_t) * DN_WIN);
            for (int j = 0; j < DN_WIN; j++) bits |= (uint64_t)keep[j] << j;
        }
        if (pack) dn_store_bits(bits, len, pack);
    } else {
        const uint8_t *DN_RESTRICT m = src->mask + base / 8;
        if (len == DN_WIN) {
            for (int j = 0; j < DN_WIN; j++) keep[j] = (uint32_t)(m[j >> 3] >> (j & 7)) & 1u;
        } else {
            for (int j = 0; j < len; j++) keep[j] = (uint32_t)(m[j >> 3] >> (j & 7)) & 1u;
        }
        if (pack) dn_window_pack(keep, len, pack);
    }
}

/* A mask of nbits decisions that are all `kept` (1) or all dropped (0). */
static void dn_mask_fill(int64_t nbits, int kept, uint8_t *mask)
{
    const int64_t full = nbits / 8;
    memset(mask, kept ? 0xFF : 0x00, (size_t)full);
    if (nbits % 8) mask[full] = kept ? (uint8_t)((1u << (nbits % 8)) - 1u) : 0u;
}

typedef struct dn_mask_job {
    const dn_keep_src *src;
    uint8_t *mask;
} dn_mask_job;

static void dn_mask_task(const void *ctx, int64_t blk, int worker)
{
    const dn_keep_src *src = ((const dn_mask_job *)ctx)->src;
    uint8_t *mask = ((const dn_mask_job *)ctx)->mask;
    const int64_t i0 = blk * DN_APPLY_BLOCK;
    const int64_t i1 = dn_min64(i0 + DN_APPLY_BLOCK, src->nbits);
    uint32_t keep[DN_WIN];
    (void)worker;
    for (int64_t base = i0; base < i1; base += DN_WIN) {
        const int len = (int)dn_min64(DN_WIN, i1 - base);
        dn_window_keep(src, base, len, keep, mask + base / 8);
    }
}

/* The packed mask of src's decisions, in parallel. */
static void dn_mask_from_src(const dn_keep_src *src, uint8_t *mask)
{
    const dn_mask_job job = {src, mask};
    dn_parallel_tasks(dn_threads_for(src->nbits), dn_ceil_div(src->nbits, DN_APPLY_BLOCK),
                      dn_mask_task, &job);
}

/* The decisions offset .. offset + nbits - 1 (nbits >= 1) must be indices
 * of one mask (below 2^64). */
static int dn_bad_offset(uint64_t offset, int64_t nbits)
{
    return offset > UINT64_MAX - (uint64_t)(nbits - 1);
}

dn_status dn_dropout_mask_offset(int64_t n, double p, uint64_t seed, uint64_t stream,
                                 uint64_t offset, uint8_t *mask)
{
    dn_keep_src src;
    if (n <= 0) return DN_ERR_BAD_SHAPE;
    /* (n + 7)/8 bytes must fit the address space (a 32-bit one) */
    if ((n - 1) / 8 >= (int64_t)PTRDIFF_MAX) return DN_ERR_SIZE_OVERFLOW;
    if (mask == NULL) return DN_ERR_NULL_POINTER;
    if (dn_bad_p(p) || dn_bad_offset(offset, n)) return DN_ERR_BAD_VALUE;
    if (p == 0.0 || p == 1.0) {
        dn_mask_fill(n, p == 0.0, mask);
        return DN_OK;
    }
    dn_src_generate(&src, n, p, seed, stream, offset);
    dn_mask_from_src(&src, mask);
    return DN_OK;
}

dn_status dn_dropout_mask(int64_t n, double p, uint64_t seed, uint64_t stream, uint8_t *mask)
{
    return dn_dropout_mask_offset(n, p, seed, stream, 0, mask);
}

/* ---- The plan of one dropout call. -------------------------------------- */

typedef struct dn_drop_plan {
    dn_plan t;     /* the tensor: extents, canonical layout, threads */
    int chan;      /* channel dropout with s > 1 (with s == 1 it is elementwise) */
    int64_t nbits; /* decisions: n*c*s, or n*c for channel dropout */
} dn_drop_plan;

/* Checks shared by every kernel, in the order of the batch-norm ones:
 * shape and layout, pointers, then values. */
static dn_status dn_drop_plan_make(int64_t n, int64_t c, int64_t s, dn_layout layout,
                                   int channelwise, size_t elem_size, int pointers_ok,
                                   double p, dn_dropout_mode mode, uint64_t offset,
                                   dn_drop_plan *dp)
{
    dn_status st = dn_make_plan(n, c, s, layout, elem_size, &dp->t);
    if (st != DN_OK) return st;
    if (!pointers_ok) return DN_ERR_NULL_POINTER;
    if (dn_bad_p(p)) return DN_ERR_BAD_VALUE;
    if (dn_bad_mode(mode)) return DN_ERR_BAD_MODE;
    dp->chan = channelwise && s > 1;
    dp->nbits = channelwise ? n * c : dp->t.total;
    if (dn_bad_offset(offset, dp->nbits)) return DN_ERR_BAD_VALUE;
    return DN_OK;
}

#define DN_LD(v) (v)
#define DN_ST(v) (v)

#define T float
#define S float
#define U uint32_t
#define FN(name) name##_f32
#include "dropout_impl.h"
#undef T
#undef S
#undef U
#undef FN

#define T double
#define S double
#define U uint64_t
#define FN(name) name##_f64
#include "dropout_impl.h"
#undef T
#undef S
#undef U
#undef FN

#undef DN_LD
#undef DN_ST

/* The half types: uint16_t storage, float arithmetic (half.h). */
#define T float
#define S uint16_t
#define U uint16_t

#define DN_LD(v) dn_f16_to_f32(v)
#define DN_ST(v) dn_f32_to_f16(v)
#define FN(name) name##_f16
#include "dropout_impl.h"
#undef FN
#undef DN_LD
#undef DN_ST

#define DN_LD(v) dn_bf16_to_f32(v)
#define DN_ST(v) dn_f32_to_bf16(v)
#define FN(name) name##_bf16
#include "dropout_impl.h"
#undef FN
#undef DN_LD
#undef DN_ST

#undef T
#undef S
#undef U
