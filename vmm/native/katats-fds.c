/*
 * katats-fds: file descriptors over unix sockets for the host side of katats (cloud-hypervisor's
 * API takes TAP fds as SCM_RIGHTS on the same write as the HTTP request; QEMU's QMP getfd takes
 * them the same way). Node can neither send nor receive SCM_RIGHTS on a stream socket, so:
 *
 *   send --connect SOCKET [--fd N]... [--tap NAME]... [--take PID:FD]...
 *        Connects the unix socket SOCKET, reads the payload from stdin (at most 1 MiB) and writes
 *        it in one sendmsg carrying the fds: inherited ones (--fd), TAP queues it opens itself
 *        (--tap, IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; a missing TAP is created), or fds taken from
 *        another process with pidfd_getfd (--take). Then copies what the peer answers to stdout
 *        until the peer closes (the caller bounds it). Without --connect the socket is fd 3 and
 *        nothing is read back. (Node cannot keep reading a socket it handed to a child's stdio,
 *        so the answer comes back through the helper.)
 *
 *   front LISTEN BACKEND
 *        Listens on the unix socket LISTEN (mode 0600) and relays every connection to the unix
 *        socket BACKEND (an HTTP server that cannot read ancillary data). The request head is read
 *        with recvmsg; fds that came with it stay open in the relaying process, whose pid and fd
 *        numbers are added to the head as "X-Katats-Fds: PID:FD,FD" for the backend to --take.
 *        They are closed when the connection ends. Fds arriving later are closed at once.
 *        One process per connection; a connection lives at most 10 minutes. The front dies with
 *        the process that started it, and its connections with the front.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_FDS 64
#define MAX_PAYLOAD (1 << 20)
#define MAX_HEAD 65536
#define CONN_SECONDS 600

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("katats-fds: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static int open_tap(const char *name) {
  if (strlen(name) >= IFNAMSIZ) die("tap name %s too long", name);
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) die("open /dev/net/tun: %s", strerror(errno));
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF %s: %s", name, strerror(errno));
  return fd;
}

static int take_fd(const char *spec) {
  char *colon = strchr(spec, ':');
  if (!colon) die("--take wants PID:FD, got %s", spec);
  int pid = atoi(spec), target = atoi(colon + 1);
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) die("pidfd_open %d: %s", pid, strerror(errno));
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, target, 0);
  if (fd < 0) die("pidfd_getfd %d:%d: %s", pid, target, strerror(errno));
  close(pidfd);
  return fd;
}

static int connect_unix(const char *path);
static int write_all(int fd, const char *p, size_t n);

static int mode_send(int argc, char **argv) {
  int fds[MAX_FDS], n = 0, sock = 3;
  const char *connect_to = NULL;
  for (int i = 0; i < argc; i++) {
    if (n >= MAX_FDS) die("more than %d fds", MAX_FDS);
    if (!strcmp(argv[i], "--connect") && i + 1 < argc) connect_to = argv[++i];
    else if (!strcmp(argv[i], "--fd") && i + 1 < argc) fds[n++] = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--tap") && i + 1 < argc) fds[n++] = open_tap(argv[++i]);
    else if (!strcmp(argv[i], "--take") && i + 1 < argc) fds[n++] = take_fd(argv[++i]);
    else die("send: unknown argument %s", argv[i]);
  }
  for (int i = 0; i < n; i++)
    if (fcntl(fds[i], F_GETFD) < 0) die("fd %d is not open", fds[i]);
  char *buf = malloc(MAX_PAYLOAD);
  if (!buf) die("out of memory");
  size_t len = 0;
  for (;;) {
    ssize_t r = read(0, buf + len, MAX_PAYLOAD - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("read payload: %s", strerror(errno));
    if (r == 0) break;
    len += (size_t)r;
    if (len == MAX_PAYLOAD) die("payload larger than %d bytes", MAX_PAYLOAD);
  }
  if (len == 0) die("empty payload: the fds must travel with bytes");
  if (connect_to) {
    sock = connect_unix(connect_to);
    if (sock < 0) die("connect %s: %s", connect_to, strerror(errno));
  }
  char ctl[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  memset(ctl, 0, sizeof ctl);
  struct iovec iov = { .iov_base = buf, .iov_len = len };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (n > 0) {
    msg.msg_control = ctl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  }
  size_t off = 0;
  while (off < len) {
    ssize_t w = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) {
      struct pollfd p = { .fd = sock, .events = POLLOUT };
      poll(&p, 1, 1000);
      continue;
    }
    if (w < 0) die("sendmsg: %s", strerror(errno));
    off += (size_t)w;
    /* the fds went with the first bytes; the rest is plain data */
    iov.iov_base = buf + off;
    iov.iov_len = len - off;
    msg.msg_control = NULL;
    msg.msg_controllen = 0;
  }
  if (!connect_to) return 0;
  for (;;) {
    ssize_t r = read(sock, buf, MAX_PAYLOAD);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("read answer: %s", strerror(errno));
    if (r == 0) return 0;
    if (write_all(1, buf, (size_t)r) < 0) die("write answer: %s", strerror(errno));
  }
}

