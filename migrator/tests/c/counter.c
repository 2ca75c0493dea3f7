/* Appends 1..N to seq.txt in its cwd and to stdout, one line every ~10 ms,
 * then exits 7. Uses the vDSO (clock_gettime) every iteration and fails
 * with 99 if the clock misbehaves, so a broken vDSO remap shows. Grows the
 * brk heap by 64 KiB per line and checks all of it at the end (95 if any
 * byte changed), so the restored program break must work. If input.txt
 * exists, reads one 8-byte record "%07d\n" per line from it and exits 93
 * when the record is not the line number: the file offset must move too. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 300;
    int fd = open("seq.txt", O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return 98;
    int in = open("input.txt", O_RDONLY);
    unsigned char **heap = calloc(n + 1, sizeof *heap);
    struct timespec prev, now;
    clock_gettime(CLOCK_MONOTONIC, &prev);
    for (int i = 1; i <= n; i++) {
        char buf[32];
        int len = snprintf(buf, sizeof buf, "%d\n", i);
        if (in >= 0) {
            char rec[9] = {0};
            if (read(in, rec, 8) != 8 || atoi(rec) != i) return 93;
        }
        if (write(fd, buf, len) != len) return 97;
        if (write(1, buf, len) != len) return 96;
        for (int k = 0; k < 1000; k++) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec < prev.tv_sec ||
                (now.tv_sec == prev.tv_sec && now.tv_nsec < prev.tv_nsec))
                return 99;
            prev = now;
        }
        heap[i] = malloc(64 * 1024); /* below the mmap threshold: brk */
        if (!heap[i]) return 94;
        memset(heap[i], i & 0xff, 64 * 1024);
        usleep(10000);
    }
    for (int i = 1; i <= n; i++)
        for (int k = 0; k < 64 * 1024; k++)
            if (heap[i][k] != (i & 0xff)) return 95;
    return 7;
}
