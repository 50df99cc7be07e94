/*
 * katats-runner: the small native helper of the katats agent.
 *
 * Node cannot become a child subreaper, receive a file descriptor over SCM_RIGHTS, create an
 * eventfd, call ioctl(TIOCSWINSZ), settimeofday(2) or unshare(2). Everything the agent needs
 * of those lives here, one mode per job:
 *
 *   run     [--hide-unified] [--no-aslr] [--pipe-size N] --io DIR --pid-file FILE [--tty --console-socket SOCK] -- crun ARGS
 *           Monitors one container process (a container's init from `crun create`, or an exec
 *           from `crun exec --detach`). It is a child subreaper, so the process that crun leaves
 *           behind becomes its child and its wait status is known. Stdio goes through three FIFOs
 *           in DIR (stdin, stdout, stderr) that the agent opens with O_NONBLOCK. With --tty the
 *           pty master arrives from crun over the console socket and is relayed to the FIFOs.
 *           fd 3 (status, to the agent): "ready", "pid N", "exit RAWSTATUS", "error TEXT".
 *           fd 4 (control, from the agent): "go", "kill SIG", "resize ROWS COLS".
 *           EOF on fd 4 means the agent is gone: the process is killed.
 *   exec    [--hide-unified] [--no-aslr] -- PROG ARGS
 *                                           one-shot command (crun kill/delete/...), same mount trick;
 *                                           --no-aslr: PROG at fixed addresses (for commands that
 *                                           start no process: under TCG each randomized exec makes
 *                                           the emulator translate the same code again)
 *   oom-v1  MEMCG_DIR                       cgroup v1 OOM notifications (eventfd on memory.oom_control);
 *                                           prints "oom" per event, exits when the cgroup goes away
 *   ns      DIR HOSTNAME                    persistent IPC and UTS namespaces bind-mounted at DIR/ipc and
 *                                           DIR/uts, the UTS one carrying HOSTNAME
 *   settime SEC USEC                        settimeofday(2)
 *   verity-open NAME DEVICE DATA_BLOCKS HASH_START ROOT_HASH SALT DEVICE_BYTES
 *                                           a read-only dm-verity device NAME over the block device
 *                                           DEVICE (format 1, sha256, 4096-byte blocks, the tree at
 *                                           block HASH_START of the same device; SALT hex or "-"),
 *                                           through the device-mapper ioctls. DEVICE must be exactly
 *                                           DEVICE_BYTES long (checked before anything is created).
 *                                           Then every data block is read once through it with
 *                                           O_DIRECT, so that a block that fails verification
 *                                           refuses the layer now rather than a read later. Prints
 *                                           "dev MAJOR MINOR"; on failure nothing is left.
 *   verity-close NAME                       removes the device (deferred if still open)
 *   tap-exec --netns PATH [--tap NAME]... -- PROG ARGS
 *                                           host side (the shim): enters the network namespace at
 *                                           PATH, attaches to each named TAP device there (which must
 *                                           exist: made persistent beforehand) with TUNSETIFF, puts
 *                                           the n-th TAP's descriptor at fd 3+n without close-on-exec,
 *                                           and execs PROG in place (same pid) in that namespace:
 *                                           QEMU gets its TAPs as `-netdev tap,fd=3+n`. Node can
 *                                           neither setns(2) nor ioctl(2).
 *   neigh-add DEV ADDRESS LLADDR            a permanent neighbour entry (IPv4 or IPv6) on DEV, created or
 *                                           replaced, through rtnetlink (RTM_NEWNEIGH, NUD_PERMANENT):
 *                                           the guest's busybox has `arp -s` for IPv4 but no
 *                                           `ip neigh add`, and node has no netlink socket.
 *   keeper                                  long-lived, started with the agent: requests on stdin, one
 *                                           answer line each ("ok" or "error TEXT") on stdout:
 *                                           "time SEC USEC" settimeofday(2); "seed HEX" credits the
 *                                           bytes to the kernel's pool (RNDADDENTROPY) and reseeds its
 *                                           CRNG (RNDRESEEDCRNG); "mount SRC TARGET FSTYPE FLAGS DATA"
 *                                           one mount(2), strings in hex ("-": none); "ns DIR HOST"
 *                                           the ns mode in a forked child; "run SOCK ERRFILE ARG..."
 *                                           the run mode in a forked child (no exec), its fds 3 and 4
 *                                           one connection to the agent's unix socket SOCK, its stderr
 *                                           ERRFILE, answered "ok PID"; "exec OUTFILE ERRFILE ARG..."
 *                                           the exec mode likewise, its output in the files; "crun
 *                                           NAME" a sealed memfd copy of crun that every command of
 *                                           theirs named NAME then runs from (--crun-fd); "net NS OP
 *                                           ... [; OP ...]" the pod network through rtnetlink (links
 *                                           and addresses listed, link/addr/route/neigh changes as
 *                                           `ip` makes them, in order; see keeper_net); the keeper reaps its children
 *                                           and reports each as "exited PID WAITSTATUS", a line that
 *                                           may come between answers. A VM restored from a template
 *                                           needs the first two at once, a pod start mounts its
 *                                           storages, configures its network and starts runners,
 *                                           and a fork+exec from node
 *                                           costs ~0.5 s under TCG.
 *   init    -- PROG ARGS                    the guest's PID 1: runs PROG (node with the agent) as its
 *                                           child, reaps every orphan the kernel hands to PID 1 (node
 *                                           can only wait for children it spawned), passes SIGTERM,
 *                                           SIGINT, SIGHUP, SIGUSR1/2 on to PROG, and powers the VM off
 *                                           when PROG ends (a node that refuses its --snapshot-blob, ending
 *                                           before the agent serves, is started again without it). Not
 *                                           PID 1 (tests): a child subreaper that exits with PROG's status.
 *
 * --hide-unified: on a cgroup "hybrid" host (v1 controllers plus a cgroup2 mount at
 * /sys/fs/cgroup/unified that holds a controller) crun refuses to run. The command then runs in
 * a private mount namespace without that mount, where crun sees plain cgroup v1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sysmacros.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/sendfile.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/random.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <arpa/inet.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define STATUS_FD 3
#define CTL_FD 4
#define BUF_SIZE 65536

static void status(const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if (n > (int)sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  const char *p = line;
  while (n > 0) {
    ssize_t w = write(STATUS_FD, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;
    }
    p += w;
    n -= w;
  }
}

static void die(const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  status("error %s", msg);
  fprintf(stderr, "katats-runner: %s\n", msg);
  exit(1);
}

static void hide_unified(void) {
  if (unshare(CLONE_NEWNS) < 0) die("unshare(CLONE_NEWNS): %s", strerror(errno));
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) die("make / rslave: %s", strerror(errno));
  if (umount2("/sys/fs/cgroup/unified", MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
    die("umount /sys/fs/cgroup/unified: %s", strerror(errno));
}

static int set_blocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

static int set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ---------------------------------------------------------------- exec */

/* Execs cmd from the sealed copy at crun_fd (--crun-fd: the keeper's, see keeper_crun) when there is
 * one: crun then finds itself a sealed memfd and skips making its own copy and re-executing from
 * it (its CVE-2019-5736 defence, one more exec with a dozen libraries per command). Else execvp. */
static void exec_command(int crun_fd, char **cmd) {
  if (crun_fd >= 0) {
    extern char **environ;
    fexecve(crun_fd, cmd, environ);
  }
  execvp(cmd[0], cmd);
}

/* ASLR off for the next exec (the persona is read with 0xffffffff, then ADDR_NO_RANDOMIZE added):
 * under TCG a command exec'd at the addresses of the last one reuses its translated code. */
static int no_aslr_for_exec(void) {
  int persona = personality(0xffffffff);
  if (persona < 0 || personality((unsigned long)persona | ADDR_NO_RANDOMIZE) < 0) return -1;
  return 0;
}

/* Parses --crun-fd N; the descriptor is made close-on-exec, so nothing crun runs inherits it. */
static int crun_fd_arg(const char *v) {
  int fd = atoi(v);
  if (fd < 3 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) return -1;
  return fd;
}

static int mode_exec(int argc, char **argv) {
  int i = 0, hide = 0, crun_fd = -1, no_aslr = 0;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--hide-unified")) hide = 1;
    else if (!strcmp(argv[i], "--no-aslr")) no_aslr = 1;
    else if (!strcmp(argv[i], "--crun-fd") && i + 1 < argc) crun_fd = crun_fd_arg(argv[++i]);
    else if (!strcmp(argv[i], "--")) { i++; break; }
    else { fprintf(stderr, "katats-runner exec: unknown option %s\n", argv[i]); return 2; }
  }
  if (i >= argc) { fprintf(stderr, "katats-runner exec: no command\n"); return 2; }
  if (hide) {
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) {
      fprintf(stderr, "katats-runner exec: private mount namespace: %s\n", strerror(errno));
      return 125;
    }
    if (umount2("/sys/fs/cgroup/unified", MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) {
      fprintf(stderr, "katats-runner exec: umount unified: %s\n", strerror(errno));
      return 125;
    }
  }
  if (no_aslr && no_aslr_for_exec() < 0) {
    fprintf(stderr, "katats-runner exec: personality: %s\n", strerror(errno));
    return 125;
  }
  exec_command(crun_fd, argv + i);
  fprintf(stderr, "katats-runner exec: %s: %s\n", argv[i], strerror(errno));
  return 127;
}

/* ---------------------------------------------------------------- run */

struct reaped { pid_t pid; int status; };
static struct reaped early[64];
static int nearly;

struct buf { char data[BUF_SIZE]; size_t off, len; };

static int recv_fd(int sock) {
  char dummy[256];
  struct iovec iov = { dummy, sizeof dummy };
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct msghdr msg = { 0 };
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  if (n < 0) return -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int fd;
      memcpy(&fd, CMSG_DATA(c), sizeof fd);
      return fd;
    }
  }
  errno = EBADMSG;
  return -1;
}

/* Reads one line; *eof is set when the stream ended before any byte of it. */
static ssize_t read_line_eof(int fd, char *out, size_t cap, int *eof) {
  size_t n = 0;
  *eof = 0;
  while (n + 1 < cap) {
    char ch;
    ssize_t r = read(fd, &ch, 1);
    if (r < 0) { if (errno == EINTR) continue; return -1; }
    if (r == 0) { if (n == 0) *eof = 1; break; }
    if (ch == '\n') break;
    out[n++] = ch;
  }
  out[n] = 0;
  return (ssize_t)n;
}

