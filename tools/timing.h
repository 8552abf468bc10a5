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

/* the values onednn_bn.c fills its buffers with */
static void fill_values(float *x, int64_t total)
{
    for (int64_t i = 0; i < total; i++)
        x[i] = (float)((uint64_t)i * 2654435761u % 1000) / 500.f - 1.f;
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
