/* LD_PRELOAD shim: set TCP_NODELAY on every accepted socket.
 *
 * Garage 2.5 does not set TCP_NODELAY on its S3 sockets, so on keep-alive connections each
 * small response waits for the client's delayed ACK (~40 ms). The test harness, the demo and
 * the benchmark run Garage with this shim so that measurements show the clients, not Nagle.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void set_nodelay(int fd) {
    if (fd >= 0) {
        int one = 1;
        /* Fails harmlessly (ENOTSUP/EOPNOTSUPP) on sockets that are not TCP. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int s = real(fd, addr, len);
    set_nodelay(s);
    return s;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int s = real(fd, addr, len, flags);
    set_nodelay(s);
    return s;
}
