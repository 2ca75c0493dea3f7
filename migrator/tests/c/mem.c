/* Holds MB MiB of anonymous memory filled with a known pattern. Prints
 * "ready <sum>"; on SIGUSR2 re-verifies every word and prints "ok <sum>" or
 * "bad <index>", then exits 0. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr2(int s) { (void)s; go = 1; }

static uint64_t pat(uint64_t i) { return (i + 1) * 0x9E3779B97F4A7C15ull ^ (i >> 7); }

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? strtoul(argv[1], 0, 10) : 256;
    size_t n = mb * 1024 * 1024 / 8;
    uint64_t *p = malloc(n * 8);
    if (!p) return 2;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) { p[i] = pat(i); sum += p[i]; }
    signal(SIGUSR2, on_usr2);
    char buf[64];
    int len = snprintf(buf, sizeof buf, "ready %llu\n", (unsigned long long)sum);
    write(1, buf, len);
    while (!go) usleep(1000);
    uint64_t s2 = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != pat(i)) {
            len = snprintf(buf, sizeof buf, "bad %zu\n", i);
            write(1, buf, len);
            return 1;
        }
        s2 += p[i];
    }
    len = snprintf(buf, sizeof buf, "ok %llu\n", (unsigned long long)s2);
    write(1, buf, len);
    return 0;
}
