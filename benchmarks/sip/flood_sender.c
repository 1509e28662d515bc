/* flood_sender: send prebuilt SIP datagrams as fast as one process can (sendmmsg), from one source address
 * and port, for a fixed time, and count what comes back on the same socket by status code.
 *
 * Built at run time by benchmarks/sip/flood.py (cc -O2 -pthread), which also holds the Python fallback
 * speaking the same protocol. Loopback only: both addresses must be in 127.0.0.0/8.
 *
 *   flood_sender SRC_IP SRC_PORT DST_IP DST_PORT MSGFILE DURATION_S
 *
 * MSGFILE: the datagrams, each as a 4-byte little-endian length and the bytes; they are sent in turn,
 * cycling. Every "########" in a datagram (at most MAX_STAMPS of them) is overwritten before each send with
 * the number of datagrams sent so far, in 8 hex digits, so that no two datagrams are alike (a scanner's
 * Call-IDs, branches and tags are all new): a stateful server cannot take a repeat for a retransmission.
 * stdout, one line each, flushed:
 *   ready MONO                         the socket is bound, the receiver runs, sending starts (MONO:
 *                                      CLOCK_MONOTONIC seconds, Python's time.monotonic())
 *   tick T SENT RECEIVED ERRORS        about every second while sending (T: seconds since the start)
 *   sent SENT ELAPSED_S ERRORS MONO RECEIVED   the sending is over
 *   rtick T RECEIVED                   about every second afterwards (the server may still answer)
 *   status CODE COUNT                  after stdin closes (or SIGTERM): responses by status code
 *   other COUNT                        datagrams that were not SIP responses
 *   end
 * The receiver thread reads the socket (16 MB receive buffer when allowed) with recvmmsg until the end.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define RBATCH 64
#define RSIZE 4096
#define MAX_STAMPS 8
#define MARK "########"

static int sock = -1;
static atomic_long received;
static atomic_long other;
static atomic_long by_status[700];
static atomic_int stop_receiver;
static volatile sig_atomic_t terminated;

struct message {
    char *data;
    size_t len;
    int nstamps;
    size_t stamps[MAX_STAMPS];
};

static void stamp(struct message *m, unsigned long n) {
    static const char hex[] = "0123456789abcdef";
    char digits[8];
    for (int i = 7; i >= 0; i--, n >>= 4) digits[i] = hex[n & 15];
    for (int s = 0; s < m->nstamps; s++) memcpy(m->data + m->stamps[s], digits, 8);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int loopback(const char *ip, struct in_addr *out) {
    if (inet_pton(AF_INET, ip, out) != 1) return 0;
    return (ntohl(out->s_addr) >> 24) == 127;
}

static void on_term(int sig) { (void)sig; terminated = 1; }

static void *receiver(void *arg) {
    (void)arg;
    static char bufs[RBATCH][RSIZE];
    struct mmsghdr msgs[RBATCH];
    struct iovec iovs[RBATCH];
    for (int i = 0; i < RBATCH; i++) {
        iovs[i].iov_base = bufs[i];
        iovs[i].iov_len = RSIZE;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    while (!atomic_load(&stop_receiver)) {
        int n = recvmmsg(sock, msgs, RBATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue; /* timeout (SO_RCVTIMEO) or EINTR */
        for (int i = 0; i < n; i++) {
            const char *b = bufs[i];
            unsigned len = msgs[i].msg_len;
            int code = -1;
            if (len >= 12 && memcmp(b, "SIP/2.0 ", 8) == 0 && b[8] >= '1' && b[8] <= '6' &&
                b[9] >= '0' && b[9] <= '9' && b[10] >= '0' && b[10] <= '9')
                code = (b[8] - '0') * 100 + (b[9] - '0') * 10 + (b[10] - '0');
            if (code >= 0 && code < 700) atomic_fetch_add(&by_status[code], 1);
            else atomic_fetch_add(&other, 1);
            atomic_fetch_add(&received, 1);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s SRC_IP SRC_PORT DST_IP DST_PORT MSGFILE DURATION_S\n", argv[0]);
        return 2;
    }
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    if (!loopback(argv[1], &src.sin_addr) || !loopback(argv[3], &dst.sin_addr)) {
        fprintf(stderr, "flood_sender: both addresses must be in 127.0.0.0/8\n");
        return 2;
    }
    src.sin_port = htons((uint16_t)atoi(argv[2]));
    dst.sin_port = htons((uint16_t)atoi(argv[4]));
    double duration = atof(argv[6]);

    FILE *f = fopen(argv[5], "rb");
    if (!f) { perror("flood_sender: MSGFILE"); return 2; }
    size_t cap = 1024, count = 0;
    struct message *msgs = malloc(cap * sizeof *msgs);
    for (;;) {
        uint8_t hdr[4];
        if (fread(hdr, 1, 4, f) != 4) break;
        size_t len = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (size_t)hdr[3] << 24;
        char *data = malloc(len);
        if (!data || fread(data, 1, len, f) != len) { fprintf(stderr, "flood_sender: short MSGFILE\n"); return 2; }
        if (count == cap) msgs = realloc(msgs, (cap *= 2) * sizeof *msgs);
        struct message *m = &msgs[count++];
        m->data = data;
        m->len = len;
        m->nstamps = 0;
        for (char *p = data; m->nstamps < MAX_STAMPS && (p = memmem(p, data + len - p, MARK, 8)); p += 8)
            m->stamps[m->nstamps++] = (size_t)(p - data);
    }
    fclose(f);
    if (count < BATCH) { fprintf(stderr, "flood_sender: fewer than %d messages\n", BATCH); return 2; }

    sock = socket(AF_INET, SOCK_DGRAM, 0);
    if (sock < 0) { perror("socket"); return 1; }
    int one = 1, big = 16 * 1024 * 1024;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
        setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    struct timeval tv = {0, 200000};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (bind(sock, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind"); return 1; }
    if (connect(sock, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 1; }

    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_t rx;
    pthread_create(&rx, NULL, receiver, NULL);
    printf("ready %.6f\n", now_s());
    fflush(stdout);

    struct mmsghdr batch[BATCH];
    struct iovec iov[BATCH];
    memset(batch, 0, sizeof batch);
    long sent = 0, errors = 0;
    size_t next = 0;
    double t0 = now_s(), next_tick = t0 + 1.0, t = t0;
    while (!terminated && (t = now_s()) - t0 < duration) {
        for (int i = 0; i < BATCH; i++) {
            struct message *m = &msgs[next];
            stamp(m, (unsigned long)(sent + i));
            iov[i].iov_base = m->data;
            iov[i].iov_len = m->len;
            batch[i].msg_hdr.msg_iov = &iov[i];
            batch[i].msg_hdr.msg_iovlen = 1;
            if (++next == count) next = 0;
        }
        int n = sendmmsg(sock, batch, BATCH, 0);
        if (n < 0) {
            errors++;
            if (errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED && errno != EINTR) {
                perror("sendmmsg");
                break;
            }
            continue;
        }
        sent += n;
        if (n < BATCH) next = (next + count - (size_t)(BATCH - n) % count) % count; /* resend the unsent ones */
        if (t >= next_tick) {
            printf("tick %.3f %ld %ld %ld\n", t - t0, sent, atomic_load(&received), errors);
            fflush(stdout);
            next_tick += 1.0;
        }
    }
    double t_end = now_s(), elapsed = t_end - t0;
    printf("sent %ld %.6f %ld %.6f %ld\n", sent, elapsed, errors, t_end, atomic_load(&received));
    fflush(stdout);

    /* keep counting the answers (and a stateful server's retransmissions) until told to stop */
    double rt0 = now_s(), rnext = rt0 + 1.0;
    while (!terminated) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(0, &fds);
        struct timeval wait = {0, 200000};
        int r = select(1, &fds, NULL, NULL, &wait);
        if (r > 0) {
            char tmp[256];
            if (read(0, tmp, sizeof tmp) <= 0) break; /* stdin closed: finish */
        }
        double tn = now_s();
        if (tn >= rnext) {
            printf("rtick %.3f %ld\n", tn - t0, atomic_load(&received));
            fflush(stdout);
            rnext += 1.0;
        }
    }
    atomic_store(&stop_receiver, 1);
    pthread_join(rx, NULL);
    for (int c = 0; c < 700; c++) {
        long v = atomic_load(&by_status[c]);
        if (v) printf("status %d %ld\n", c, v);
    }
    printf("other %ld\nend\n", atomic_load(&other));
    fflush(stdout);
    close(sock);
    return 0;
}