static int mode_run(int argc, char **argv) {
  const char *io = NULL, *pidfile = NULL, *csock = NULL;
  int tty = 0, hide = 0, i = 0, pipe_size = 0, crun_fd = -1, no_aslr = 0;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--hide-unified")) hide = 1;
    else if (!strcmp(argv[i], "--no-aslr")) no_aslr = 1;
    else if (!strcmp(argv[i], "--crun-fd") && i + 1 < argc) crun_fd = crun_fd_arg(argv[++i]);
    else if (!strcmp(argv[i], "--tty")) tty = 1;
    else if (!strcmp(argv[i], "--pipe-size") && i + 1 < argc) pipe_size = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--io") && i + 1 < argc) io = argv[++i];
    else if (!strcmp(argv[i], "--pid-file") && i + 1 < argc) pidfile = argv[++i];
    else if (!strcmp(argv[i], "--console-socket") && i + 1 < argc) csock = argv[++i];
    else if (!strcmp(argv[i], "--")) { i++; break; }
    else die("run: unknown option %s", argv[i]);
  }
  if (!io || !pidfile || i >= argc) die("run: need --io, --pid-file and a command");
  if (tty && !csock) die("run: --tty needs --console-socket");
  char **cmd = argv + i;

  fcntl(STATUS_FD, F_SETFD, FD_CLOEXEC);
  fcntl(CTL_FD, F_SETFD, FD_CLOEXEC);
  signal(SIGPIPE, SIG_IGN);
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) die("signalfd: %s", strerror(errno));

  /* FIFOs first; the agent opens its ends (non-blocking) once it reads "ready". */
  char p_in[4096], p_out[4096], p_err[4096];
  snprintf(p_in, sizeof p_in, "%s/stdin", io);
  snprintf(p_out, sizeof p_out, "%s/stdout", io);
  snprintf(p_err, sizeof p_err, "%s/stderr", io);
  if (mkfifo(p_in, 0600) < 0 && errno != EEXIST) die("mkfifo %s: %s", p_in, strerror(errno));
  if (mkfifo(p_out, 0600) < 0 && errno != EEXIST) die("mkfifo %s: %s", p_out, strerror(errno));
  if (mkfifo(p_err, 0600) < 0 && errno != EEXIST) die("mkfifo %s: %s", p_err, strerror(errno));
  status("ready");
  char line[256];
  int eof0 = 0;
  if (read_line_eof(CTL_FD, line, sizeof line, &eof0) <= 0 || strcmp(line, "go") != 0) die("run: agent did not say go");

  int fin = open(p_in, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fin < 0) die("open %s: %s", p_in, strerror(errno));
  int fout = open(p_out, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fout < 0) die("open %s: %s", p_out, strerror(errno));
  int ferr = open(p_err, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (ferr < 0) die("open %s: %s", p_err, strerror(errno));
  if (pipe_size > 0) {
    /* Bigger pipes mean fewer wake-ups per megabyte for a fast writer (upstream's
       container_pipe_size); the kernel may refuse above /proc/sys/fs/pipe-max-size. */
    fcntl(fout, F_SETPIPE_SZ, pipe_size);
    fcntl(ferr, F_SETPIPE_SZ, pipe_size);
    fcntl(fin, F_SETPIPE_SZ, pipe_size);
  }

  int lsock = -1;
  if (tty) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(csock) >= sizeof sa.sun_path) die("console socket path too long: %s", csock);
    strcpy(sa.sun_path, csock);
    unlink(csock);
    lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lsock < 0 || bind(lsock, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lsock, 1) < 0)
      die("console socket %s: %s", csock, strerror(errno));
  }

  int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
  pid_t crun = fork();
  if (crun < 0) die("fork: %s", strerror(errno));
  if (crun == 0) {
    sigprocmask(SIG_UNBLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (hide) hide_unified();
    if (tty) {
      dup2(nul, 0); dup2(nul, 1); dup2(nul, 2);
    } else {
      set_blocking(fin); set_blocking(fout); set_blocking(ferr);
      dup2(fin, 0); dup2(fout, 1); dup2(ferr, 2);
    }
    /* The container's init is crun's child and inherits the persona: the agent gives crun create
     * this only with a spec whose linux.personality crun applies in the init before the exec. */
    if (no_aslr && no_aslr_for_exec() < 0) _exit(125);
    exec_command(crun_fd, cmd);
    _exit(127);
  }
  close(nul);
  if (!tty) {
    /* The container holds the FIFOs now; our copies would only delay EOF. */
    close(fin); close(fout); close(ferr);
    fin = fout = ferr = -1;
  } else {
    close(ferr);
    ferr = -1;
  }

  int master = -1, crun_status = -1, crun_done = 0;
  pid_t pid = 0;
  int exited = 0, exit_status = 0;

  /* Phase 1: until crun exits (and, with a tty, the master has arrived). */
  while (!crun_done || (tty && master < 0)) {
    struct pollfd pf[2] = { { sfd, POLLIN, 0 }, { lsock, POLLIN, 0 } };
    int n = poll(pf, tty && master < 0 ? 2 : 1, -1);
    if (n < 0) { if (errno == EINTR) continue; die("poll: %s", strerror(errno)); }
    if (pf[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {}
      int st;
      pid_t r;
      while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
        if (r == crun) { crun_done = 1; crun_status = st; }
        else if (nearly < (int)(sizeof early / sizeof early[0])) { early[nearly].pid = r; early[nearly].status = st; nearly++; }
      }
    }
    if (tty && master < 0 && (pf[1].revents & POLLIN)) {
      int c = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
      if (c >= 0) {
        master = recv_fd(c);
        close(c);
      }
    }
    if (crun_done && (!WIFEXITED(crun_status) || WEXITSTATUS(crun_status) != 0)) break;
    if (crun_done && tty && master < 0) {
      /* crun succeeded but sent no console: give the socket one last look. */
      struct pollfd lp = { lsock, POLLIN, 0 };
      if (poll(&lp, 1, 1000) > 0) {
        int c = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) { master = recv_fd(c); close(c); }
      }
      if (master < 0) die("crun sent no console on %s", csock);
    }
  }
  if (lsock >= 0) { close(lsock); unlink(csock); }
  if (!WIFEXITED(crun_status) || WEXITSTATUS(crun_status) != 0) {
    status("error crun %s %d", WIFEXITED(crun_status) ? "exited with status" : "killed by signal",
           WIFEXITED(crun_status) ? WEXITSTATUS(crun_status) : WTERMSIG(crun_status));
    return 1;
  }

  FILE *pf = fopen(pidfile, "r");
  if (!pf || fscanf(pf, "%d", &pid) != 1 || pid <= 0) die("cannot read pid from %s", pidfile);
  fclose(pf);
  status("pid %d", pid);
  for (int k = 0; k < nearly; k++)
    if (early[k].pid == pid) { exited = 1; exit_status = early[k].status; }
  if (exited) status("exit %d", exit_status);

  /* Phase 2: relay (tty), control, reaping. */
  struct buf *out = calloc(1, sizeof *out), *in = calloc(1, sizeof *in);
  if (tty) { set_nonblocking(master); set_nonblocking(fin); set_nonblocking(fout); }
  int ctl_open = 1, in_open = tty, master_open = tty;
  struct timespec exit_time = { 0, 0 };
  if (exited) clock_gettime(CLOCK_MONOTONIC, &exit_time);

  for (;;) {
    if (exited && !tty) break;
    if (exited && tty && (!master_open || fout < 0) && out->len == 0) break;
    struct pollfd fds[6];
    int nf = 0, i_sig = -1, i_ctl = -1, i_mr = -1, i_fo = -1, i_fi = -1, i_mw = -1;
    fds[nf] = (struct pollfd){ sfd, POLLIN, 0 }; i_sig = nf++;
    if (ctl_open) { fds[nf] = (struct pollfd){ CTL_FD, POLLIN, 0 }; i_ctl = nf++; }
    if (tty) {
      if (master_open && out->len == 0) { fds[nf] = (struct pollfd){ master, POLLIN, 0 }; i_mr = nf++; }
      if (out->len > 0 && fout >= 0) { fds[nf] = (struct pollfd){ fout, POLLOUT, 0 }; i_fo = nf++; }
      if (in_open && in->len == 0) { fds[nf] = (struct pollfd){ fin, POLLIN, 0 }; i_fi = nf++; }
      if (in->len > 0 && master_open) { fds[nf] = (struct pollfd){ master, POLLOUT, 0 }; i_mw = nf++; }
    }
    int timeout = -1;
    if (exited && tty) timeout = 200; /* drain what the pty still holds, then finish */
    int n = poll(fds, nf, timeout);
    if (n < 0) { if (errno == EINTR) continue; die("poll: %s", strerror(errno)); }
    if (n == 0 && exited) {
      if (out->len == 0) break;
      continue;
    }
    if (fds[i_sig].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {}
      int st;
      pid_t r;
      while ((r = waitpid(-1, &st, WNOHANG)) > 0) {
        if (r == pid && !exited) {
          exited = 1;
          exit_status = st;
          status("exit %d", st);
          clock_gettime(CLOCK_MONOTONIC, &exit_time);
        }
      }
    }
    if (i_ctl >= 0 && (fds[i_ctl].revents & (POLLIN | POLLHUP | POLLERR))) {
      char l[256];
      int eof = 0;
      ssize_t r = read_line_eof(CTL_FD, l, sizeof l, &eof);
      if (r < 0 || eof) {
        /* The agent went away: nobody is left to wait for this process. */
        ctl_open = 0;
        if (!exited) kill(pid, SIGKILL);
      } else {
        int a, b;
        if (sscanf(l, "kill %d", &a) == 1) {
          if (!exited && kill(pid, a) < 0 && errno != ESRCH) status("error kill %d: %s", a, strerror(errno));
        } else if (sscanf(l, "resize %d %d", &a, &b) == 2) {
          if (master >= 0) {
            struct winsize ws = { .ws_row = (unsigned short)a, .ws_col = (unsigned short)b };
            if (ioctl(master, TIOCSWINSZ, &ws) < 0) status("error resize: %s", strerror(errno));
          }
        }
      }
    }
    if (i_mr >= 0 && (fds[i_mr].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = read(master, out->data, sizeof out->data);
      if (r > 0) { out->off = 0; out->len = (size_t)r; }
      else if (r == 0 || (errno != EAGAIN && errno != EINTR)) master_open = 0; /* EIO: every slave closed */
    }
    if (i_fo >= 0 && (fds[i_fo].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t w = write(fout, out->data + out->off, out->len);
      if (w > 0) { out->off += (size_t)w; out->len -= (size_t)w; }
      else if (w < 0 && errno != EAGAIN && errno != EINTR) { close(fout); fout = -1; out->len = 0; }
    }
    if (i_fi >= 0 && (fds[i_fi].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = read(fin, in->data, sizeof in->data);
      if (r > 0) { in->off = 0; in->len = (size_t)r; }
      else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        /* stdin closed by the agent: a terminal's end of input is its EOF character */
        in_open = 0;
        close(fin);
        fin = -1;
        struct termios t;
        char eof = 4;
        if (master_open && tcgetattr(master, &t) == 0 && t.c_cc[VEOF]) eof = (char)t.c_cc[VEOF];
        if (master_open) { in->data[0] = eof; in->off = 0; in->len = 1; }
      }
    }
    if (i_mw >= 0 && (fds[i_mw].revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t w = write(master, in->data + in->off, in->len);
      if (w > 0) { in->off += (size_t)w; in->len -= (size_t)w; }
      else if (w < 0 && errno != EAGAIN && errno != EINTR) in->len = 0;
    }
  }
  if (fout >= 0) close(fout);
  (void)exit_time;
  return 0;
}

/* ---------------------------------------------------------------- oom-v1 */

static int mode_oom_v1(int argc, char **argv) {
  if (argc < 1) { fprintf(stderr, "usage: katats-runner oom-v1 MEMCG_DIR\n"); return 2; }
  char p_ctl[4096], p_oom[4096];
  snprintf(p_oom, sizeof p_oom, "%s/memory.oom_control", argv[0]);
  snprintf(p_ctl, sizeof p_ctl, "%s/cgroup.event_control", argv[0]);
  int efd = eventfd(0, EFD_CLOEXEC);
  int ofd = open(p_oom, O_RDONLY | O_CLOEXEC);
  int cfd = open(p_ctl, O_WRONLY | O_CLOEXEC);
  if (efd < 0 || ofd < 0 || cfd < 0) { fprintf(stderr, "oom-v1: %s: %s\n", argv[0], strerror(errno)); return 1; }
  char reg[64];
  int n = snprintf(reg, sizeof reg, "%d %d", efd, ofd);
  if (write(cfd, reg, (size_t)n) < 0) { fprintf(stderr, "oom-v1: register: %s\n", strerror(errno)); return 1; }
  close(cfd);
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("armed\n");
  for (;;) {
    uint64_t v;
    ssize_t r = read(efd, &v, sizeof v);
    if (r < 0) { if (errno == EINTR) continue; return 1; }
    /* The eventfd also fires when the cgroup is removed. */
    if (access(p_ctl, F_OK) < 0) return 0;
    for (uint64_t k = 0; k < v; k++) printf("oom\n");
  }
}

/* ---------------------------------------------------------------- ns */

static int mode_ns(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: katats-runner ns DIR HOSTNAME\n"); return 2; }
  const char *dir = argv[0], *host = argv[1];
  char p_ipc[4096], p_uts[4096];
  snprintf(p_ipc, sizeof p_ipc, "%s/ipc", dir);
  snprintf(p_uts, sizeof p_uts, "%s/uts", dir);
  for (int k = 0; k < 2; k++) {
    const char *p = k ? p_uts : p_ipc;
    int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) { fprintf(stderr, "ns: create %s: %s\n", p, strerror(errno)); return 1; }
    close(fd);
  }
  if (unshare(CLONE_NEWIPC | CLONE_NEWUTS) < 0) { fprintf(stderr, "ns: unshare: %s\n", strerror(errno)); return 1; }
  if (host[0] && sethostname(host, strlen(host)) < 0) { fprintf(stderr, "ns: sethostname: %s\n", strerror(errno)); return 1; }
  if (mount("/proc/self/ns/ipc", p_ipc, NULL, MS_BIND, NULL) < 0) { fprintf(stderr, "ns: bind ipc: %s\n", strerror(errno)); return 1; }
  if (mount("/proc/self/ns/uts", p_uts, NULL, MS_BIND, NULL) < 0) {
    fprintf(stderr, "ns: bind uts: %s\n", strerror(errno));
    umount2(p_ipc, MNT_DETACH);
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------- settime */

static int mode_settime(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: katats-runner settime SEC USEC\n"); return 2; }
  struct timeval tv = { .tv_sec = strtoll(argv[0], NULL, 10), .tv_usec = strtol(argv[1], NULL, 10) };
  if (settimeofday(&tv, NULL) < 0) { fprintf(stderr, "settimeofday: %s\n", strerror(errno)); return 1; }
  return 0;
}

/* ---------------------------------------------------------------- verity */

#define VERITY_BLOCK 4096
#define SCAN_CHUNK (1 << 20)

/* One device-mapper call on the control device; `io` heads a buffer of io->data_size bytes. */
static int dm_call(int ctl, unsigned long req, struct dm_ioctl *io) {
  int r;
  do r = ioctl(ctl, req, io); while (r < 0 && errno == EINTR);
  return r;
}

static void dm_head(struct dm_ioctl *io, size_t size, const char *name, uint32_t flags) {
  memset(io, 0, size);
  io->version[0] = DM_VERSION_MAJOR;
  io->data_size = (uint32_t)size;
  io->data_start = sizeof *io;
  io->flags = flags;
  snprintf(io->name, sizeof io->name, "%s", name);
}

static int dm_open_control(void) {
  int ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) fprintf(stderr, "verity: /dev/mapper/control: %s (no device-mapper in this kernel?)\n", strerror(errno));
  return ctl;
}

/* Removes NAME; when it is still open (a lazy unmount in progress), the kernel removes it on last close. */
static int dm_remove(int ctl, const char *name) {
  struct dm_ioctl io;
  for (int attempt = 0; attempt < 20; attempt++) {
    dm_head(&io, sizeof io, name, 0);
    if (dm_call(ctl, DM_DEV_REMOVE, &io) == 0) return 0;
    if (errno == ENXIO) return 0;
    if (errno != EBUSY) return -1;
    usleep(50 * 1000);
  }
  dm_head(&io, sizeof io, name, DM_DEFERRED_REMOVE);
  return dm_call(ctl, DM_DEV_REMOVE, &io);
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-') return -1;
  *out = v;
  return 0;
}

static int hex_ok(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n > max || n % 2) return 0;
  for (size_t i = 0; i < n; i++) if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return 1;
}

/* The device node of a dm minor: devtmpfs names it dm-MINOR once the table is live. */
static int open_dm_node(unsigned maj, unsigned min) {
  char node[64];
  snprintf(node, sizeof node, "/dev/dm-%u", min);
  for (int i = 0; i < 100; i++) {
    int fd = open(node, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd >= 0) {
      struct stat st;
      if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode) && major(st.st_rdev) == maj && minor(st.st_rdev) == min) return fd;
      close(fd);
      errno = ENODEV;
      return -1;
    }
    if (errno != ENOENT) return -1;
    usleep(20 * 1000);
  }
  return -1;
}

