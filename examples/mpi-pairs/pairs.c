/*
 * Every pair of MPI ranks exchanges a message whose payload depends on both ranks.
 * Each rank checks what it received and writes one result file into the directory
 * given as the first argument (the cluster's shared directory).
 * Exit status: 0 when every payload arrived intact, 1 otherwise.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAYLOAD 65536

static void fill(unsigned char *buffer, int from, int to)
{
    for (int i = 0; i < PAYLOAD; i++)
        buffer[i] = (unsigned char)((from * 131 + to * 17 + i * 7) & 0xff);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const char *dir = argc > 1 ? argv[1] : ".";
    char host[256] = "";
    gethostname(host, sizeof host - 1);

    unsigned char *send = malloc((size_t)size * PAYLOAD);
    unsigned char *recv = malloc((size_t)size * PAYLOAD);
    unsigned char *want = malloc(PAYLOAD);
    MPI_Request *requests = malloc(2 * (size_t)size * sizeof *requests);
    int count = 0;
    for (int peer = 0; peer < size; peer++) {
        if (peer == rank)
            continue;
        fill(send + (size_t)peer * PAYLOAD, rank, peer);
        MPI_Irecv(recv + (size_t)peer * PAYLOAD, PAYLOAD, MPI_UNSIGNED_CHAR, peer, 7,
                  MPI_COMM_WORLD, &requests[count++]);
        MPI_Isend(send + (size_t)peer * PAYLOAD, PAYLOAD, MPI_UNSIGNED_CHAR, peer, 7,
                  MPI_COMM_WORLD, &requests[count++]);
    }
    MPI_Waitall(count, requests, MPI_STATUSES_IGNORE);

    int bad = 0, checked = 0;
    for (int peer = 0; peer < size; peer++) {
        if (peer == rank)
            continue;
        fill(want, peer, rank);
        if (memcmp(recv + (size_t)peer * PAYLOAD, want, PAYLOAD) != 0)
            bad++;
        checked++;
    }

    char path[4096];
    snprintf(path, sizeof path, "%s/rank-%d.txt", dir, rank);
    FILE *out = fopen(path, "w");
    if (out == NULL) {
        perror(path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    fprintf(out, "rank %d of %d on %s: %d peers checked, %d bad\n", rank, size, host, checked,
            bad);
    fclose(out);

    int total_bad = 0;
    MPI_Allreduce(&bad, &total_bad, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%d ranks: every pair exchanged %d bytes: %s\n", size, PAYLOAD,
               total_bad == 0 ? "all payloads intact" : "PAYLOAD MISMATCH");
    MPI_Finalize();
    return total_bad == 0 ? 0 : 1;
}
