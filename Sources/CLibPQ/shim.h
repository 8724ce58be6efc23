#ifndef CLOUDSCAN_CLIBPQ_SHIM_H
#define CLOUDSCAN_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#include <poll.h>

/// poll(2) on the connection's socket for readability, in milliseconds; -1 on error.
static inline int cloudscan_pq_wait_readable(PGconn *conn, int timeout_ms) {
    int fd = PQsocket(conn);
    if (fd < 0) return -1;
    struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
    return poll(&p, 1, timeout_ms);
}
#endif
