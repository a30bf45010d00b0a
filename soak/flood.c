/*
 * The refused-connection flood generator of `npm run soak` (soak/hostile.ts
 * compiles it with cc when there is one, and falls back to its node:net
 * generator when there is not).
 *
 * Why C: the flood shares the machine's 2 CPUs with the server and the get
 * it must not slow down. The node:net generator spent ~125 us of CPU per
 * connection, so at 5,000 connections per second the attacker alone took
 * more than half a core, and the test measured the generator as much as the
 * server. A real attacker runs elsewhere; this one is made as cheap as a
 * connection can be (non-blocking connect, epoll, one read, close).
 *
 * Usage: flood PORT RATE DURATION_MS HOSTS MAX_IN_FLIGHT DRAIN_MS
 *
 * Connects to 127.0.0.1:PORT from 127.0.X.Y (X.Y running over HOSTS
 * addresses from 127.0.0.2, skipping .0, .1 and .255, as refusedAddress()
 * in hostile.ts), RATE attempts per second for DURATION_MS, at most
 * MAX_IN_FLIGHT open at once; reads what the server says until it closes;
 * then waits up to DRAIN_MS for the last ones. Prints one JSON line with the
 * same fields as FloodStats, and its own CPU time (cpuMs). Loopback only,
 * bounded in count and time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NOTICE "ERR ACCESS_DENIED access refused by server\n"
#define KEEP 64

struct conn {
  int used;
  int connected;
  int len;
  char text[KEEP];
};

static struct conn *conns;
static int conn_cap;
static long attempted, notice, closed_other, connect_errors, unexpected_n;
static char unexpected[10][80];
static int open_now;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void refused_address(long i, long hosts, struct sockaddr_in *a) {
  long n = (i % hosts) % (250 * 200);
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_addr.s_addr = htonl((127u << 24) | ((unsigned)(n / 250) << 8) | (unsigned)(n % 250 + 2));
}

static void note_unexpected(const char *text, int len) {
  unexpected_n++;
  if (unexpected_n > 10) return;
  char *out = unexpected[unexpected_n - 1];
  int o = 0;
  for (int i = 0; i < len && o < 70; i++) {
    unsigned char c = (unsigned char)text[i];
    // JSON-safe: printable ASCII except quote and backslash, else '?'.
    out[o++] = (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?';
  }
  out[o] = 0;
}

static void finish(int epfd, int fd) {
  struct conn *c = &conns[fd];
  if (!c->connected) connect_errors++;
  else if (c->len >= 18 && memcmp(c->text, "ERR ACCESS_DENIED ", 18) == 0) {
    notice++;
    if (c->len != (int)strlen(NOTICE) || memcmp(c->text, NOTICE, c->len) != 0) {
      note_unexpected(c->text, c->len);
    }
  } else if (c->len == 0) closed_other++;
  else note_unexpected(c->text, c->len);
  epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  c->used = 0;
  open_now--;
}

static void start(int epfd, int port, long hosts) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  long i = attempted++;
  if (fd < 0) {
    connect_errors++;
    return;
  }
  if (fd >= conn_cap) {
    close(fd);
    connect_errors++;
    return;
  }
  struct sockaddr_in local, remote;
  refused_address(i, hosts, &local);
  memset(&remote, 0, sizeof remote);
  remote.sin_family = AF_INET;
  remote.sin_port = htons((unsigned short)port);
  remote.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&local, sizeof local) != 0 ||
      (connect(fd, (struct sockaddr *)&remote, sizeof remote) != 0 && errno != EINPROGRESS)) {
    close(fd);
    connect_errors++;
    return;
  }
  struct conn *c = &conns[fd];
  c->used = 1;
  c->connected = 0;
  c->len = 0;
  open_now++;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.fd = fd};
  epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void handle(int epfd, struct epoll_event *ev) {
  int fd = ev->data.fd;
  struct conn *c = &conns[fd];
  if (!c->used) return;
  if (!c->connected && (ev->events & (EPOLLOUT | EPOLLIN))) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      finish(epfd, fd);
      return;
    }
    c->connected = 1;
    struct epoll_event mod = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &mod);
  }
  if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    char buf[512];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n > 0) {
        int room = KEEP - c->len;
        int take = n < room ? (int)n : room;
        memcpy(c->text + c->len, buf, take);
        c->len += take;
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) finish(epfd, fd);
      break;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: flood PORT RATE DURATION_MS HOSTS MAX_IN_FLIGHT DRAIN_MS\n");
    return 2;
  }
  int port = atoi(argv[1]);
  double rate = atof(argv[2]);
  double duration = atof(argv[3]);
  long hosts = atol(argv[4]);
  int max_in_flight = atoi(argv[5]);
  double drain = atof(argv[6]);
  if (port <= 0 || port > 65535 || rate <= 0 || duration <= 0 || hosts <= 0 || max_in_flight <= 0) {
    fprintf(stderr, "flood: bad arguments\n");
    return 2;
  }
  conn_cap = max_in_flight + 1024;
  conns = calloc((size_t)conn_cap, sizeof *conns);
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (conns == NULL || epfd < 0) {
    perror("flood");
    return 1;
  }
  long total = (long)(rate * duration / 1000.0);
  struct epoll_event events[256];
  double started = now_ms();
  double attempts_end = started;
  for (;;) {
    double elapsed = now_ms() - started;
    long due = (long)(rate * elapsed / 1000.0);
    if (due > total) due = total;
    while (attempted < due && open_now < max_in_flight) start(epfd, port, hosts);
    if (attempted >= total || elapsed >= duration) {
      attempts_end = now_ms();
      break;
    }
    int n = epoll_wait(epfd, events, 256, 1);
    for (int i = 0; i < n; i++) handle(epfd, &events[i]);
  }
  while (open_now > 0 && now_ms() - attempts_end < drain) {
    int n = epoll_wait(epfd, events, 256, 10);
    for (int i = 0; i < n; i++) handle(epfd, &events[i]);
  }
  long unfinished = open_now;
  double ended = now_ms();
  double attempted_ms = attempts_end - started;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu_ms = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                  (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
  printf("{\"attempted\":%ld,\"refusedNotice\":%ld,\"closedOther\":%ld,\"connectErrors\":%ld,"
         "\"unfinished\":%ld,\"rate\":%.1f,\"ms\":%.1f,\"cpuMs\":%.0f,\"unexpected\":[",
         attempted, notice, closed_other, connect_errors, unfinished,
         attempted / ((attempted_ms > duration ? attempted_ms : duration) / 1000.0), ended - started, cpu_ms);
  for (long i = 0; i < unexpected_n && i < 10; i++) printf("%s\"%s\"", i ? "," : "", unexpected[i]);
  printf("]}\n");
  return 0;
}
