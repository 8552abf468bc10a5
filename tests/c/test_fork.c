/* A child of fork() runs the kernels (on one thread) after its parent has
 * run them on several: libgomp's pool does not survive fork, and without
 * the library's guard the child's first parallel region waits forever.
 * Each child has an alarm, so a hang fails the test instead of blocking it. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dropnorm/dropnorm.h"
#include "check.h"

enum { N = 16, C = 64, S = 1024, TOTAL = N * C * S, CHILD_SECONDS = 30 };

/* dropout and training batch norm of x into y; 0 on success */
static int run_kernels(const float *x, float *y, float *mean, float *invstd)
{
    if (dn_dropout_forward_f32(N, C, S, DN_LAYOUT_NCS, 0, x, 0.5, 7, 3, DN_DROPOUT_INVERTED, 1,
                               y, NULL) != DN_OK)
        return 1;
    return dn_batchnorm_forward_train_f32(N, C, S, DN_LAYOUT_NCS, y, NULL, NULL, 1e-5, 0.1,
                                          NULL, NULL, y, mean, invstd) != DN_OK;
}

/* Forks; the child (and, with depth 2, its own child) runs the kernels and
 * exits 0 iff its results are the parent's bits. Returns the child's
 * wait status. */
static int fork_and_compare(const float *x, const float *want, int depth)
{
    pid_t pid = fork();
    if (pid == 0) {
        float *y = malloc(sizeof(float) * TOTAL);
        float mean[C], invstd[C];
        alarm(CHILD_SECONDS);
        if (y == NULL || run_kernels(x, y, mean, invstd) != 0) _exit(2);
        if (memcmp(y, want, sizeof(float) * TOTAL) != 0) _exit(3);
        if (dn_get_max_threads() != 1) _exit(4); /* the child runs on one thread */
        if (depth > 1) {
            int status = fork_and_compare(x, want, depth - 1);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) _exit(5);
        }
        _exit(0);
    }
    if (pid < 0) return -1;
    {
        int status = 0;
        if (waitpid(pid, &status, 0) != pid) return -1;
        return status;
    }
}

int main(void)
{
    float *x = malloc(sizeof(float) * TOTAL), *want = malloc(sizeof(float) * TOTAL);
    float mean[C], invstd[C];
    CHECK(x != NULL && want != NULL);
    if (x == NULL || want == NULL) return check_report("test_fork");
    for (int64_t i = 0; i < TOTAL; i++) x[i] = (float)((i * 7919) % 1000) * 0.01f - 3.0f;
    CHECK(dn_set_num_threads(2) == DN_OK);
    /* the parent runs its kernels threaded (when built with OpenMP) */
    CHECK(run_kernels(x, want, mean, invstd) == 0);
    {
        const int status = fork_and_compare(x, want, 2);
        CHECK(status != -1);
        CHECK(WIFEXITED(status));
        if (WIFSIGNALED(status))
            fprintf(stderr, "child killed by signal %d (%s)\n", WTERMSIG(status),
                    WTERMSIG(status) == SIGALRM ? "it hung" : "it crashed");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    /* the parent keeps its threads */
    CHECK(dn_get_max_threads() == (dn_openmp_enabled() ? 2 : 1));
    CHECK(run_kernels(x, want, mean, invstd) == 0);
    free(x);
    free(want);
    return check_report("test_fork");
}
