/* Multi-threaded test programs.
 *
 * threads count N: four workers each add 1 to a shared counter N times under
 *   a mutex, napping 2 ms between additions; every 100th addition prints
 *   "c <counter>". The main thread joins them and prints "total <counter>",
 *   exiting 0 only when the total is 4*N.
 * threads cond: a waiter thread blocks in pthread_cond_wait; "ready" is
 *   printed once it is waiting. SIGUSR1 makes the main thread signal the
 *   condition; the waiter prints "woke <value>", the main thread joins it and
 *   prints "joined".
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long counter, per_thread;
static int flag, waiting;
static volatile sig_atomic_t go;

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void *worker(void *arg) {
    (void)arg;
    for (long i = 0; i < per_thread; i++) {
        pthread_mutex_lock(&mu);
        long c = ++counter;
        if (c % 100 == 0) {
            printf("c %ld\n", c);
            fflush(stdout);
        }
        pthread_mutex_unlock(&mu);
        nap_ms(2);
    }
    return NULL;
}

static void *waiter(void *arg) {
    (void)arg;
    pthread_mutex_lock(&mu);
    waiting = 1;
    while (!flag)
        pthread_cond_wait(&cv, &mu);
    printf("woke %d\n", flag);
    fflush(stdout);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void on_usr1(int sig) {
    (void)sig;
    go = 1;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "count") == 0) {
        per_thread = atol(argv[2]);
        pthread_t t[4];
        for (int i = 0; i < 4; i++)
            pthread_create(&t[i], NULL, worker, NULL);
        printf("ready\n");
        fflush(stdout);
        for (int i = 0; i < 4; i++)
            pthread_join(t[i], NULL);
        printf("total %ld\n", counter);
        fflush(stdout);
        return counter == 4 * per_thread ? 0 : 1;
    }
    if (argc >= 2 && strcmp(argv[1], "cond") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
        pthread_t t;
        pthread_create(&t, NULL, waiter, NULL);
        for (;;) {
            pthread_mutex_lock(&mu);
            int w = waiting;
            pthread_mutex_unlock(&mu);
            if (w)
                break;
            nap_ms(1);
        }
        printf("ready\n");
        fflush(stdout);
        while (!go)
            nap_ms(10);
        pthread_mutex_lock(&mu);
        flag = 42;
        pthread_cond_signal(&cv);
        pthread_mutex_unlock(&mu);
        pthread_join(t, NULL);
        printf("joined\n");
        fflush(stdout);
        return 0;
    }
    fprintf(stderr, "usage: threads count N | threads cond\n");
    return 2;
}