/* ---------------------------------------------------------------- front */

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int connect_unix(const char *path) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    close(s);
    return -1;
  }
  return s;
}

/* recvmsg that keeps SCM_RIGHTS fds (up to MAX_FDS in all; beyond that they are closed). */
static ssize_t recv_fds(int s, char *buf, size_t len, int *fds, int *nfds, int keep) {
  char ctl[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  struct iovec iov = { .iov_base = buf, .iov_len = len };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
  ssize_t r;
  do r = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *got = (int *)CMSG_DATA(c);
    for (int i = 0; i < k; i++) {
      if (keep && *nfds < MAX_FDS) fds[(*nfds)++] = got[i];
      else close(got[i]);
    }
  }
  return r;
}

static void relay(int client, const char *backend) {
  alarm(CONN_SECONDS);
  int fds[MAX_FDS], nfds = 0;
  char *head = malloc(MAX_HEAD + 256);
  if (!head) _exit(1);
  size_t have = 0;
  char *end = NULL;
  while (!end) {
    if (have >= MAX_HEAD) _exit(1);
    ssize_t r = recv_fds(client, head + have, MAX_HEAD - have, fds, &nfds, 1);
    if (r <= 0) _exit(0);
    have += (size_t)r;
    head[have] = 0;
    end = memmem(head, have, "\r\n\r\n", 4);
  }
  int up = connect_unix(backend);
  if (up < 0) {
    const char *e = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n[\"VMM backend unavailable\"]";
    write_all(client, e, strlen(e));
    _exit(1);
  }
  /* The header goes right after the request line. */
  char *eol = memmem(head, have, "\r\n", 2);
  size_t line = (size_t)(eol - head) + 2;
  char hdr[64 + MAX_FDS * 12];
  int hl = 0;
  if (nfds > 0) {
    hl = snprintf(hdr, sizeof hdr, "X-Katats-Fds: %d:", (int)getpid());
    for (int i = 0; i < nfds; i++) hl += snprintf(hdr + hl, sizeof hdr - hl, "%s%d", i ? "," : "", fds[i]);
    hl += snprintf(hdr + hl, sizeof hdr - hl, "\r\n");
  }
  if (write_all(up, head, line) < 0 || write_all(up, hdr, (size_t)hl) < 0 || write_all(up, head + line, have - line) < 0) _exit(1);
  free(head);
  char buf[65536];
  struct pollfd p[2] = { { .fd = client, .events = POLLIN }, { .fd = up, .events = POLLIN } };
  int open_in = 1;
  for (;;) {
    p[0].events = open_in ? POLLIN : 0;
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = recv_fds(client, buf, sizeof buf, fds, &nfds, 0);
      if (r <= 0) {
        shutdown(up, SHUT_WR);
        open_in = 0;
      } else if (write_all(up, buf, (size_t)r) < 0) break;
    }
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = read(up, buf, sizeof buf);
      if (r <= 0) break;
      if (write_all(client, buf, (size_t)r) < 0) break;
    }
  }
  _exit(0);
}

static int mode_front(int argc, char **argv) {
  if (argc != 2) die("front LISTEN BACKEND");
  prctl(PR_SET_PDEATHSIG, SIGKILL); /* it serves the process that started it, and dies with it */
  signal(SIGCHLD, SIG_IGN); /* connection processes are reaped by the kernel */
  signal(SIGPIPE, SIG_IGN);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  if (strlen(argv[0]) >= sizeof a.sun_path) die("socket path too long");
  strncpy(a.sun_path, argv[0], sizeof a.sun_path - 1);
  unlink(argv[0]);
  mode_t old = umask(077);
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind %s: %s", argv[0], strerror(errno));
  umask(old);
  if (listen(s, 64) < 0) die("listen: %s", strerror(errno));
  /* "ready" on stdout: the API socket exists */
  if (write_all(1, "ready\n", 6) < 0) die("stdout");
  for (;;) {
    int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      die("accept: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL); /* the front's end is every connection's end */
      if (getppid() == 1) _exit(0);
      close(s);
      relay(c, argv[1]);
    }
    close(c);
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: katats-fds send|front ...\n");
    return 2;
  }
  if (!strcmp(argv[1], "send")) return mode_send(argc - 2, argv + 2);
  if (!strcmp(argv[1], "front")) return mode_front(argc - 2, argv + 2);
  fprintf(stderr, "katats-fds: unknown mode %s\n", argv[1]);
  return 2;
}
