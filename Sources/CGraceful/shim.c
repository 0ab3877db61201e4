#define _GNU_SOURCE
#include "CGraceful.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <linux/futex.h>
#include <limits.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

int graceful_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return errno;
    return 0;
}

/// Closes every descriptor in [low, high]; close_range when the kernel has it, else one by one.
static void close_from(int low, int high, int max_fd) {
    if (low > high) return;
    if (syscall(SYS_close_range, (unsigned)low, (unsigned)high, 0) == 0) return;
    int last = high < max_fd ? high : max_fd;
    for (int fd = low; fd <= last; fd++) close(fd);
}

static ssize_t write_all(int fd, const void *buffer, size_t size) {
    ssize_t written;
    do { written = write(fd, buffer, size); } while (written < 0 && errno == EINTR);
    return written;
}

int graceful_spawn(const char *path, char *const argv[], char *const envp[],
                   const int *sources, int count, int pdeathsig, pid_t *pid_out) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return errno;
    if (report[1] < count) {
        // The child maps descriptors 0..<count; its end of the report pipe must lie above them.
        int high = fcntl(report[1], F_DUPFD_CLOEXEC, count);
        int error = errno;
        close(report[1]);
        if (high < 0) {
            close(report[0]);
            return error;
        }
        report[1] = high;
    }
    long open_max = sysconf(_SC_OPEN_MAX);
    int max_fd = open_max > 0 && open_max < 1048576 ? (int)open_max : 1048576;
    pid_t parent = getpid();

    // Block every signal across fork so the child cannot run the coordinator's handlers (which write
    // to the coordinator's self-pipe) before it has reset them.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);

    pid_t pid = fork();
    if (pid == 0) {
        // Child: only async-signal-safe calls from here to exec.
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        for (int sig = 1; sig < NSIG; sig++) {
            if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, NULL);
        }
        setpgid(0, 0);
        if (pdeathsig != 0) {
            prctl(PR_SET_PDEATHSIG, pdeathsig);
            // The coordinator may have died before prctl took effect.
            if (getppid() != parent) raise(pdeathsig);
        }
        // Move every source above the target range first, so mapping one cannot clobber another.
        int moved[count > 0 ? count : 1];
        for (int i = 0; i < count; i++) {
            moved[i] = fcntl(sources[i], F_DUPFD_CLOEXEC, count > report[1] ? count : report[1] + 1);
            if (moved[i] < 0) goto fail;
        }
        for (int i = 0; i < count; i++) {
            if (dup2(moved[i], i) < 0) goto fail;
        }
        close_from(count, report[1] - 1, max_fd);
        close_from(report[1] + 1, ~0U >> 1, max_fd);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(path, argv, envp);
    fail:;
        int error = errno;
        write_all(report[1], &error, sizeof error);
        _exit(127);
    }
    int fork_error = pid < 0 ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    if (pid < 0) {
        close(report[0]);
        return fork_error;
    }
    int child_error = 0;
    ssize_t got;
    do { got = read(report[0], &child_error, sizeof child_error); } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t)sizeof child_error) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return child_error;
    }
    *pid_out = pid;
    return 0;
}

int graceful_pipe(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) != 0) return errno;
    return graceful_set_nonblocking(fds[0]);
}

int graceful_channel_pair(int fds[2]) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return errno;
    return graceful_set_nonblocking(fds[0]);
}

static _Atomic int signal_write_fd = -1;

static void forward_signal(int sig) {
    int saved = errno;
    unsigned char byte = (unsigned char)sig;
    int fd = atomic_load(&signal_write_fd);
    if (fd >= 0) {
        // Non-blocking: when the pipe is full the coordinator has unread signals already; drop the byte.
        (void)!write(fd, &byte, 1);
    }
    errno = saved;
}

int graceful_signal_catch(int write_fd, int sig) {
    atomic_store(&signal_write_fd, write_fd);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = forward_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (sig == SIGCHLD) action.sa_flags |= SA_NOCLDSTOP;
    return sigaction(sig, &action, NULL) == 0 ? 0 : errno;
}

int graceful_signal_ignore(int sig) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_IGN;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL) == 0 ? 0 : errno;
}

int graceful_signal_is_ignored(int sig) {
    struct sigaction current;
    if (sigaction(sig, NULL, &current) != 0) return 0;
    return current.sa_handler == SIG_IGN;
}

int graceful_become_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0 ? 0 : errno;
}

int graceful_reap_any(int *status) {
    pid_t result;
    do { result = waitpid(-1, status, WNOHANG); } while (result < 0 && errno == EINTR);
    return result;
}

#define GUARD_MAX_GROUPS 65536

