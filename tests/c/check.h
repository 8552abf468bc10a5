/* A minimal assertion harness for the C unit tests: each CHECK counts, a
 * failure prints its place, and main returns non-zero if any failed. */
#ifndef DN_TEST_CHECK_H
#define DN_TEST_CHECK_H

#include <math.h>
#include <stdio.h>

static int dn_checks_run = 0;
static int dn_checks_failed = 0;

#define CHECK(cond)                                                         \
    do {                                                                    \
        dn_checks_run++;                                                    \
        if (!(cond)) {                                                      \
            dn_checks_failed++;                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                 \
        }                                                                   \
    } while (0)

#define CHECK_CLOSE(a, b, tol) CHECK(fabs((double)(a) - (double)(b)) <= (tol))

static int check_report(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, dn_checks_run, dn_checks_failed);
    return dn_checks_failed != 0;
}

#endif