/* Reads every data block once; returns 0, or the first block that failed (+1) with errno set. */
static uint64_t scan_blocks(int fd, uint64_t blocks) {
  void *buf;
  if (posix_memalign(&buf, VERITY_BLOCK, SCAN_CHUNK) != 0) { errno = ENOMEM; return 1; }
  uint64_t total = blocks * VERITY_BLOCK, off = 0, bad = 0;
  while (off < total && !bad) {
    size_t want = total - off < SCAN_CHUNK ? (size_t)(total - off) : SCAN_CHUNK;
    ssize_t r = pread(fd, buf, want, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      /* Narrow a failed chunk down to its first bad block, for the message. */
      int err = r < 0 ? errno : EIO;
      bad = off / VERITY_BLOCK + 1;
      for (uint64_t b = off; b < off + want; b += VERITY_BLOCK) {
        if (pread(fd, buf, VERITY_BLOCK, (off_t)b) != VERITY_BLOCK) { bad = b / VERITY_BLOCK + 1; break; }
      }
      errno = err;
      break;
    }
    off += (uint64_t)r;
  }
  free(buf);
  return bad;
}

static int mode_verity_open(int argc, char **argv) {
  if (argc < 7) { fprintf(stderr, "usage: katats-runner verity-open NAME DEVICE DATA_BLOCKS HASH_START ROOT_HASH SALT DEVICE_BYTES\n"); return 2; }
  const char *name = argv[0], *dev = argv[1], *root = argv[4], *salt = argv[5];
  uint64_t data_blocks, hash_start, want_bytes;
  if (strlen(name) == 0 || strlen(name) >= DM_NAME_LEN || strchr(name, '/')) { fprintf(stderr, "verity: bad device name\n"); return 2; }
  if (parse_u64(argv[2], &data_blocks) || parse_u64(argv[3], &hash_start) || parse_u64(argv[6], &want_bytes) || data_blocks == 0 ||
      data_blocks > (UINT64_MAX / VERITY_BLOCK) || !hex_ok(root, 128) || strlen(root) == 0 || (strcmp(salt, "-") && !hex_ok(salt, 512))) {
    fprintf(stderr, "verity: bad arguments\n");
    return 2;
  }
  int dfd = open(dev, O_RDONLY | O_CLOEXEC);
  if (dfd < 0) { fprintf(stderr, "verity: %s: %s\n", dev, strerror(errno)); return 1; }
  struct stat st;
  uint64_t have_bytes = 0;
  if (fstat(dfd, &st) < 0 || !S_ISBLK(st.st_mode)) { fprintf(stderr, "verity: %s is not a block device\n", dev); return 1; }
  if (ioctl(dfd, BLKGETSIZE64, &have_bytes) < 0) { fprintf(stderr, "verity: %s: BLKGETSIZE64: %s\n", dev, strerror(errno)); return 1; }
  /* Before anything trusts the data size (it comes from an unverified superblock): the device holds
   * exactly that much data and its tree, so no shorter "data" area made of hash blocks is taken. */
  if (have_bytes != want_bytes) {
    fprintf(stderr, "verity: %s is %llu bytes, but its data and hash tree make %llu\n", dev, (unsigned long long)have_bytes, (unsigned long long)want_bytes);
    return 1;
  }
  if (hash_start < data_blocks || hash_start > want_bytes / VERITY_BLOCK) { fprintf(stderr, "verity: hash start %llu outside the device\n", (unsigned long long)hash_start); return 1; }
  int ctl = dm_open_control();
  if (ctl < 0) return 1;

  char params[1024];
  int plen = snprintf(params, sizeof params, "1 %u:%u %u:%u %d %d %llu %llu sha256 %s %s", major(st.st_rdev), minor(st.st_rdev), major(st.st_rdev),
                      minor(st.st_rdev), VERITY_BLOCK, VERITY_BLOCK, (unsigned long long)data_blocks, (unsigned long long)hash_start, root, salt);
  if (plen < 0 || plen >= (int)sizeof params) { fprintf(stderr, "verity: table too long\n"); return 2; }
  size_t size = sizeof(struct dm_ioctl) + sizeof(struct dm_target_spec) + (size_t)plen + 1;
  size = (size + 7) & ~(size_t)7;
  struct dm_ioctl *io = calloc(1, size);
  if (!io) return 1;

  dm_head(io, sizeof *io, name, 0);
  if (dm_call(ctl, DM_DEV_CREATE, io) < 0) { fprintf(stderr, "verity: create %s: %s\n", name, strerror(errno)); return 1; }
  unsigned maj = major(io->dev), min = minor(io->dev);
  const char *step = "load the table";
  dm_head(io, size, name, DM_READONLY_FLAG);
  io->target_count = 1;
  struct dm_target_spec *t = (struct dm_target_spec *)((char *)io + sizeof *io);
  t->sector_start = 0;
  t->length = data_blocks * (VERITY_BLOCK / 512);
  snprintf(t->target_type, sizeof t->target_type, "verity");
  memcpy((char *)(t + 1), params, (size_t)plen + 1);
  int ok = dm_call(ctl, DM_TABLE_LOAD, io) == 0;
  if (ok) {
    step = "activate";
    dm_head(io, sizeof *io, name, 0);
    ok = dm_call(ctl, DM_DEV_SUSPEND, io) == 0; /* without DM_SUSPEND_FLAG: resume, making the table live */
  }
  int err = errno;
  if (!ok) {
    dm_remove(ctl, name);
    fprintf(stderr, "verity: %s %s: %s\n", step, name, strerror(err));
    return 1;
  }
  int vfd = open_dm_node(maj, min);
  if (vfd < 0) {
    err = errno;
    dm_remove(ctl, name);
    fprintf(stderr, "verity: open /dev/dm-%u: %s\n", min, strerror(err));
    return 1;
  }
  uint64_t bad = scan_blocks(vfd, data_blocks);
  err = errno;
  close(vfd);
  if (bad) {
    dm_remove(ctl, name);
    fprintf(stderr, "verity: data block %llu of %llu fails verification (%s)\n", (unsigned long long)(bad - 1), (unsigned long long)data_blocks, strerror(err));
    return 1;
  }
  printf("dev %u %u\n", maj, min);
  return 0;
}

