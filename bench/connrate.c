/* A small TCP connection-rate load generator for bench/connrate.py.
 *
 *   connrate server PORT
 *       listen on 0.0.0.0:PORT; accept and close, forever (until killed).
 *   connrate client ADDR PORT SECONDS CONCURRENCY
 *       keep CONCURRENCY non-blocking connects in flight to ADDR:PORT for SECONDS; each one is
 *       socket, connect (SYN .. SYN-ACK), close.  The close is abortive (SO_LINGER 0: a RST
 *       instead of FIN + TIME_WAIT), so that ephemeral ports and conntrack entries are not
 *       exhausted at tens of thousands of connections a second.  Prints one JSON object:
 *       connections completed, errors, the rate, and the connect latency (connect() call to
 *       the socket turning writable) p50/p90/p99/max in microseconds.
 *
 * Built by bench/connrate.py with `gcc -O2` into a temporary directory.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (8u * 1024u * 1024u)
#define MAX_CONC 1024

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int server(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
    if (listen(fd, 65535) < 0) { perror("listen"); return 1; }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept4(fd, NULL, NULL, 0);
        if (c >= 0) close(c);
        else if (errno != EINTR && errno != ECONNABORTED) { perror("accept"); return 1; }
    }
}

struct slot { int fd; uint64_t t0; };

static int open_one(struct slot *s, int ep, const struct sockaddr_in *dst, int idx,
                    uint64_t *errors) {
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) { perror("socket"); return -1; }
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        s->t0 = now_ns();
        int r = connect(fd, (const struct sockaddr *)dst, sizeof *dst);
        if (r < 0 && errno != EINPROGRESS) {
            (*errors)++;
            close(fd);
            if (*errors > 1000000) return -1;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)idx};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) { perror("epoll_ctl"); return -1; }
        s->fd = fd;
        return 0;
    }
}

static int client(const char *addr, int port, double seconds, int conc) {
    if (conc < 1 || conc > MAX_CONC) { fprintf(stderr, "concurrency 1..%d\n", MAX_CONC); return 2; }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, addr, &dst.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    uint32_t *lat = malloc(sizeof(uint32_t) * MAX_SAMPLES);
    if (!lat) { perror("malloc"); return 1; }
    int ep = epoll_create1(0);
    struct slot slots[MAX_CONC];
    uint64_t ok = 0, errors = 0, n = 0;
    uint64_t start = now_ns(), stop = start + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < conc; i++)
        if (open_one(&slots[i], ep, &dst, i, &errors) < 0) return 1;
    int inflight = conc;
    struct epoll_event evs[MAX_CONC];
    uint64_t end = start;
    while (inflight > 0) {
        int k = epoll_wait(ep, evs, MAX_CONC, 2000);
        if (k < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        uint64_t t = now_ns();
        if (k == 0 && t > stop + 3000000000ull) break;  /* stuck connects: give up */
        for (int j = 0; j < k; j++) {
            int i = (int)evs[j].data.u32;
            struct slot *s = &slots[i];
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == 0) {
                ok++;
                uint64_t d = (t - s->t0) / 1000;  /* microseconds */
                if (n < MAX_SAMPLES) lat[n++] = d > 0xffffffffu ? 0xffffffffu : (uint32_t)d;
            } else {
                errors++;
            }
            close(s->fd);  /* epoll forgets a closed fd by itself */
            s->fd = -1;
            if (t < stop) {
                if (open_one(s, ep, &dst, i, &errors) < 0) return 1;
            } else {
                inflight--;
                end = t;
            }
        }
    }
    if (end < stop) end = now_ns();
    double elapsed = (double)(end - start) / 1e9;
    qsort(lat, n, sizeof *lat, cmp_u32);
#define PCT(p) (n ? lat[(size_t)((double)(n - 1) * (p))] : 0)
    printf("{\"connections\": %llu, \"errors\": %llu, \"seconds\": %.4f, \"rate\": %.1f, "
           "\"p50_us\": %u, \"p90_us\": %u, \"p99_us\": %u, \"max_us\": %u, \"samples\": %llu}\n",
           (unsigned long long)ok, (unsigned long long)errors, elapsed, (double)ok / elapsed,
           PCT(0.50), PCT(0.90), PCT(0.99), n ? lat[n - 1] : 0, (unsigned long long)n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]));
    if (argc == 6 && strcmp(argv[1], "client") == 0)
        return client(argv[2], atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: connrate server PORT | connrate client ADDR PORT SECONDS CONCURRENCY\n");
    return 2;
}
