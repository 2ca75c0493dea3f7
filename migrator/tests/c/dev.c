/* Holds argv[1] open — a path, or "socket" / "eventfd" for those kernel
 * objects — and keeps printing a counter. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "/dev/kmsg";
    int fd;
    if (!strcmp(what, "socket"))
        fd = socket(AF_INET, SOCK_DGRAM, 0);
    else if (!strcmp(what, "eventfd"))
        fd = eventfd(0, 0);
    else
        fd = open(what, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return 2;
    for (int i = 1;; i++) {
        char buf[32];
        int len = snprintf(buf, sizeof buf, "%d\n", i);
        write(1, buf, len);
        usleep(10000);
    }
}
