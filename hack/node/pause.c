/* The pod sandbox's pause process for the real-pods node (tests/support/node.py): no registry
 * is reachable here, so hack/build-image.sh builds the pause image from this file (a static
 * binary in an image FROM scratch). It does what the upstream pause does: sleep until SIGINT
 * or SIGTERM, and reap children (it is PID 1 when the pod shares its PID namespace). */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop_action = {.sa_handler = stop};
    struct sigaction reap_action = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &stop_action, NULL) < 0 || sigaction(SIGTERM, &stop_action, NULL) < 0 ||
        sigaction(SIGCHLD, &reap_action, NULL) < 0) {
        return 1;
    }
    for (;;) pause();
    return 42;
}
