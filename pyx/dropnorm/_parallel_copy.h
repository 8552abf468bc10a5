/* The benchmark's yardstick: memcpy of a buffer split into one contiguous
 * part per thread, on the same OpenMP threads the kernels use. */
#ifndef DROPNORM_PARALLEL_COPY_H
#define DROPNORM_PARALLEL_COPY_H

#include <stdint.h>
#include <string.h>

static void dn_parallel_copy(void *dst, const void *src, int64_t nbytes, int threads)
{
    /* parts start on 64-byte boundaries so no cache line has two writers */
    const int64_t part = ((nbytes / threads + 63) / 64) * 64;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (int t = 0; t < threads; t++) {
        const int64_t lo = (int64_t)t * part;
        const int64_t hi = lo + part < nbytes ? lo + part : nbytes;
        if (lo < hi) memcpy((char *)dst + lo, (const char *)src + lo, (size_t)(hi - lo));
    }
}

#endif
