/*
 * The application of `bee bench checkpoint`: a process whose state is BYTES bytes in
 * memory, which it saves into the shared directory when bee asks and loads again after
 * bee moved it to the next platform.
 *
 *   ckpt-state DIR BYTES ROUNDS [--restart]
 *
 * At start it fills its state from a fixed pseudo-random sequence, prints "ready", and
 * waits. When DIR/checkpoint-now exists it writes the state to DIR/state (through a
 * temporary file, fsynced, then renamed) and its checksum and round to DIR/state.sum,
 * removes the request, prints "saved" and exits 0. With --restart it reads DIR/state
 * back, checks its size and checksum, removes the file (the state lives in memory again,
 * and the data image bee sizes for the checkpoint has room for one copy, not two), prints
 * "restored", and then either exits 0 (after ROUNDS checkpoints) or waits for the next
 * request. Every line starts with "ckpt-state: ", which the benchmark reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void fail(const char *what, const char *path)
{
    fprintf(stderr, "ckpt-state: %s %s: %s\n", what, path, strerror(errno));
    exit(2);
}

/* An order-dependent checksum of the state's 64-bit words. */
static uint64_t checksum(const uint64_t *words, size_t count)
{
    uint64_t sum = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < count; i++)
        sum = (sum ^ words[i]) * 0x100000001b3ULL;
    return sum;
}

static void fill(uint64_t *words, size_t count)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < count; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words[i] = x;
    }
}

static void write_all(int fd, const char *data, size_t size, const char *path)
{
    while (size > 0) {
        ssize_t n = write(fd, data, size > (1 << 20) ? (1 << 20) : size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("cannot write", path);
        data += n;
        size -= (size_t)n;
    }
}

static void read_all(int fd, char *data, size_t size, const char *path)
{
    while (size > 0) {
        ssize_t n = read(fd, data, size > (1 << 20) ? (1 << 20) : size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("cannot read", path);
        data += n;
        size -= (size_t)n;
    }
}

static void save(const char *dir, const uint64_t *words, size_t bytes, long round)
{
    char path[4096], tmp[4200], sum[4200];
    snprintf(path, sizeof path, "%s/state", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    snprintf(sum, sizeof sum, "%s.sum", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        fail("cannot create", tmp);
    write_all(fd, (const char *)words, bytes, tmp);
    if (fsync(fd) != 0 || close(fd) != 0)
        fail("cannot write", tmp);
    FILE *out = fopen(sum, "w");
    if (out == NULL)
        fail("cannot create", sum);
    fprintf(out, "%zu %016" PRIx64 " %ld\n", bytes, checksum(words, bytes / 8), round);
    if (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0)
        fail("cannot write", sum);
    if (rename(tmp, path) != 0)
        fail("cannot rename", tmp);
}

/* Loads the state into words and returns the round it was saved in. */
static long load(const char *dir, uint64_t *words, size_t bytes)
{
    char path[4096], sum[4200];
    snprintf(path, sizeof path, "%s/state", dir);
    snprintf(sum, sizeof sum, "%s.sum", path);
    FILE *in = fopen(sum, "r");
    if (in == NULL)
        fail("cannot read", sum);
    size_t saved_bytes;
    uint64_t saved_sum;
    long round;
    if (fscanf(in, "%zu %" SCNx64 " %ld", &saved_bytes, &saved_sum, &round) != 3) {
        fprintf(stderr, "ckpt-state: %s is damaged\n", sum);
        exit(2);
    }
    fclose(in);
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        fail("cannot read", path);
    if (saved_bytes != bytes || (size_t)st.st_size != bytes) {
        fprintf(stderr, "ckpt-state: %s holds %jd bytes, expected %zu\n", path,
                (intmax_t)st.st_size, bytes);
        exit(2);
    }
    read_all(fd, (char *)words, bytes, path);
    close(fd);
    if (checksum(words, bytes / 8) != saved_sum) {
        fprintf(stderr, "ckpt-state: %s does not match its checksum\n", path);
        exit(2);
    }
    if (unlink(path) != 0)
        fail("cannot remove", path);
    return round;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: ckpt-state DIR BYTES ROUNDS [--restart]\n");
        return 2;
    }
    const char *dir = argv[1];
    size_t bytes = (size_t)strtoull(argv[2], NULL, 10) / 8 * 8;
    long rounds = atol(argv[3]);
    int restart = argc > 4 && strcmp(argv[4], "--restart") == 0;
    uint64_t *words = malloc(bytes);
    if (words == NULL || bytes == 0) {
        fprintf(stderr, "ckpt-state: cannot hold %zu bytes of state\n", bytes);
        return 2;
    }

    long round = 0;
    if (restart) {
        round = load(dir, words, bytes);
        printf("ckpt-state: restored %zu bytes of round %ld\n", bytes, round);
        if (round >= rounds) {
            printf("ckpt-state: done after %ld checkpoint(s)\n", round);
            return 0;
        }
    } else {
        fill(words, bytes / 8);
        printf("ckpt-state: ready with %zu bytes of state\n", bytes);
    }
    fflush(stdout);

    char request[4096];
    snprintf(request, sizeof request, "%s/checkpoint-now", dir);
    while (access(request, F_OK) != 0)
        usleep(100 * 1000);
    save(dir, words, bytes, round + 1);
    unlink(request);
    printf("ckpt-state: saved %zu bytes in round %ld\n", bytes, round + 1);
    return 0;
}
