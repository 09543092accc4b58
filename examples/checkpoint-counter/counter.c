/*
 * An iterative MPI computation that checkpoints and restarts itself, for bee's
 * Algorithm 1 (time slots, checkpoint, migrate, restore).
 *
 *   counter DIR STEPS STEP_MS [--restart]
 *
 * Every rank evolves a 64-bit state for STEPS steps, sleeping STEP_MS milliseconds per
 * step; after each step the ranks mix their states with an MPI_Allreduce, so the result
 * depends on every rank and every step. When DIR/checkpoint-now exists (rank 0 looks,
 * then tells the others), every rank saves its step and state to DIR/state/rank-R
 * (written to a temporary file, then renamed), rank 0 removes the request, and all exit
 * 0. With --restart, every rank continues from its saved state. At the end rank 0 writes
 * DIR/result.txt and prints the same line: interrupted and uninterrupted runs give the
 * same bytes.
 */
#include <errno.h>
#include <inttypes.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void fail(const char *what, const char *path)
{
    fprintf(stderr, "counter: %s %s: %s\n", what, path, strerror(errno));
    MPI_Abort(MPI_COMM_WORLD, 2);
}

static void save(const char *dir, int rank, long step, uint64_t state)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/state", dir);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        fail("cannot create", path);
    snprintf(path, sizeof path, "%s/state/rank-%d", dir, rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (out == NULL)
        fail("cannot write", tmp);
    fprintf(out, "%ld %" PRIu64 "\n", step, state);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0)
        fail("cannot write", tmp);
    if (rename(tmp, path) != 0)
        fail("cannot rename", tmp);
}

static void load(const char *dir, int rank, long *step, uint64_t *state)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/state/rank-%d", dir, rank);
    FILE *in = fopen(path, "r");
    if (in == NULL)
        fail("cannot read", path);
    if (fscanf(in, "%ld %" SCNu64, step, state) != 2) {
        fprintf(stderr, "counter: %s is damaged\n", path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    fclose(in);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 4) {
        if (rank == 0)
            fprintf(stderr, "usage: counter DIR STEPS STEP_MS [--restart]\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const char *dir = argv[1];
    long steps = atol(argv[2]);
    long step_ms = atol(argv[3]);
    int restart = argc > 4 && strcmp(argv[4], "--restart") == 0;

    long step = 0;
    uint64_t state = 0x9e3779b97f4a7c15ULL * (uint64_t)(rank + 1);
    if (restart)
        load(dir, rank, &step, &state);
    if (rank == 0)
        printf("counter: %d ranks, %s at step %ld of %ld\n", size,
               restart ? "restarting" : "starting", step, steps);
    fflush(stdout);

    char request[4096];
    snprintf(request, sizeof request, "%s/checkpoint-now", dir);
    for (; step < steps; step++) {
        int stop = rank == 0 && access(request, F_OK) == 0;
        MPI_Bcast(&stop, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (stop) {
            save(dir, rank, step, state);
            MPI_Barrier(MPI_COMM_WORLD);
            if (rank == 0) {
                unlink(request);
                printf("counter: checkpoint saved at step %ld\n", step);
            }
            MPI_Finalize();
            return 0;
        }
        state = state * 6364136223846793005ULL + 1442695040888963407ULL + (uint64_t)step;
        uint64_t mixed = 0;
        MPI_Allreduce(&state, &mixed, 1, MPI_UINT64_T, MPI_BXOR, MPI_COMM_WORLD);
        state ^= mixed >> 17;
        usleep((useconds_t)step_ms * 1000);
    }

    uint64_t sum = 0;
    MPI_Reduce(&state, &sum, 1, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/result.txt", dir);
        FILE *out = fopen(path, "w");
        if (out == NULL)
            fail("cannot write", path);
        fprintf(out, "%d ranks, %ld steps: checksum %016" PRIx64 "\n", size, steps, sum);
        fclose(out);
        printf("counter: %d ranks, %ld steps: checksum %016" PRIx64 "\n", size, steps, sum);
    }
    MPI_Finalize();
    return 0;
}