static int mode_verity_close(int argc, char **argv) {
  if (argc < 1) { fprintf(stderr, "usage: katats-runner verity-close NAME\n"); return 2; }
  int ctl = dm_open_control();
  if (ctl < 0) return 1;
  if (dm_remove(ctl, argv[0]) < 0) { fprintf(stderr, "verity: remove %s: %s\n", argv[0], strerror(errno)); return 1; }
  return 0;
}

/* ---------------------------------------------------------------- rtnetlink */

/* The pod network's changes and listings through rtnetlink: the keeper's "net" requests and the
 * neigh-add mode. The guest's busybox `ip` did them, one fork+exec from node per change (tens of ms
 * each under TCG, ~15 per pod); node has no netlink socket. A failure is named as `ip` would name
 * the operation, with the kernel's errno text and its extended-ack message when it gives one. */

#define NET_ERR 512
/* An answer line's bound (the agent's is 4096): links and addresses beyond it are an error. */
#define NET_ANSWER_MAX 3900
static unsigned net_seq;
/* One dump's reads: a guest has a handful of links. */
static _Alignas(struct nlmsghdr) char net_buf[65536];

/* Appends an attribute to the message in `buf` (`room` bytes). */
/* A request of `type` with a zeroed `body`-byte header in buf (room bytes, zeroed); attributes follow by nl_attr. */
static struct nlmsghdr *nl_begin(char *buf, size_t room, unsigned short type, unsigned short flags, size_t body) {
  memset(buf, 0, room);
  struct nlmsghdr *n = (struct nlmsghdr *)buf;
  n->nlmsg_len = NLMSG_LENGTH(body);
  n->nlmsg_type = type;
  n->nlmsg_flags = flags;
  return n;
}

static void nl_attr(char *buf, size_t room, unsigned short type, const void *data, size_t len) {
  struct nlmsghdr *n = (struct nlmsghdr *)buf;
  size_t at = NLMSG_ALIGN(n->nlmsg_len);
  if (at + RTA_SPACE(len) > room) abort();
  struct rtattr a = { .rta_type = type, .rta_len = RTA_LENGTH(len) };
  memcpy(buf + at, &a, sizeof a);
  memcpy(buf + at + RTA_LENGTH(0), data, len);
  n->nlmsg_len = at + RTA_SPACE(len);
}

static int net_fail(char *err, const char *what, int errnum, const char *detail) {
  snprintf(err, NET_ERR, "%s: %s%s%s%s", what, strerror(errnum), detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
  for (char *c = err; *c; c++) if (*c == '\n' || *c == '\r') *c = ' ';
  return -1;
}

/* A rtnetlink socket, in the network namespace at `ns` when given (local mode: a test's), else
 * the keeper's own (the guest's). A socket stays in the namespace it was made in, so the keeper
 * goes there for the socket() only. */
static int net_open(const char *ns, char *err) {
  int fd;
  if (!ns) {
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  } else {
    int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (self < 0) return net_fail(err, "open /proc/self/ns/net", errno, NULL);
    int there = open(ns, O_RDONLY | O_CLOEXEC);
    if (there < 0 || setns(there, CLONE_NEWNET) < 0) {
      int e = errno;
      close(self);
      if (there >= 0) close(there);
      snprintf(err, NET_ERR, "network namespace %s: %s", ns, strerror(e));
      return -1;
    }
    close(there);
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    int e = errno;
    /* Never serve on from a namespace not the keeper's own: its mounts and runners live there. */
    if (setns(self, CLONE_NEWNET) < 0) { fprintf(stderr, "katats-runner: back to its network namespace: %s\n", strerror(errno)); _exit(1); }
    close(self);
    errno = e;
  }
  if (fd < 0) return net_fail(err, "netlink socket", errno, NULL);
  int one = 1;
  /* Best effort: without them an error is its errno only. */
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  /* The agent's timeout kills a keeper that stops answering; a kernel that never answers should not come to that. */
  struct timeval tv = { .tv_sec = 5 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/* The kernel's extended-ack message in an error answer, or NULL. */
static const char *nl_ext_msg(struct nlmsghdr *h) {
  if (!(h->nlmsg_flags & NLM_F_ACK_TLVS)) return NULL;
  struct nlmsgerr *e = NLMSG_DATA(h);
  size_t off = sizeof *e;
  if (!(h->nlmsg_flags & NLM_F_CAPPED)) off += e->msg.nlmsg_len - NLMSG_HDRLEN;
  char *p = (char *)NLMSG_DATA(h) + NLMSG_ALIGN(off), *end = (char *)h + h->nlmsg_len;
  while (p + NLA_HDRLEN <= end) {
    struct nlattr *a = (struct nlattr *)p;
    if (a->nla_len < NLA_HDRLEN || p + a->nla_len > end) break;
    if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG && a->nla_len > NLA_HDRLEN && p[a->nla_len - 1] == 0) return p + NLA_HDRLEN;
    p += NLA_ALIGN(a->nla_len);
  }
  return NULL;
}

static int nl_send(int fd, struct nlmsghdr *n, const char *what, char *err) {
  n->nlmsg_seq = ++net_seq;
  struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
  ssize_t r;
  do r = sendto(fd, n, n->nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel); while (r < 0 && errno == EINTR);
  return r < 0 ? net_fail(err, what, errno, "send") : 0;
}

/* Reads the kernel's answers to the request numbered `seq`: each message to `each` (a dump's),
 * until its ack or the dump's end. 0, or -1 with the error in err. */
static int nl_answers(int fd, unsigned seq, void (*each)(struct nlmsghdr *, void *), void *ctx, const char *what, char *err) {
  for (int reads = 0; reads < 4096; reads++) {
    ssize_t got;
    do got = recv(fd, net_buf, sizeof net_buf, 0); while (got < 0 && errno == EINTR);
    if (got < 0) return net_fail(err, what, errno == EAGAIN ? ETIMEDOUT : errno, "waiting for the kernel's answer");
    int len = (int)got;
    for (struct nlmsghdr *h = (struct nlmsghdr *)net_buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return net_fail(err, what, EPROTO, "short answer");
        int e = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
        return e ? net_fail(err, what, -e, nl_ext_msg(h)) : 0;
      }
      if (h->nlmsg_type == NLMSG_DONE) {
        int e = h->nlmsg_len >= NLMSG_LENGTH(sizeof(int)) ? *(int *)NLMSG_DATA(h) : 0;
        return e < 0 ? net_fail(err, what, -e, NULL) : 0;
      }
      if (each) each(h, ctx);
    }
  }
  return net_fail(err, what, EMSGSIZE, "the kernel's answer did not end");
}

/* One change: 0 when the kernel acknowledged it. */
static int nl_change(int fd, struct nlmsghdr *n, const char *what, char *err) {
  n->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  if (nl_send(fd, n, what, err) < 0) return -1;
  return nl_answers(fd, n->nlmsg_seq, NULL, NULL, what, err);
}

/* A dump of links (RTM_GETLINK) or addresses (RTM_GETADDR), each message to `each`. */
static int nl_dump(int fd, int type, void (*each)(struct nlmsghdr *, void *), void *ctx, const char *what, char *err) {
  _Alignas(struct nlmsghdr) char req[NLMSG_SPACE(sizeof(struct ifinfomsg))];
  struct nlmsghdr *n = nl_begin(req, sizeof req, type, NLM_F_REQUEST | NLM_F_DUMP, type == RTM_GETLINK ? sizeof(struct ifinfomsg) : sizeof(struct ifaddrmsg));
  if (nl_send(fd, n, what, err) < 0) return -1;
  return nl_answers(fd, n->nlmsg_seq, each, ctx, what, err);
}

static int net_index(int fd, const char *dev, const char *what, char *err) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  if (strlen(dev) >= IFNAMSIZ) return net_fail(err, what, ENAMETOOLONG, NULL);
  strcpy(ifr.ifr_name, dev);
  /* On the netlink socket: asks the namespace the socket was made in. */
  if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0) return net_fail(err, what, errno, NULL);
  return ifr.ifr_ifindex;
}

/* An IPv4 or IPv6 address of `family` (0: either); its length, or -1. */
static int net_pton(const char *s, int *family, unsigned char *out) {
  if (*family != AF_INET6 && inet_pton(AF_INET, s, out) == 1) { *family = AF_INET; return 4; }
  if (*family != AF_INET && inet_pton(AF_INET6, s, out) == 1) { *family = AF_INET6; return 16; }
  return -1;
}

/* ADDR/PREFIX (ADDR alone: the whole length) of `family` (0: either). The address's length, or -1. */
static int net_cidr(char *s, int *family, unsigned char *out, unsigned *prefix) {
  char *slash = strchr(s, '/');
  if (slash) *slash = 0;
  int alen = net_pton(s, family, out);
  if (slash) *slash = '/';
  if (alen < 0) return -1;
  *prefix = (unsigned)alen * 8;
  if (slash) {
    char *end;
    errno = 0;
    unsigned long p = strtoul(slash + 1, &end, 10);
    if (errno || *end || end == slash + 1 || p > (unsigned long)alen * 8) return -1;
    *prefix = (unsigned)p;
  }
  return alen;
}

static int net_mac(const char *s, unsigned char mac[6]) {
  char extra;
  return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx%c", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4], &mac[5], &extra) == 6 ? 0 : -1;
}

