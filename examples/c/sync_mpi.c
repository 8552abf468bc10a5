/* Batch norm of one batch split over MPI processes, with dropnorm's shard
 * pieces and the caller's own communication (the library does none):
 *
 *   forward:  dn_batchnorm_partial_stats_f32 -> MPI_Allgather of the 3*C
 *             partials -> dn_batchnorm_merge_stats (rank order) ->
 *             dn_batchnorm_forward_apply_f32
 *   backward: dn_batchnorm_backward_reduce_f32 -> MPI_Allgather of the 3*C
 *             sums -> added in rank order -> dn_batchnorm_backward_apply_f32
 *
 * Every rank makes the whole (N, C, S) batch from one formula, keeps its
 * shard, a block of images (N = 11 split over the ranks: uneven), and checks
 * its y and dx against the single-process dn_batchnorm_forward_train_f32 /
 * dn_batchnorm_backward_f32 on the whole batch. It prints
 * "rank r of K: ... max rel diff y ... dx ..." and exits non-zero if a
 * result is off by more than 2e-6 relative.
 *
 * Built by the CMakeLists.txt beside it only when CMake finds MPI:
 *   mpiexec -n 3 ./build-example/dropnorm_sync_mpi */
#include <dropnorm/dropnorm.h>
#include <mpi.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 11
#define C 5
#define S 36

#define TRY(call)                                                              \
    do {                                                                       \
        dn_status st_ = (call);                                                \
        if (st_ != DN_OK) {                                                    \
            fprintf(stderr, "%s failed: %s\n", #call, dn_status_str(st_));     \
            MPI_Abort(MPI_COMM_WORLD, 1);                                      \
        }                                                                      \
    } while (0)

static double max_rel(const float *a, const float *b, int count)
{
    double diff = 0.0, scale = 0.0;
    for (int i = 0; i < count; i++) {
        diff = fmax(diff, fabs((double)a[i] - (double)b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    return scale > 0.0 ? diff / scale : diff;
}

int main(int argc, char **argv)
{
    static float x[N * C * S], dy[N * C * S], y[N * C * S], dx[N * C * S];
    static float ys[N * C * S], dxs[N * C * S];
    float mean[C], invstd[C], save_mean[C], save_invstd[C];
    double part[3 * C], total[3 * C], batch_mean[C], var[C], *every;
    int rank, ranks, lo = 0, n;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    for (int i = 0; i < N * C * S; i++) {
        x[i] = 1000.0f + (float)sin(0.37 * i) * 3.0f; /* |mean| >> std */
        dy[i] = (float)cos(0.11 * i);
    }
    /* the single-process results on the whole batch */
    TRY(dn_batchnorm_forward_train_f32(N, C, S, DN_LAYOUT_NCS, x, NULL, NULL, 1e-5, 0.1, NULL,
                                       NULL, y, mean, invstd));
    TRY(dn_batchnorm_backward_f32(N, C, S, DN_LAYOUT_NCS, dy, x, mean, invstd, NULL, dx, NULL,
                                  NULL));
    /* this rank's shard: images [lo, lo + n), uneven sizes */
    for (int r = 0; r < rank; r++) lo += N / ranks + (r < N % ranks);
    n = N / ranks + (rank < N % ranks);
    every = malloc(sizeof(double) * 3 * C * (size_t)ranks);
    if (every == NULL) MPI_Abort(MPI_COMM_WORLD, 1);

    /* forward: one Allgather of the partial statistics */
    TRY(dn_batchnorm_partial_stats_f32(n, C, S, DN_LAYOUT_NCS, x + lo * C * S, part));
    MPI_Allgather(part, 3 * C, MPI_DOUBLE, every, 3 * C, MPI_DOUBLE, MPI_COMM_WORLD);
    TRY(dn_batchnorm_merge_stats(ranks, C, every, batch_mean, var, NULL));
    TRY(dn_batchnorm_forward_apply_f32(n, C, S, DN_LAYOUT_NCS, x + lo * C * S, batch_mean, var,
                                       NULL, NULL, NULL, 1e-5, 0.1, NULL, NULL, ys, save_mean,
                                       save_invstd));

    /* backward: one Allgather of the gradient sums, added in rank order */
    TRY(dn_batchnorm_backward_reduce_f32(n, C, S, DN_LAYOUT_NCS, dy + lo * C * S,
                                         x + lo * C * S, save_mean, part));
    MPI_Allgather(part, 3 * C, MPI_DOUBLE, every, 3 * C, MPI_DOUBLE, MPI_COMM_WORLD);
    memset(total, 0, sizeof total);
    for (int r = 0; r < ranks; r++)
        for (int i = 0; i < 3 * C; i++) total[i] += every[r * 3 * C + i];
    TRY(dn_batchnorm_backward_apply_f32(n, C, S, DN_LAYOUT_NCS, dy + lo * C * S, x + lo * C * S,
                                        save_mean, save_invstd, NULL, total, (int64_t)N * S,
                                        part, dxs, NULL, NULL));
    {
        const double ry = max_rel(ys, y + lo * C * S, n * C * S);
        const double rdx = max_rel(dxs, dx + lo * C * S, n * C * S);
        printf("rank %d of %d: images %d..%d, max rel diff y %.3g dx %.3g\n", rank, ranks, lo,
               lo + n - 1, ry, rdx);
        free(every);
        MPI_Finalize();
        return ry <= 2e-6 && rdx <= 2e-6 ? 0 : 1;
    }
}
