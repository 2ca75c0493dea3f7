/* Holds a device (argv[1]) open and keeps printing a counter. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = open(argc > 1 ? argv[1] : "/dev/kmsg", O_RDONLY | O_NONBLOCK);
    if (fd < 0) return 2;
    for (int i = 1;; i++) {
        char buf[32];
        int len = snprintf(buf, sizeof buf, "%d\n", i);
        write(1, buf, len);
        usleep(10000);
    }
}
