/*
 * The floor a refusal can cost, for `npm run soak`'s refused-flood rows:
 * a minimal C server that accepts, checks the peer's address, writes the
 * refusal line and closes. The soak floods it with soak/flood.c exactly as
 * it floods moat, and compares their CPU time per refused connection
 * (/proc/PID/stat), so the row measures what moat adds to what the kernel
 * costs anyway on this machine.
 *
 * Usage: refuse PORT   (0 picks a free port; the port is printed on stdout)
 *
 * Listens on 127.0.0.1 only. Blocking accept loop, one thread, no logging:
 * the cheapest a refusal can be in user space. Runs until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NOTICE "ERR ACCESS_DENIED access refused by server\n"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: refuse PORT\n");
    return 2;
  }
  int port = atoi(argv[1]);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    perror("refuse");
    return 1;
  }
  printf("%d\n", ntohs(a.sin_port));
  fflush(stdout);
  const size_t n = strlen(NOTICE);
  for (;;) {
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    int c = accept4(fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
    if (c < 0) continue;
    // Everyone but 127.0.0.1 is refused (as `moat serve --allow 127.0.0.1`);
    // 127.0.0.1 is closed too: this server has nothing to serve.
    if (peer.sin_addr.s_addr != htonl(INADDR_LOOPBACK)) {
      ssize_t w = write(c, NOTICE, n);
      (void)w;
    }
    close(c);
  }
}