/* A permanent neighbour (IPv4 or IPv6) on dev, created or replaced. */
static int net_neigh(int fd, const char *dev, const char *addr, const char *lladdr, char *err) {
  char what[160];
  snprintf(what, sizeof what, "neigh replace %s lladdr %s dev %s nud permanent", addr, lladdr, dev);
  unsigned char a[16], mac[6];
  int family = 0, alen = net_pton(addr, &family, a);
  if (alen < 0) return net_fail(err, what, EINVAL, "not an IP address");
  if (net_mac(lladdr, mac) < 0) return net_fail(err, what, EINVAL, "not a MAC address");
  int index = net_index(fd, dev, what, err);
  if (index < 0) return -1;
  _Alignas(struct nlmsghdr) char req[NLMSG_SPACE(sizeof(struct ndmsg)) + 2 * RTA_SPACE(16)];
  struct nlmsghdr *n = nl_begin(req, sizeof req, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, sizeof(struct ndmsg));
  struct ndmsg *nd = NLMSG_DATA(n);
  nd->ndm_family = family;
  nd->ndm_ifindex = index;
  nd->ndm_state = NUD_PERMANENT;
  nl_attr(req, sizeof req, NDA_DST, a, alen);
  nl_attr(req, sizeof req, NDA_LLADDR, mac, sizeof mac);
  return nl_change(fd, n, what, err);
}

static int mode_neigh_add(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: katats-runner neigh-add DEV ADDRESS LLADDR\n"); return 2; }
  char err[NET_ERR];
  int fd = net_open(NULL, err);
  if (fd < 0 || net_neigh(fd, argv[0], argv[1], argv[2], err) < 0) { fprintf(stderr, "%s\n", err); return 1; }
  return 0;
}

/* An answer line being built: " ITEM" after " ITEM", bounded. */
struct net_out {
  char text[NET_ANSWER_MAX];
  size_t len;
  int over;
  int index;
};

static void net_put(struct net_out *o, const char *fmt, ...) {
  if (o->over) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(o->text + o->len, sizeof o->text - o->len, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof o->text - o->len) o->over = 1;
  else o->len += (size_t)n;
}

/* " INDEX/NAME/LLADDR/MTU/FLAGS" per link: the kernel refuses '/' and spaces in a link's name. */
static void net_link_item(struct nlmsghdr *h, void *ctx) {
  struct net_out *o = ctx;
  if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) return;
  struct ifinfomsg *ifi = NLMSG_DATA(h);
  const char *name = NULL;
  const unsigned char *ll = NULL;
  unsigned lllen = 0, mtu = 0;
  int len = IFLA_PAYLOAD(h);
  for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
    unsigned plen = RTA_PAYLOAD(a);
    if (a->rta_type == IFLA_IFNAME && plen && ((char *)RTA_DATA(a))[plen - 1] == 0) name = RTA_DATA(a);
    else if (a->rta_type == IFLA_ADDRESS && plen <= 32) { ll = RTA_DATA(a); lllen = plen; }
    else if (a->rta_type == IFLA_MTU && plen >= 4) memcpy(&mtu, RTA_DATA(a), 4);
  }
  if (!name) return;
  net_put(o, " %d/%s/", ifi->ifi_index, name);
  if (!lllen) net_put(o, "-");
  for (unsigned i = 0; i < lllen; i++) net_put(o, i ? ":%02x" : "%02x", ll[i]);
  net_put(o, "/%u/%x", mtu, ifi->ifi_flags);
}

/* " ADDR/PREFIX/SCOPE" per address of the link o->index. */
static void net_addr_item(struct nlmsghdr *h, void *ctx) {
  struct net_out *o = ctx;
  if (h->nlmsg_type != RTM_NEWADDR || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifaddrmsg))) return;
  struct ifaddrmsg *ifa = NLMSG_DATA(h);
  if ((int)ifa->ifa_index != o->index || (ifa->ifa_family != AF_INET && ifa->ifa_family != AF_INET6)) return;
  const void *local = NULL, *address = NULL;
  unsigned want = ifa->ifa_family == AF_INET ? 4 : 16;
  int len = IFA_PAYLOAD(h);
  for (struct rtattr *a = IFA_RTA(ifa); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
    if (RTA_PAYLOAD(a) != want) continue;
    if (a->rta_type == IFA_LOCAL) local = RTA_DATA(a);
    else if (a->rta_type == IFA_ADDRESS) address = RTA_DATA(a);
  }
  /* IFA_LOCAL is the interface's own (IFA_ADDRESS a peer's, on a point-to-point link); IPv6 has IFA_ADDRESS only. */
  const void *own = local ? local : address;
  char text[INET6_ADDRSTRLEN];
  if (!own || !inet_ntop(ifa->ifa_family, own, text, sizeof text)) return;
  net_put(o, " %s/%u/%u", text, ifa->ifa_prefixlen, ifa->ifa_scope);
}

/* link DEV up|down|arp on|off|mtu N|name NEW: one RTM_NEWLINK, as `ip link set dev DEV ...`. */
static int net_link(int fd, char **w, int nw, char *err) {
  char what[160];
  snprintf(what, sizeof what, "link set dev %s %s%s%s", w[0], nw > 1 ? w[1] : "", nw > 2 ? " " : "", nw > 2 ? w[2] : "");
  if (nw < 2 || nw > 3) return net_fail(err, what, EINVAL, "wants DEV up|down|arp on|off|mtu N|name NEW");
  int index = net_index(fd, w[0], what, err);
  if (index < 0) return -1;
  _Alignas(struct nlmsghdr) char req[NLMSG_SPACE(sizeof(struct ifinfomsg)) + RTA_SPACE(IFNAMSIZ)];
  struct nlmsghdr *n = nl_begin(req, sizeof req, RTM_NEWLINK, 0, sizeof(struct ifinfomsg));
  struct ifinfomsg *ifi = NLMSG_DATA(n);
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  if (nw == 2 && !strcmp(w[1], "up")) { ifi->ifi_change = IFF_UP; ifi->ifi_flags = IFF_UP; }
  else if (nw == 2 && !strcmp(w[1], "down")) { ifi->ifi_change = IFF_UP; }
  else if (nw == 3 && !strcmp(w[1], "arp") && (!strcmp(w[2], "on") || !strcmp(w[2], "off"))) {
    ifi->ifi_change = IFF_NOARP;
    ifi->ifi_flags = strcmp(w[2], "on") ? IFF_NOARP : 0;
  } else if (nw == 3 && !strcmp(w[1], "mtu")) {
    char *end;
    errno = 0;
    unsigned long mtu = strtoul(w[2], &end, 10);
    if (errno || *end || !*w[2] || mtu > 65535) return net_fail(err, what, EINVAL, "MTU");
    uint32_t m = (uint32_t)mtu;
    nl_attr(req, sizeof req, IFLA_MTU, &m, sizeof m);
  } else if (nw == 3 && !strcmp(w[1], "name")) {
    if (strlen(w[2]) >= IFNAMSIZ) return net_fail(err, what, ENAMETOOLONG, NULL);
    nl_attr(req, sizeof req, IFLA_IFNAME, w[2], strlen(w[2]) + 1);
  } else {
    return net_fail(err, what, EINVAL, "wants DEV up|down|arp on|off|mtu N|name NEW");
  }
  return nl_change(fd, n, what, err);
}

/* addr add|del ADDR/PREFIX DEV, as `ip addr add|del ADDR/PREFIX dev DEV`. */
static int net_addr(int fd, char **w, int nw, char *err) {
  char what[160];
  snprintf(what, sizeof what, "addr %s %s dev %s", nw > 0 ? w[0] : "", nw > 1 ? w[1] : "", nw > 2 ? w[2] : "");
  if (nw != 3 || (strcmp(w[0], "add") && strcmp(w[0], "del"))) return net_fail(err, what, EINVAL, "wants add|del ADDR/PREFIX DEV");
  unsigned char a[16];
  unsigned prefix;
  int family = 0, alen = net_cidr(w[1], &family, a, &prefix);
  if (alen < 0) return net_fail(err, what, EINVAL, "not ADDRESS/PREFIX");
  int index = net_index(fd, w[2], what, err);
  if (index < 0) return -1;
  _Alignas(struct nlmsghdr) char req[NLMSG_SPACE(sizeof(struct ifaddrmsg)) + 2 * RTA_SPACE(16)];
  int add = !strcmp(w[0], "add");
  struct nlmsghdr *n = nl_begin(req, sizeof req, add ? RTM_NEWADDR : RTM_DELADDR, add ? NLM_F_CREATE | NLM_F_EXCL : 0, sizeof(struct ifaddrmsg));
  struct ifaddrmsg *ifa = NLMSG_DATA(n);
  ifa->ifa_family = family;
  ifa->ifa_prefixlen = prefix;
  ifa->ifa_index = index;
  /* `ip`'s default scope: host for IPv4 loopback addresses, else global. */
  ifa->ifa_scope = family == AF_INET && a[0] == 127 ? RT_SCOPE_HOST : RT_SCOPE_UNIVERSE;
  nl_attr(req, sizeof req, IFA_LOCAL, a, alen);
  nl_attr(req, sizeof req, IFA_ADDRESS, a, alen);
  return nl_change(fd, n, what, err);
}

/* route 4|6 DEST|default GATEWAY|- SOURCE|- SCOPE|- MTU ONLINK(0|1) DEV: one route in the main
 * table, created or replaced, as `ip route replace`. Without a scope: link for a route without a
 * gateway, else global (`ip`'s default). */
