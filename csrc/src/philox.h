/* Philox4x32-10 (Salmon, Moraes, Dror and Shaw, "Parallel random numbers:
 * as easy as 1, 2, 3", SC'11), the counter-based generator behind the
 * dropout masks. The rounds live here and only here: the public
 * dn_philox4x32_10() and the dropout kernels both call
 * dn_philox4x32_10_lanes(). Not installed. */
#ifndef DROPNORM_PHILOX_H
#define DROPNORM_PHILOX_H

#include <stdint.h>

#include "dropnorm/dropnorm.h"

#define DN_PHILOX_M0 0xD2511F53u /* round multipliers */
#define DN_PHILOX_M1 0xCD9E8D57u
#define DN_PHILOX_W0 0x9E3779B9u /* Weyl key increments */
#define DN_PHILOX_W1 0xBB67AE85u

/* Runs Philox4x32-10 on `lanes` counters at once, in place: counter j is
 * (c0[j], c1[j], c2[j], c3[j]) on entry and its 4 output words on return;
 * every lane uses the key (k0, k1). The arrays are structure-of-arrays and
 * the products 64-bit, so that with a constant `lanes` (after inlining) the
 * compiler vectorises the inner loop across counters. */
static inline void dn_philox4x32_10_lanes(int lanes, uint32_t *DN_RESTRICT c0,
                                          uint32_t *DN_RESTRICT c1,
                                          uint32_t *DN_RESTRICT c2,
                                          uint32_t *DN_RESTRICT c3,
                                          uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        for (int j = 0; j < lanes; j++) {
            const uint64_t p0 = (uint64_t)DN_PHILOX_M0 * c0[j];
            const uint64_t p1 = (uint64_t)DN_PHILOX_M1 * c2[j];
            const uint32_t x1 = c1[j], x3 = c3[j];
            c0[j] = (uint32_t)(p1 >> 32) ^ x1 ^ k0;
            c1[j] = (uint32_t)p1;
            c2[j] = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
            c3[j] = (uint32_t)p0;
        }
        /* the key bump after the last round is never used */
        k0 += DN_PHILOX_W0;
        k1 += DN_PHILOX_W1;
    }
}

#endif
