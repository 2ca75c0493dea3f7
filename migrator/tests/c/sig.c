/* SIGUSR1 has a handler; SIGUSR2 is blocked. Prints "ready", then on
 * SIGUSR1 reports whether SIGUSR2 is still blocked and pending and exits. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t hits;
static void on_usr1(int s) {
    (void)s;
    hits++;
    write(1, "handler\n", 8);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, 0);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    sigprocmask(SIG_BLOCK, &m, 0);
    write(1, "ready\n", 6);
    while (!hits) usleep(1000);
    sigset_t cur, pend;
    sigprocmask(SIG_BLOCK, 0, &cur);
    sigpending(&pend);
    char buf[64];
    int len = snprintf(buf, sizeof buf, "usr1 blocked=%d pending=%d\n",
                       sigismember(&cur, SIGUSR2), sigismember(&pend, SIGUSR2));
    write(1, buf, len);
    return 0;
}