static int net_route(int fd, char **w, int nw, char *err) {
  char what[320];
  if (nw != 8) return net_fail(err, "route replace", EINVAL, "wants 4|6 DEST GATEWAY SOURCE SCOPE MTU ONLINK DEV");
  snprintf(what, sizeof what, "route replace %s%s%s%s%s dev %s", w[1], strcmp(w[2], "-") ? " via " : "", strcmp(w[2], "-") ? w[2] : "", strcmp(w[3], "-") ? " src " : "", strcmp(w[3], "-") ? w[3] : "", w[7]);
  int family = !strcmp(w[0], "6") ? AF_INET6 : !strcmp(w[0], "4") ? AF_INET : -1;
  if (family < 0) return net_fail(err, what, EINVAL, "family");
  unsigned char dst[16], gw[16], src[16];
  unsigned prefix = 0;
  int alen = family == AF_INET ? 4 : 16, gwlen = 0, srclen = 0;
  if (strcmp(w[1], "default") && net_cidr(w[1], &family, dst, &prefix) != alen) return net_fail(err, what, EINVAL, "destination");
  if (strcmp(w[2], "-")) {
    /* An IPv6 route may go through an IPv4 gateway (RFC 5549), as `ip` allows; the kernel decides. */
    int gfam = 0;
    if ((gwlen = net_pton(w[2], &gfam, gw)) < 0) return net_fail(err, what, EINVAL, "gateway");
    if (gfam != family) return net_fail(err, what, EINVAL, "the gateway's family is not the route's");
  }
  if (strcmp(w[3], "-") && (srclen = net_pton(w[3], &family, src)) != alen) return net_fail(err, what, EINVAL, "source");
  char *end;
  unsigned long scope = gwlen ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK, mtu;
  if (strcmp(w[4], "-")) {
    errno = 0;
    scope = strtoul(w[4], &end, 10);
    if (errno || *end || scope > 255) return net_fail(err, what, EINVAL, "scope");
  }
  errno = 0;
  mtu = strtoul(w[5], &end, 10);
  if (errno || *end || mtu > 65535) return net_fail(err, what, EINVAL, "MTU");
  if (strcmp(w[6], "0") && strcmp(w[6], "1")) return net_fail(err, what, EINVAL, "onlink");
  int index = net_index(fd, w[7], what, err);
  if (index < 0) return -1;
  _Alignas(struct nlmsghdr) char req[NLMSG_SPACE(sizeof(struct rtmsg)) + 4 * RTA_SPACE(16) + RTA_SPACE(RTA_SPACE(4))];
  struct nlmsghdr *n = nl_begin(req, sizeof req, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, sizeof(struct rtmsg));
  struct rtmsg *rt = NLMSG_DATA(n);
  rt->rtm_family = family;
  rt->rtm_dst_len = prefix;
  rt->rtm_table = RT_TABLE_MAIN;
  rt->rtm_protocol = RTPROT_BOOT;
  rt->rtm_scope = (unsigned char)scope;
  rt->rtm_type = RTN_UNICAST;
  rt->rtm_flags = !strcmp(w[6], "1") ? RTNH_F_ONLINK : 0;
  if (prefix) nl_attr(req, sizeof req, RTA_DST, dst, alen);
  if (gwlen) nl_attr(req, sizeof req, RTA_GATEWAY, gw, gwlen);
  if (srclen) nl_attr(req, sizeof req, RTA_PREFSRC, src, srclen);
  uint32_t oif = (uint32_t)index;
  nl_attr(req, sizeof req, RTA_OIF, &oif, sizeof oif);
  if (mtu) {
    /* RTA_METRICS nests RTAX_MTU. */
    _Alignas(struct rtattr) char m[RTA_SPACE(4)];
    struct rtattr *x = (struct rtattr *)m;
    x->rta_type = RTAX_MTU;
    x->rta_len = RTA_LENGTH(4);
    uint32_t v = (uint32_t)mtu;
    memcpy(RTA_DATA(x), &v, 4);
    nl_attr(req, sizeof req, RTA_METRICS, m, sizeof m);
  }
  return nl_change(fd, n, what, err);
}

/* ---------------------------------------------------------------- tap-exec */

#define TAP_FIRST_FD 3
#define TAP_MAX 16

static int mode_tap_exec(int argc, char **argv) {
  const char *netns = NULL, *taps[TAP_MAX];
  int ntaps = 0, i = 0;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--netns") && i + 1 < argc) netns = argv[++i];
    else if (!strcmp(argv[i], "--tap") && i + 1 < argc) {
      if (ntaps == TAP_MAX) { fprintf(stderr, "katats-runner tap-exec: more than %d TAPs\n", TAP_MAX); return 2; }
      taps[ntaps++] = argv[++i];
    } else if (!strcmp(argv[i], "--")) { i++; break; }
    else { fprintf(stderr, "katats-runner tap-exec: unknown option %s\n", argv[i]); return 2; }
  }
  if (!netns || i >= argc) { fprintf(stderr, "usage: katats-runner tap-exec --netns PATH [--tap NAME]... -- PROG ARGS\n"); return 2; }
  int nsfd = open(netns, O_RDONLY | O_CLOEXEC);
  if (nsfd < 0) { fprintf(stderr, "katats-runner tap-exec: open %s: %s\n", netns, strerror(errno)); return 125; }
  if (setns(nsfd, CLONE_NEWNET) < 0) { fprintf(stderr, "katats-runner tap-exec: setns %s: %s\n", netns, strerror(errno)); return 125; }
  close(nsfd);
  /* A socket made after setns asks the pod's namespace: the TAP must be there already, or
     TUNSETIFF would quietly make a new one that nothing has wired to the pod's veth. */
  int probe = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (probe < 0) { fprintf(stderr, "katats-runner tap-exec: socket: %s\n", strerror(errno)); return 125; }
  int opened[TAP_MAX];
  for (int k = 0; k < ntaps; k++) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(taps[k]) >= IFNAMSIZ) { fprintf(stderr, "katats-runner tap-exec: TAP name too long: %s\n", taps[k]); return 125; }
    strcpy(ifr.ifr_name, taps[k]);
    if (ioctl(probe, SIOCGIFINDEX, &ifr) < 0) { fprintf(stderr, "katats-runner tap-exec: TAP %s is not in %s: %s\n", taps[k], netns, strerror(errno)); return 125; }
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) { fprintf(stderr, "katats-runner tap-exec: open /dev/net/tun: %s\n", strerror(errno)); return 125; }
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, taps[k]);
    /* virtio-net's header passes checksum and segmentation offloads through (no vhost here). */
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) { fprintf(stderr, "katats-runner tap-exec: TUNSETIFF %s: %s\n", taps[k], strerror(errno)); return 125; }
    /* Out of the way of the target numbers first, so no dup2 below overwrites another TAP. */
    opened[k] = fcntl(fd, F_DUPFD_CLOEXEC, TAP_FIRST_FD + TAP_MAX);
    if (opened[k] < 0) { fprintf(stderr, "katats-runner tap-exec: dup: %s\n", strerror(errno)); return 125; }
    close(fd);
  }
  close(probe);
  for (int k = 0; k < ntaps; k++) {
    /* dup2 leaves the new descriptor without close-on-exec: PROG inherits it. */
    if (dup2(opened[k], TAP_FIRST_FD + k) < 0) { fprintf(stderr, "katats-runner tap-exec: dup2: %s\n", strerror(errno)); return 125; }
    close(opened[k]);
  }
  execvp(argv[i], argv + i);
  fprintf(stderr, "katats-runner tap-exec: %s: %s\n", argv[i], strerror(errno));
  return 127;
}

/* ---------------------------------------------------------------- keeper */

#define KEEPER_LINE 16386
#define KEEPER_SEED_MAX 512

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void keeper_seed(const char *hex) {
  struct { struct rand_pool_info info; unsigned char buf[KEEPER_SEED_MAX]; } req;
  size_t n = strlen(hex);
  if (n == 0 || n % 2 || n / 2 > KEEPER_SEED_MAX) { printf("error seed wants 1..%d bytes as hex\n", KEEPER_SEED_MAX); return; }
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) { printf("error seed is not hex\n"); return; }
    req.buf[i] = (unsigned char)(hi << 4 | lo);
  }
  req.info.entropy_count = (int)(n / 2 * 8);
  req.info.buf_size = (int)(n / 2);
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) { printf("error open /dev/urandom: %s\n", strerror(errno)); return; }
  if (ioctl(fd, RNDADDENTROPY, &req.info) < 0) { printf("error RNDADDENTROPY: %s\n", strerror(errno)); close(fd); return; }
  if (ioctl(fd, RNDRESEEDCRNG) < 0) { printf("error RNDRESEEDCRNG: %s\n", strerror(errno)); close(fd); return; }
  close(fd);
  printf("ok\n");
}

/* Decodes hex `h` into out (NUL-terminated); "-" is NULL. Returns 0, or -1 on bad hex or overflow. */
static int keeper_unhex(const char *h, char *out, size_t cap, char **res) {
  if (!strcmp(h, "-")) { *res = NULL; return 0; }
  size_t n = strlen(h);
  if (n % 2 || n / 2 + 1 > cap) return -1;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
    if (hi < 0 || lo < 0) return -1;
    out[i] = (char)(hi << 4 | lo);
  }
  out[n / 2] = 0;
  if (memchr(out, 0, n / 2)) return -1;
  *res = out;
  return 0;
}

/* Splits a request's arguments on spaces into exactly `want` tokens; -1 for any other count. */
static int keeper_split(char *args, char **tok, int want) {
  char *save = NULL;
  int n = 0;
  for (char *t = strtok_r(args, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
    if (n == want) return -1;
    tok[n++] = t;
  }
  return n == want ? 0 : -1;
}

/* mount SRC TARGET FSTYPE FLAGS DATA: one mount(2), the strings in hex ("-": none). The agent
 * decides flags and data as mount(8) would (sys/mount.ts); a fork+exec of mount(8) per storage
 * costs ~0.5 s under TCG. */
static void keeper_mount(char *args) {
  static char buf[4][KEEPER_LINE / 2];
  char *tok[5], *str[4];
  if (keeper_split(args, tok, 5) < 0) { printf("error mount wants SRC TARGET FSTYPE FLAGS DATA\n"); return; }
  const int which[4] = { 0, 1, 2, 4 };
  for (int i = 0; i < 4; i++) {
    if (keeper_unhex(tok[which[i]], buf[i], sizeof buf[i], &str[i]) < 0) { printf("error mount: bad hex\n"); return; }
  }
  char *end;
  errno = 0;
  unsigned long flags = strtoul(tok[3], &end, 10);
  if (errno || *end || !str[0] || !str[1]) { printf("error mount wants SRC TARGET FSTYPE FLAGS DATA\n"); return; }
  if (mount(str[0], str[1], str[2], flags, str[3]) < 0) printf("error mount %s: %s\n", str[1], strerror(errno));
  else printf("ok\n");
}

/* The keeper's signal mask before it blocked SIGCHLD, and its signalfd: what a forked child
 * restores and closes before it becomes something else. */
static sigset_t keeper_oldmask;
static int keeper_sfd = -1;
static char *keeper_argv0 = "katats-runner";
/* The sealed copy of crun (keeper_crun) and the name it was asked for: a child whose command is
 * that name runs the copy. */
static int keeper_crun_fd = -1;
static char keeper_crun_name[KEEPER_LINE / 2];
/* Where a child finds the copy: above the fds 0-4 it is given, below the ones it moves high. */
#define KEEPER_CRUN_CHILD_FD 5

/* A child of the keeper starts as the agent's own spawn would: no SIGCHLD blocked, no keeper fds. */
static void keeper_child_reset(void) {
  if (keeper_sfd >= 0) close(keeper_sfd);
  sigprocmask(SIG_SETMASK, &keeper_oldmask, NULL);
}

/* ns DIR HOSTNAME: the ns mode in a child of the keeper, whose fork is cheap (a small static
 * process), where the agent's own spawn would fork node. Its errors go to the keeper's stderr. */
static void keeper_ns(char *args) {
  static char buf[2][KEEPER_LINE / 2];
  char *tok[2], *str[2];
  if (keeper_split(args, tok, 2) < 0) { printf("error ns wants DIR HOSTNAME\n"); return; }
  for (int i = 0; i < 2; i++) {
    if (keeper_unhex(tok[i], buf[i], sizeof buf[i], &str[i]) < 0) { printf("error ns: bad hex\n"); return; }
  }
  if (!str[0]) { printf("error ns wants DIR HOSTNAME\n"); return; }
  char *av[2] = { str[0], str[1] ? str[1] : "" };
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) { printf("error ns: fork: %s\n", strerror(errno)); return; }
  if (pid == 0) {
    keeper_child_reset();
    _exit(mode_ns(2, av));
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) { printf("error ns: waitpid: %s\n", strerror(errno)); return; }
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) printf("ok\n");
  else printf("error ns failed (wait status %d)\n", st);
}

