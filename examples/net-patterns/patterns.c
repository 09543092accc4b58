/* Communication patterns for comparing bee's network modes.
 *
 *   patterns alltoall BYTES ROUNDS  every rank sends BYTES to every other rank, ROUNDS
 *                                   times (MPI_Alltoall): all-to-all heavy; with small
 *                                   blocks, bound by the latency between every pair.
 *   patterns halo BYTES ROUNDS      every rank exchanges BYTES with its neighbours on a
 *                                   line (rank i with i - 1 and i + 1, as in a 1-D
 *                                   stencil code), ROUNDS times: neighbour-exchange heavy.
 *   patterns tree BYTES ROUNDS      every rank exchanges BYTES with its neighbours in a
 *                                   binary tree of the ranks (rank i with (i - 1) / 2,
 *                                   2i + 1 and 2i + 2), ROUNDS times: the links of
 *                                   bee's p2p-tree network, one hop each there.
 *
 * Rank 0 prints one line: the pattern, the ranks, the sizes and the seconds the exchange
 * took (MPI_Wtime, between two barriers), and a checksum of what rank 0 received, so that
 * a broken network shows as a wrong sum rather than a fast run.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fill(unsigned char *buf, long bytes, int rank, int round) {
    for (long i = 0; i < bytes; i++) buf[i] = (unsigned char)(rank * 31 + round * 7 + i);
}

static unsigned long sum(const unsigned char *buf, long bytes) {
    unsigned long s = 0;
    for (long i = 0; i < bytes; i++) s += buf[i];
    return s;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int alltoall = argc == 4 && strcmp(argv[1], "alltoall") == 0;
    int halo = argc == 4 && strcmp(argv[1], "halo") == 0;
    int tree = argc == 4 && strcmp(argv[1], "tree") == 0;
    if (!alltoall && !halo && !tree) {
        if (rank == 0) fprintf(stderr, "usage: patterns alltoall|halo|tree BYTES ROUNDS\n");
        MPI_Finalize();
        return 2;
    }
    long bytes = atol(argv[2]);
    int rounds = atoi(argv[3]);
    if (bytes < 1 || rounds < 1) {
        if (rank == 0) fprintf(stderr, "patterns: BYTES and ROUNDS must be positive\n");
        MPI_Finalize();
        return 2;
    }
    int peers[3], npeers = 0;
    if (halo) {
        if (rank > 0) peers[npeers++] = rank - 1;
        if (rank + 1 < size) peers[npeers++] = rank + 1;
    }
    if (tree) {
        if (rank > 0) peers[npeers++] = (rank - 1) / 2;
        if (2 * rank + 1 < size) peers[npeers++] = 2 * rank + 1;
        if (2 * rank + 2 < size) peers[npeers++] = 2 * rank + 2;
    }
    long blocks = alltoall ? size : npeers;
    unsigned char *out = malloc(bytes * (blocks ? blocks : 1));
    unsigned char *in = malloc(bytes * (blocks ? blocks : 1));
    if (!out || !in) {
        fprintf(stderr, "patterns: rank %d cannot allocate %ld bytes\n", rank, 2 * bytes * blocks);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    unsigned long received = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double start = MPI_Wtime();
    for (int round = 0; round < rounds; round++) {
        for (long b = 0; b < blocks; b++) fill(out + b * bytes, bytes, rank, round);
        if (alltoall) {
            MPI_Alltoall(out, (int)bytes, MPI_BYTE, in, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
        } else {
            MPI_Request requests[6];
            for (int p = 0; p < npeers; p++) {
                MPI_Irecv(in + p * bytes, (int)bytes, MPI_BYTE, peers[p], round, MPI_COMM_WORLD,
                          &requests[2 * p]);
                MPI_Isend(out + p * bytes, (int)bytes, MPI_BYTE, peers[p], round, MPI_COMM_WORLD,
                          &requests[2 * p + 1]);
            }
            MPI_Waitall(2 * npeers, requests, MPI_STATUSES_IGNORE);
        }
        received += sum(in, bytes * blocks);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double seconds = MPI_Wtime() - start;
    if (rank == 0)
        printf("pattern=%s ranks=%d bytes=%ld rounds=%d seconds=%.3f checksum=%lu\n", argv[1],
               size, bytes, rounds, seconds, received);
    free(out);
    free(in);
    MPI_Finalize();
    return 0;
}
