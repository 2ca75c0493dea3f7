/* Prints its pid, then naps forever; SIGUSR1 makes it print "handler-ran". */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void on_usr1(int sig) {
    (void)sig;
    static const char msg[] = "handler-ran\n";
    write(1, msg, sizeof msg - 1);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    printf("%d\n", getpid());
    fflush(stdout);
    for (;;) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
