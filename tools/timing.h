/* What the C timers (tools/time_*.c) share: the shape from the command
 * line, the input values (onednn_bn.c's), the clock and medians. Include
 * it first: it asks for the POSIX clock before any system header. */
#ifndef DN_TOOLS_TIMING_H
#define DN_TOOLS_TIMING_H
#if !defined(_POSIX_C_SOURCE)
#  define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif
#include <dropnorm/dropnorm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* N C H W [nchw|nhwc] from argv into (n, c, s = H*W) and the layout;
 * 0 after the usage when they are missing. */
static int shape_args(int argc, char **argv, int64_t *n, int64_t *c, int64_t *s,
                      dn_layout *layout)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s N C H W [nchw|nhwc]\n", argv[0]);
        return 0;
    }
    *n = atoll(argv[1]);
    *c = atoll(argv[2]);
    *s = atoll(argv[3]) * atoll(argv[4]);
    *layout = argc > 5 && strcmp(argv[5], "nhwc") == 0 ? DN_LAYOUT_NSC : DN_LAYOUT_NCS;
    return 1;
}

/* bytes of memory, or the program ends (status 1) when they cannot be had */
static void *allocated(size_t bytes)
{
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* count floats (as allocated) */
static float *floats(int64_t count) { return allocated(sizeof(float) * (size_t)count); }

/* x: the values onednn_bn.c fills its buffers with; dy: the same values,
 * permuted */
static void fill_inputs(float *x, float *dy, int64_t total)
{
    for (int64_t i = 0; i < total; i++)
        x[i] = (float)((uint64_t)i * 2654435761u % 1000) / 500.f - 1.f;
    for (int64_t i = 0; i < total; i++) dy[i] = x[(i * 7) % total];
}

/* ones[i] = 1, zeros[i] = 0 for i < c (gamma and beta, or a running
 * variance and mean) */
static void ones_and_zeros(float *ones, float *zeros, int64_t c)
{
    for (int64_t i = 0; i < c; i++) {
        ones[i] = 1.f;
        zeros[i] = 0.f;
    }
}

/* The buffers of a batch norm's training forward and backward on total
 * values of c channels: inputs x and dy filled (fill_inputs), gamma 1,
 * beta 0; outputs y, dx, mean, invstd, dgamma, dbeta. */
typedef struct bn_buffers {
    float *x, *dy, *y, *dx;
    float *gamma, *beta, *mean, *invstd, *dgamma, *dbeta;
} bn_buffers;

static void bn_buffers_make(bn_buffers *b, int64_t total, int64_t c)
{
    b->x = floats(total);
    b->dy = floats(total);
    b->y = floats(total);
    b->dx = floats(total);
    b->gamma = floats(c);
    b->beta = floats(c);
    b->mean = floats(c);
    b->invstd = floats(c);
    b->dgamma = floats(c);
    b->dbeta = floats(c);
    fill_inputs(b->x, b->dy, total);
    ones_and_zeros(b->gamma, b->beta, c);
}

/* "dropnorm nhwc 16x64x56x56", the start of a timer's line */
static void print_shape(dn_layout layout, char **argv)
{
    printf("dropnorm %s %sx%sx%sx%s", layout == DN_LAYOUT_NSC ? "nhwc" : "nchw", argv[1], argv[2],
           argv[3], argv[4]);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of t[0 .. n), which it sorts. */
static double median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof(double), by_value);
    return t[n / 2];
}
#endif