#define KEEPER_RUN_ARGS 128

/* Moves fd above the numbers a child is about to fill (0-4), so no dup2 into place clobbers it. */
static int keeper_high(int fd) {
  if (fd < 0) return -1;
  int h = fcntl(fd, F_DUPFD_CLOEXEC, 10);
  close(fd);
  return h;
}

/* crun NAME: a sealed memfd copy of crun (NAME as execvp would find it), made once, before the
 * template is saved; every crun the keeper's children start runs from it (exec_command). The four
 * seals are the ones crun checks for, so the copy is as unwritable as the one crun would make. */
static void keeper_crun(char *args) {
  static char buf[KEEPER_LINE / 2];
  char *name;
  if (keeper_unhex(args, buf, sizeof buf, &name) < 0 || !name) { printf("error crun wants NAME\n"); return; }
  char found[4096];
  if (strchr(name, '/')) {
    snprintf(found, sizeof found, "%s", name);
  } else {
    const char *path = getenv("PATH");
    found[0] = 0;
    for (const char *p = path ? path : "/usr/bin:/bin"; *p && !found[0];) {
      size_t len = strcspn(p, ":");
      snprintf(found, sizeof found, "%.*s/%s", (int)len, p, name);
      if (access(found, X_OK) < 0) found[0] = 0;
      p += len;
      if (*p == ':') p++;
    }
    if (!found[0]) { printf("error crun: %s not found in PATH\n", name); return; }
  }
  int in = open(found, O_RDONLY | O_CLOEXEC);
  if (in < 0) { printf("error crun: open %s: %s\n", found, strerror(errno)); return; }
  struct stat st;
  int fd = memfd_create("crun", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0 || fstat(in, &st) < 0) { printf("error crun: memfd: %s\n", strerror(errno)); close(in); if (fd >= 0) close(fd); return; }
  off_t sent = 0;
  while (sent < st.st_size) {
    ssize_t w = sendfile(fd, in, NULL, st.st_size - sent);
    if (w <= 0) { printf("error crun: copy %s: %s\n", found, w < 0 ? strerror(errno) : "short"); close(in); close(fd); return; }
    sent += w;
  }
  close(in);
  if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0) {
    printf("error crun: seal: %s\n", strerror(errno));
    close(fd);
    return;
  }
  if (keeper_crun_fd >= 0) close(keeper_crun_fd);
  /* Above the numbers a child fills (0-5), so no dup2 of theirs clobbers it first. */
  keeper_crun_fd = keeper_high(fd);
  snprintf(keeper_crun_name, sizeof keeper_crun_name, "%s", name);
  printf("ok\n");
}


/* Points the child's /proc/PID/cmdline at argv (a copy on its heap) with PR_SET_MM, which takes
 * CAP_SYS_RESOURCE (the guest's agent has it; a host's container may not). 0 when done. */
static int keeper_name_child(char **argv) {
  size_t len = 0;
  for (int i = 0; argv[i]; i++) len += strlen(argv[i]) + 1;
  char *buf = malloc(len), *p = buf;
  if (!buf) return -1;
  for (int i = 0; argv[i]; i++) p = stpcpy(p, argv[i]) + 1;
  /* The kernel keeps start below end at each step: which moves first depends on where buf is. */
  if (prctl(PR_SET_MM, PR_SET_MM_ARG_START, (unsigned long)buf, 0, 0) == 0)
    return prctl(PR_SET_MM, PR_SET_MM_ARG_END, (unsigned long)(buf + len), 0, 0);
  if (prctl(PR_SET_MM, PR_SET_MM_ARG_END, (unsigned long)(buf + len), 0, 0) < 0) return -1;
  return prctl(PR_SET_MM, PR_SET_MM_ARG_START, (unsigned long)buf, 0, 0);
}

/* run SOCK ERRFILE ARG...: the run mode in a child of the keeper, with its status and control
 * channel one unix stream connection to SOCK (the agent listens there) at fds 3 and 4, its stderr
 * in ERRFILE, stdin and stdout /dev/null. exec OUTFILE ERRFILE ARG...: the exec mode (a one-shot
 * crun command) in a child, its stdout and stderr in the files. All strings hex. Answers "ok PID"
 * at once; the child's end comes later as an "exited PID WAITSTATUS" line. A spawn from node
 * forks node, ~0.5 s under TCG; this forks the keeper, which is small. */
