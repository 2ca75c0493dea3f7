/* Holds MB MiB of anonymous memory and keeps rewriting it at RATE MiB/s,
 * page after page (RATE 0: never). Every page holds its generation in its
 * first word and a pattern of (page, word, generation) in the others.
 * Prints "ready"; on SIGUSR2 checks every page and prints "ok <pages>
 * <sum>" or "bad <page>", then exits 0. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr2(int s) { (void)s; go = 1; }

static uint64_t pat(uint64_t page, uint64_t k, uint64_t gen) {
    return ((page * 512 + k + 1) * 0x9E3779B97F4A7C15ull) ^ (gen << 17) ^ k;
}

static void fill(uint64_t *q, uint64_t page, uint64_t gen) {
    for (uint64_t k = 1; k < 512; k++) q[k] = pat(page, k, gen);
    q[0] = gen;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
    double rate = argc > 2 ? strtod(argv[2], 0) : 0;
    size_t npages = mb * 256;
    uint64_t *p = mmap(0, npages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    for (size_t i = 0; i < npages; i++) fill(p + i * 512, i, 1);
    signal(SIGUSR2, on_usr2);
    printf("ready\n");
    fflush(stdout);
    double start = now(), done = 0;
    size_t cursor = 0;
    while (!go) {
        double want = (now() - start) * rate * 256;
        while (done < want && !go) {
            size_t i = cursor++ % npages;
            fill(p + i * 512, i, p[i * 512] + 1);
            done += 1;
        }
        usleep(1000);
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < npages; i++) {
        uint64_t *q = p + i * 512, gen = q[0];
        for (uint64_t k = 1; k < 512; k++) {
            if (q[k] != pat(i, k, gen)) {
                printf("bad %zu\n", i);
                return 1;
            }
            sum += q[k];
        }
    }
    printf("ok %zu %llu\n", npages, (unsigned long long)sum);
    return 0;
}
