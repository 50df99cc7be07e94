/*
 * The pod's placeholder process (the sandbox container of a CRI pod): it holds the pod's
 * namespaces open and does nothing else. As PID 1 of a shared PID namespace it must reap
 * orphans (SIGCHLD), and it must end on SIGTERM/SIGINT: PID 1 has no default signal actions,
 * so an unhandled SIGTERM would be ignored and stopping the pod would wait for SIGKILL.
 * Built with gcc -static so that the image needs no libc.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
	/* async-signal-safe: write(2) and _exit(2) only */
	static const char msg[] = "pause: shutting down\n";
	(void)sig;
	(void)!write(STDERR_FILENO, msg, sizeof msg - 1);
	_exit(0);
}

static void on_child(int sig) {
	int saved = errno;
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
	errno = saved;
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		printf("katats pause 1\n");
		return 0;
	}
	struct sigaction term = {0}, child = {0};
	term.sa_handler = on_term;
	sigemptyset(&term.sa_mask);
	child.sa_handler = on_child;
	sigemptyset(&child.sa_mask);
	child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGTERM, &term, NULL) < 0 || sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGCHLD, &child, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;) pause();
}