pid_t graceful_start_guard(int *write_fd) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return -1;
    long open_max = sysconf(_SC_OPEN_MAX);
    int max_fd = open_max > 0 && open_max < 1048576 ? (int)open_max : 1048576;
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t pid = fork();
    if (pid == 0) {
        // The guard: async-signal-safe calls only (the coordinator may have threads).
        struct sigaction ignore;
        memset(&ignore, 0, sizeof ignore);
        ignore.sa_handler = SIG_IGN;
        sigemptyset(&ignore.sa_mask);
        for (int sig = 1; sig < NSIG; sig++) {
            if (sig != SIGKILL && sig != SIGSTOP && sig != SIGCHLD) sigaction(sig, &ignore, NULL);
        }
        setsid();
        int input = fds[0];
        if (input != 3) {
            dup2(input, 3);
            input = 3;
        }
        close_from(0, 2, max_fd);
        close_from(4, ~0U >> 1, max_fd);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        static int32_t groups[GUARD_MAX_GROUPS];
        int count = 0;
        for (;;) {
            int32_t value;
            ssize_t got;
            do { got = read(input, &value, sizeof value); } while (got < 0 && errno == EINTR);
            if (got != (ssize_t)sizeof value) break;
            if (value == 0) _exit(0);
            if (value > 0) {
                if (count < GUARD_MAX_GROUPS) groups[count++] = value;
            } else {
                for (int i = 0; i < count; i++) {
                    if (groups[i] == -value) {
                        groups[i] = groups[--count];
                        break;
                    }
                }
            }
        }
        for (int i = 0; i < count; i++) kill(-groups[i], SIGKILL);
        _exit(0);
    }
    int fork_error = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(fds[0]);
    if (pid < 0) {
        close(fds[1]);
        errno = fork_error;
        return -1;
    }
    *write_fd = fds[1];
    return pid;
}

void graceful_unblock_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, NULL);
}

void graceful_ensure_stdio(void) {
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int null = open("/dev/null", O_RDWR);
            if (null >= 0 && null != fd) {
                dup2(null, fd);
                close(null);
            }
        }
    }
}

long graceful_raise_nofile_limit(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) getrlimit(RLIMIT_NOFILE, &limit);
    }
    return (long)limit.rlim_cur;
}

int graceful_free_tcp_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    address.sin_port = 0;
    socklen_t length = sizeof address;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&address, sizeof address) == 0 &&
        getsockname(fd, (struct sockaddr *)&address, &length) == 0) {
        port = ntohs(address.sin_port);
    }
    close(fd);
    return port;
}

int graceful_status_exit_code(int status) { return WEXITSTATUS(status); }
int graceful_status_signaled(int status) { return WIFSIGNALED(status); }
int graceful_status_signal(int status) { return WTERMSIG(status); }

int graceful_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int graceful_epoll_add(int epfd, int fd, uint64_t token) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN | EPOLLRDHUP;
    event.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event) == 0 ? 0 : errno;
}

int graceful_epoll_remove(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) == 0 ? 0 : errno;
}

int graceful_epoll_wait(int epfd, graceful_event *events, int max, int timeout_ms) {
    struct epoll_event raw[256];
    if (max > 256) max = 256;
    int count = epoll_wait(epfd, raw, max, timeout_ms);
    if (count < 0) return errno == EINTR ? 0 : -1;
    for (int i = 0; i < count; i++) {
        events[i].token = raw[i].data.u64;
        uint32_t flags = 0;
        if (raw[i].events & EPOLLIN) flags |= GRACEFUL_READABLE;
        if (raw[i].events & (EPOLLHUP | EPOLLRDHUP)) flags |= GRACEFUL_HANGUP;
        if (raw[i].events & EPOLLERR) flags |= GRACEFUL_ERROR;
        events[i].events = flags;
    }
    return count;
}

static volatile sig_atomic_t rank_caught_signal = 0;

static void rank_stop_signal(int sig) { rank_caught_signal = sig; }

int graceful_rank_catch_stop_signals(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = rank_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &action, NULL) != 0) return errno;
    if (sigaction(SIGTERM, &action, NULL) != 0) return errno;
    return 0;
}

int graceful_rank_caught_signal(void) { return rank_caught_signal; }

uint32_t *graceful_doorbell_map(const char *path, int writable) {
    // A new file each time: a process still mapping an older one keeps its page (a truncated file
    // would fault it with SIGBUS).
    if (writable && unlink(path) != 0 && errno != ENOENT) return NULL;
    int fd = writable ? open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644)
                      : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    if (writable && ftruncate(fd, GRACEFUL_DOORBELL_SIZE) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return NULL;
    }
    struct stat info;
    if (!writable && (fstat(fd, &info) != 0 || info.st_size < GRACEFUL_DOORBELL_SIZE)) {
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    void *page = mmap(NULL, GRACEFUL_DOORBELL_SIZE, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    int saved = errno;
    close(fd);
    if (page == MAP_FAILED) {
        errno = saved;
        return NULL;
    }
    return page;
}

void graceful_doorbell_ring(uint32_t *word, uint32_t id) {
    __atomic_store_n(word, id, __ATOMIC_SEQ_CST);
    // Shared (not FUTEX_PRIVATE): the waiters are in other processes. Without waiters it is cheap.
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void graceful_doorbell_wait(const uint32_t *word, uint32_t seen) {
    // Returns early on a signal or a spurious wake-up: the loop checks the word again.
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == seen) {
        syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0);
    }
}