static void keeper_fork(char *args, int exec_mode) {
  const char *verb = exec_mode ? "exec" : "run";
  char *tok[KEEPER_RUN_ARGS + 2], *str[KEEPER_RUN_ARGS + 5];
  int n = 0;
  char *save = NULL;
  for (char *t = strtok_r(args, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
    if (n == KEEPER_RUN_ARGS + 2) { printf("error %s takes at most %d arguments\n", verb, KEEPER_RUN_ARGS); return; }
    tok[n++] = t;
  }
  if (n < 3) { printf("error %s wants %s ERRFILE ARG...\n", verb, exec_mode ? "OUTFILE" : "SOCK"); return; }
  /* Decoding halves each token in place: hex is twice as long as what it encodes. */
  for (int i = 0; i < n; i++) {
    if (keeper_unhex(tok[i], tok[i], strlen(tok[i]) / 2 + 1, &str[i]) < 0 || !str[i]) { printf("error %s: bad hex\n", verb); return; }
  }
  str[n] = NULL;
  /* A crun command runs from the sealed copy: "--crun-fd 5" goes in before the "--". */
  static char crun_fd_num[8];
  int use_crun = 0;
  if (keeper_crun_fd >= 0) {
    for (int i = 2; i + 1 < n; i++) {
      if (strcmp(str[i], "--")) continue;
      if (strcmp(str[i + 1], keeper_crun_name)) break;
      memmove(str + i + 2, str + i, (size_t)(n - i + 1) * sizeof *str);
      snprintf(crun_fd_num, sizeof crun_fd_num, "%d", KEEPER_CRUN_CHILD_FD);
      str[i] = "--crun-fd";
      str[i + 1] = crun_fd_num;
      n += 2;
      use_crun = 1;
      break;
    }
  }
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (!exec_mode && strlen(str[0]) >= sizeof sa.sun_path) { printf("error run: socket path too long\n"); return; }
  if (!exec_mode) strcpy(sa.sun_path, str[0]);
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) { printf("error %s: fork: %s\n", verb, strerror(errno)); return; }
  if (pid == 0) {
    keeper_child_reset();
    int nul = keeper_high(open("/dev/null", O_RDWR | O_CLOEXEC));
    int err = keeper_high(open(str[1], O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (nul < 0 || err < 0) _exit(125);
    dup2(err, 2);
    /* Kept open across the exec of the run mode (dup2 clears close-on-exec); the runner closes it on exec. */
    if (use_crun && (dup2(keeper_crun_fd, KEEPER_CRUN_CHILD_FD) < 0 || fcntl(KEEPER_CRUN_CHILD_FD, F_SETFD, 0) < 0)) _exit(125);
    if (exec_mode) {
      int out = keeper_high(open(str[0], O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (out < 0) { fprintf(stderr, "katats-runner: open %s: %s\n", str[0], strerror(errno)); _exit(125); }
      dup2(nul, 0); dup2(out, 1);
      close(nul); close(err); close(out);
      /* mode_exec execs the command in place: crun's own exit status is the child's. */
      _exit(mode_exec(n - 2, str + 2));
    }
    int s = keeper_high(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int r;
    do r = s < 0 ? -1 : connect(s, (struct sockaddr *)&sa, sizeof sa); while (r < 0 && errno == EINTR);
    if (r < 0) { fprintf(stderr, "katats-runner: connect %s: %s\n", str[0], strerror(errno)); _exit(125); }
    dup2(nul, 0); dup2(nul, 1); dup2(s, STATUS_FD); dup2(s, CTL_FD);
    close(nul); close(err); close(s);
    /* Named as a runner spawned by the agent is, `katats-runner run ...`, for ps and /proc; not
       exec'd again where that can be done without (it is the runner binary already, and under
       TCG an exec is what costs), else exec'd afresh from /proc/self/exe to get the name. */
    str[0] = keeper_argv0;
    str[1] = "run";
    if (keeper_name_child(str) < 0) execv("/proc/self/exe", str);
    exit(mode_run(n - 2, str + 2));
  }
  printf("ok %d\n", (int)pid);
}

/* One operation of a net request on the rtnetlink socket fd: 0, or -1 with its error in err. */
static int net_op(int fd, char **w, int nw, struct net_out *out, char *err) {
  const char *op = w[0];
  char **rest = w + 1;
  int nrest = nw - 1, r;
  if (!strcmp(op, "links")) {
    r = nrest ? net_fail(err, "link show", EINVAL, "takes no arguments") : nl_dump(fd, RTM_GETLINK, net_link_item, out, "link show", err);
    if (!r && out->over) r = net_fail(err, "link show", EMSGSIZE, "more links than an answer carries");
  } else if (!strcmp(op, "addrs")) {
    char what[64];
    snprintf(what, sizeof what, "addr show dev %s", nrest == 1 ? rest[0] : "?");
    r = nrest != 1 ? net_fail(err, what, EINVAL, "wants DEV") : (out->index = net_index(fd, rest[0], what, err));
    if (r >= 0) r = nl_dump(fd, RTM_GETADDR, net_addr_item, out, what, err);
    if (!r && out->over) r = net_fail(err, what, EMSGSIZE, "more addresses than an answer carries");
  } else if (!strcmp(op, "link")) {
    r = net_link(fd, rest, nrest, err);
  } else if (!strcmp(op, "addr")) {
    r = net_addr(fd, rest, nrest, err);
  } else if (!strcmp(op, "route")) {
    r = net_route(fd, rest, nrest, err);
  } else if (!strcmp(op, "neigh")) {
    r = nrest != 3 ? net_fail(err, "neigh replace", EINVAL, "wants DEV ADDRESS LLADDR") : net_neigh(fd, rest[0], rest[1], rest[2], err);
  } else {
    snprintf(err, NET_ERR, "net: unknown operation %s", op);
    r = -1;
  }
  return r < 0 ? -1 : 0;
}

/* A net request's words: the line's bound allows no more. */
#define NET_WORDS (KEEPER_LINE / 2)
/* The words of one operation (a route's are the most). */
#define NET_OP_WORDS 12

/* net NS OP ARGS... [; OP ARGS...]...: the pod network through rtnetlink (see the rtnetlink
 * section), in the network namespace at NS (hex; "-": the keeper's own). The operations run in
 * order on one socket; the first that fails ends the request, answered with its error (those
 * before it stay done); else "ok" and what the listings found. OP: "links", " INDEX/NAME/LLADDR/
 * MTU/FLAGS" per link; "addrs DEV", " ADDR/PREFIX/SCOPE" per address; "link", "addr", "route",
 * "neigh" one change each. One request per step of a pod's configuration, not one per change:
 * each request is a round trip through node, slow under TCG. */
static void keeper_net(char *args) {
  static char nsbuf[KEEPER_LINE / 2];
  static char *w[NET_WORDS];
  char *ns, err[NET_ERR];
  int nw = 0;
  char *save = NULL;
  for (char *t = strtok_r(args, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
    if (nw == NET_WORDS) { printf("error net: too many words\n"); return; }
    w[nw++] = t;
  }
  if (nw < 2) { printf("error net wants NS OP ARGS...\n"); return; }
  if (keeper_unhex(w[0], nsbuf, sizeof nsbuf, &ns) < 0) { printf("error net: bad hex\n"); return; }
  /* Each operation checked for its shape before any runs. */
  for (int i = 1, start = 1; i <= nw; i++) {
    if (i < nw && strcmp(w[i], ";")) continue;
    if (i == start || i - start > NET_OP_WORDS) { printf("error net: an empty operation or one of more than %d words\n", NET_OP_WORDS); return; }
    const char *op = w[start];
    if (strcmp(op, "links") && strcmp(op, "addrs") && strcmp(op, "link") && strcmp(op, "addr") && strcmp(op, "route") && strcmp(op, "neigh")) {
      printf("error net: unknown operation %s\n", op);
      return;
    }
    start = i + 1;
  }
  int fd = net_open(ns, err);
  if (fd < 0) { printf("error %s\n", err); return; }
  static struct net_out out;
  memset(&out, 0, sizeof out);
  int r = 0;
  for (int i = 1, start = 1; i <= nw && !r; i++) {
    if (i < nw && strcmp(w[i], ";")) continue;
    r = net_op(fd, w + start, i - start, &out, err);
    start = i + 1;
  }
  close(fd);
  if (r < 0) printf("error %s\n", err);
  else printf("ok%s\n", out.text);
}

/* One request line (without its newline), answered with one line on stdout. */
static void keeper_request(char *line) {
  long long sec; long usec; char extra;
  if (!strncmp(line, "time ", 5)) {
    if (sscanf(line + 5, "%lld %ld %c", &sec, &usec, &extra) != 2 || sec < 0 || usec < 0 || usec >= 1000000) { printf("error time wants SEC USEC\n"); return; }
    struct timeval tv = { .tv_sec = (time_t)sec, .tv_usec = (suseconds_t)usec };
    if (settimeofday(&tv, NULL) < 0) printf("error settimeofday: %s\n", strerror(errno));
    else printf("ok\n");
  } else if (!strncmp(line, "seed ", 5)) {
    keeper_seed(line + 5);
  } else if (!strncmp(line, "mount ", 6)) {
    keeper_mount(line + 6);
  } else if (!strncmp(line, "ns ", 3)) {
    keeper_ns(line + 3);
  } else if (!strncmp(line, "run ", 4)) {
    keeper_fork(line + 4, 0);
  } else if (!strncmp(line, "exec ", 5)) {
    keeper_fork(line + 5, 1);
  } else if (!strncmp(line, "crun ", 5)) {
    keeper_crun(line + 5);
  } else if (!strncmp(line, "net ", 4)) {
    keeper_net(line + 4);
  } else {
    printf("error unknown request\n");
  }
}

/* Reaps every ended child (the runners; an ns child is waited for where it is forked) and says so. */
static void keeper_reap(void) {
  struct signalfd_siginfo si;
  while (read(keeper_sfd, &si, sizeof si) > 0) {}
  int st;
  pid_t p;
  while ((p = waitpid(-1, &st, WNOHANG)) > 0) printf("exited %d %d\n", (int)p, st);
}

static int mode_keeper(void) {
  static char line[KEEPER_LINE];
  size_t len = 0;
  int skipping = 0;
  setvbuf(stdout, NULL, _IOLBF, 0);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &keeper_oldmask);
  keeper_sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (keeper_sfd < 0) { fprintf(stderr, "katats-runner keeper: signalfd: %s\n", strerror(errno)); return 1; }
  for (;;) {
    struct pollfd pf[2] = { { 0, POLLIN, 0 }, { keeper_sfd, POLLIN, 0 } };
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "katats-runner keeper: poll: %s\n", strerror(errno));
      return 1;
    }
    if (pf[1].revents & POLLIN) keeper_reap();
    if (!(pf[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    char chunk[4096];
    ssize_t got = read(0, chunk, sizeof chunk);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    for (ssize_t i = 0; i < got; i++) {
      char c = chunk[i];
      if (c == '\n') {
        if (!skipping) { line[len] = 0; keeper_request(line); }
        len = 0;
        skipping = 0;
      } else if (skipping) {
        continue;
      } else if (len == KEEPER_LINE - 2) {
        /* over-long request: answered once, its rest skipped */
        printf("error request longer than %d bytes\n", KEEPER_LINE - 2);
        skipping = 1;
      } else {
        line[len++] = c;
      }
    }
  }
  /* A last request without its newline is still answered. */
  if (len && !skipping) { line[len] = 0; keeper_request(line); }
  return 0;
}

/* ---------------------------------------------------------------- init */

/* die() reports on the status fd of the other modes and exits; PID 1 must instead power off
 * (its exit would panic the kernel) and has no status fd. */
static int init_pid1;
static void init_fail(const char *what) {
  fprintf(stderr, "katats-runner init: %s: %s\n", what, strerror(errno));
  if (init_pid1) {
    sync();
    reboot(RB_POWER_OFF);
  }
  exit(1);
}

/* Forks PROG with the signal mask it should have; the parent keeps every signal blocked. A
 * ready_fd >= 0 is left open in PROG and named in KATATS_INIT_READY_FD. */
static pid_t init_spawn(char **argv, const sigset_t *old, int ready_fd) {
  pid_t child = fork();
  if (child < 0) init_fail("fork");
  if (child == 0) {
    sigprocmask(SIG_SETMASK, old, NULL);
    if (ready_fd >= 0) {
      char num[16];
      snprintf(num, sizeof num, "%d", ready_fd);
      setenv("KATATS_INIT_READY_FD", num, 1);
    }
    execvp(argv[0], argv);
    fprintf(stderr, "katats-runner init: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  return child;
}

/* V8 refuses a startup snapshot made on a CPU whose V8-visible features differ, and node then exits
 * with status 1 before running any of the agent. The init's CPU signature catches most such guests,
 * not all (TCG's CPU model can match it and still differ), so a node started with --snapshot-blob
 * that ends with status 1 before the agent said it serves (a byte on the KATATS_INIT_READY_FD pipe)
 * is started once more without it. A time window stood for "before it served" until a loaded host
 * made the refusal itself outlast it and the VM powered off. */
static int drop_snapshot_args(char **argv) {
  int w = 0, dropped = 0;
  for (int r = 0; argv[r]; r++) {
    if (!strcmp(argv[r], "--snapshot-blob") && argv[r + 1]) { r++; dropped = 1; continue; }
    argv[w++] = argv[r];
  }
  argv[w] = NULL;
  return dropped;
}

static int mode_init(int argc, char **argv) {
  if (argc > 0 && !strcmp(argv[0], "--")) { argc--; argv++; }
  if (argc < 1) { fprintf(stderr, "usage: katats-runner init -- PROG ARGS\n"); return 2; }
  int pid1 = init_pid1 = getpid() == 1;
  if (!pid1 && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) init_fail("PR_SET_CHILD_SUBREAPER");
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  int with_snapshot = 0;
  for (int i = 0; argv[i]; i++) if (!strcmp(argv[i], "--snapshot-blob")) with_snapshot = 1;
  int ready[2] = {-1, -1};
  if (with_snapshot && pipe(ready) < 0) init_fail("pipe");
  if (ready[0] >= 0) fcntl(ready[0], F_SETFD, FD_CLOEXEC);
  pid_t child = init_spawn(argv, &old, ready[1]);
  if (ready[1] >= 0) close(ready[1]);
  unsigned long orphans = 0;
  int code = -1;
  while (code < 0) {
    siginfo_t si;
    int sig = sigwaitinfo(&all, &si);
    if (sig < 0) {
      if (errno == EINTR) continue;
      init_fail("sigwaitinfo");
    }
    if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGUSR1 || sig == SIGUSR2) {
      kill(child, sig);
      continue;
    }
    if (sig != SIGCHLD) continue;
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
      if (p == child) code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      else orphans++;
    }
    if (code >= 0 && ready[0] >= 0) {
      /* PROG has ended, so the pipe holds its byte or reads as EOF: this read cannot block. */
      char b;
      ssize_t n;
      do n = read(ready[0], &b, 1); while (n < 0 && errno == EINTR);
      close(ready[0]);
      ready[0] = -1;
      if (code == 1 && n <= 0 && drop_snapshot_args(argv)) {
        fprintf(stderr, "katats-runner init: %s ended with the startup snapshot before serving; starting it without\n", argv[0]);
        code = -1;
        child = init_spawn(argv, &old, -1);
      }
    }
  }
  fprintf(stderr, "katats-runner init: %s exited with status %d; %lu orphan(s) reaped\n", argv[0], code, orphans);
  if (pid1) {
    sync();
    reboot(RB_POWER_OFF);
    init_fail("reboot");
  }
  return code;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: katats-runner run|exec|oom-v1|ns|settime|verity-open|verity-close|keeper|tap-exec|neigh-add|init ...\n");
    return 2;
  }
  if (!strcmp(argv[1], "run")) return mode_run(argc - 2, argv + 2);
  if (!strcmp(argv[1], "exec")) return mode_exec(argc - 2, argv + 2);
  if (!strcmp(argv[1], "oom-v1")) return mode_oom_v1(argc - 2, argv + 2);
  if (!strcmp(argv[1], "ns")) return mode_ns(argc - 2, argv + 2);
  if (!strcmp(argv[1], "settime")) return mode_settime(argc - 2, argv + 2);
  if (!strcmp(argv[1], "keeper")) {
    keeper_argv0 = argv[0];
    return mode_keeper();
  }
  if (!strcmp(argv[1], "init")) return mode_init(argc - 2, argv + 2);
  if (!strcmp(argv[1], "verity-open")) return mode_verity_open(argc - 2, argv + 2);
  if (!strcmp(argv[1], "verity-close")) return mode_verity_close(argc - 2, argv + 2);
  if (!strcmp(argv[1], "tap-exec")) return mode_tap_exec(argc - 2, argv + 2);
  if (!strcmp(argv[1], "neigh-add")) return mode_neigh_add(argc - 2, argv + 2);
  if (!strcmp(argv[1], "--version")) { printf("katats-runner 1\n"); return 0; }
  fprintf(stderr, "katats-runner: unknown mode %s\n", argv[1]);
  return 2;
}
