#define _GNU_SOURCE
#include "CGraceful.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <linux/aio_abi.h>
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
                   const int *sources, int count, int pdeathsig, long nofile_soft, pid_t *pid_out) {
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
        if (nofile_soft >= 0) {
            struct rlimit limit;
            if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && (rlim_t)nofile_soft < limit.rlim_cur) {
                limit.rlim_cur = (rlim_t)nofile_soft;
                setrlimit(RLIMIT_NOFILE, &limit);
            }
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

static int set_disposition(int sig, void (*handler)(int)) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL) == 0 ? 0 : errno;
}

int graceful_signal_ignore(int sig) { return set_disposition(sig, SIG_IGN); }

int graceful_signal_default(int sig) { return set_disposition(sig, SIG_DFL); }

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

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

int graceful_pidfd_open(pid_t pid) {
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

int graceful_pidfd_signal(int pidfd, int sig) {
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0 ? 0 : errno;
}

/// The guard's messages: a kind and a pid, with the pidfd of that pid attached.
enum { GUARD_RANK = 'K', GUARD_WATCH = 'W', GUARD_RELEASE = 'R' };
struct guard_message {
    char kind;
    int32_t pid;
};

/// The most descriptors one message to the guard carries: a pidfd, then (for a rank) the
/// coordinator's ends of its channel and output pipes.
#define GUARD_MAX_FDS 4

/// What the guard holds: a process, proven the coordinator's, and whether it leads a rank's group.
/// A rank's entry also holds the coordinator's ends of its channel and pipes (`held`), never read:
/// while the guard lives, the coordinator's death is no end of file on the channel and no SIGPIPE on
/// the rank's output, so no rank ends on its own (its children going to init, out of the guard's
/// sight) before the guard has stopped it.
struct guard_entry {
    int fd;
    pid_t pid;
    int is_rank;
    int held[GUARD_MAX_FDS - 1];
};

static void guard_entry_close(struct guard_entry *entry) {
    close(entry->fd);
    for (int k = 0; k < GUARD_MAX_FDS - 1; k++) {
        if (entry->held[k] >= 0) close(entry->held[k]);
    }
}

static int alive(int pidfd) { return graceful_pidfd_signal(pidfd, 0) == 0; }

/// Reads a whole small file with raw system calls (no malloc: the guard is a fork of a process that
/// may have threads). Returns the length, or -1.
static ssize_t read_file(const char *path, char *buffer, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t total = 0;
    while (total < size - 1) {
        ssize_t got = read(fd, buffer + total, size - 1 - total);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        total += (size_t)got;
    }
    close(fd);
    buffer[total] = 0;
    return (ssize_t)total;
}

static int format_path(char *out, size_t size, const char *a, long n, const char *b, long m, const char *c) {
    // "/proc/<n><b>[<m><c>]" without snprintf's locale and malloc.
    char digits[2][24];
    long values[2] = {n, m};
    for (int k = 0; k < 2; k++) {
        char reversed[24];
        int length = 0;
        long value = values[k] < 0 ? 0 : values[k];
        do { reversed[length++] = (char)('0' + value % 10); value /= 10; } while (value && length < 23);
        for (int d = 0; d < length; d++) digits[k][d] = reversed[length - 1 - d];
        digits[k][length] = 0;
    }
    const char *parts[5] = {a, digits[0], b, m >= 0 ? digits[1] : "", m >= 0 ? c : ""};
    size_t used = 0;
    for (int k = 0; k < 5; k++) {
        for (const char *p = parts[k]; *p; p++) {
            if (used + 1 >= size) return -1;
            out[used++] = *p;
        }
    }
    out[used] = 0;
    return 0;
}

/// The parent and process group of `pid` from /proc/<pid>/stat (counted after the command's last ')').
static int read_stat(pid_t pid, pid_t *parent, pid_t *group) {
    char path[64], text[1024];
    if (format_path(path, sizeof path, "/proc/", pid, "/stat", -1, "") != 0) return -1;
    if (read_file(path, text, sizeof text) <= 0) return -1;
    char *close_paren = strrchr(text, ')');
    if (!close_paren) return -1;
    // ") S ppid pgrp"
    char *p = close_paren + 2;
    while (*p && *p != ' ') p++;
    long values[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        if (*p != ' ') return -1;
        p++;
        long value = 0;
        while (*p >= '0' && *p <= '9') value = value * 10 + (*p++ - '0');
        values[k] = value;
    }
    *parent = (pid_t)values[0];
    *group = (pid_t)values[1];
    return 0;
}

static int known(const struct guard_entry *entries, int count, pid_t pid) {
    for (int i = 0; i < count; i++) {
        if (entries[i].pid == pid) return 1;
    }
    return 0;
}

/// Adds `pid` when, with a pidfd opened first, its stat (read after) shows `parent` as its parent or
/// `group` as its group, and both it and `witness` (the parent, or the group's leader) are still
/// alive after the read: then the stat was of this very process, and the parent or leader it names
/// was ours all along. The process is stopped at once, so it can neither fork nor exit unseen.
static int adopt(struct guard_entry *entries, int *count, int capacity, pid_t pid, pid_t parent, pid_t group,
                 int witness) {
    if (*count >= capacity || known(entries, *count, pid)) return 0;
    int fd = graceful_pidfd_open(pid);
    if (fd < 0) return 0;
    pid_t actual_parent, actual_group;
    if (read_stat(pid, &actual_parent, &actual_group) == 0 &&
        ((parent > 0 && actual_parent == parent) || (group > 0 && actual_group == group)) && alive(fd) &&
        alive(witness)) {
        graceful_pidfd_signal(fd, SIGSTOP);
        entries[(*count)++] = (struct guard_entry){.fd = fd, .pid = pid, .is_rank = 0, .held = {-1, -1, -1}};
        return 1;
    }
    close(fd);
    return 0;
}

/// Calls `visit` with each entry of `directory` whose name is a number (a pid or a thread id), using
/// getdents64 directly: no malloc in the guard.
static void for_each_number(int directory, void (*visit)(long number, void *context), void *context) {
    static char listing[65536];
    for (;;) {
        long got = syscall(SYS_getdents64, directory, listing, sizeof listing);
        if (got <= 0) break;
        for (long offset = 0; offset < got;) {
            struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *entry =
                (void *)(listing + offset);
            offset += entry->reclen;
            const char *c = entry->name;
            if (*c < '0' || *c > '9') continue;
            long number = 0;
            while (*c >= '0' && *c <= '9') number = number * 10 + (*c++ - '0');
            visit(number, context);
        }
    }
}

/// What the visitors below work on.
struct guard_scan {
    struct guard_entry *entries;
    int *count;
    int capacity;
    int index;
};

static void adopt_thread_children(long thread, void *context) {
    static char children[65536];
    struct guard_scan *scan = context;
    char path[96];
    pid_t pid = scan->entries[scan->index].pid;
    if (format_path(path, sizeof path, "/proc/", pid, "/task/", thread, "/children") != 0) return;
    if (read_file(path, children, sizeof children) <= 0) return;
    for (char *p = children; *p;) {
        long child = 0;
        while (*p >= '0' && *p <= '9') child = child * 10 + (*p++ - '0');
        if (child > 0) adopt(scan->entries, scan->count, scan->capacity, (pid_t)child, pid, 0, scan->entries[scan->index].fd);
        while (*p && (*p < '0' || *p > '9')) p++;
    }
}

/// The children of every thread of entry `index`, adopted.
static void adopt_children(struct guard_entry *entries, int *count, int capacity, int index) {
    char path[96];
    if (format_path(path, sizeof path, "/proc/", entries[index].pid, "/task", -1, "") != 0) return;
    int directory = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) return;
    struct guard_scan scan = {entries, count, capacity, index};
    for_each_number(directory, adopt_thread_children, &scan);
    close(directory);
}

static void adopt_if_in_group(long pid, void *context) {
    struct guard_scan *scan = context;
    pid_t leader = scan->entries[scan->index].pid;
    pid_t parent, group;
    if (pid == leader || read_stat((pid_t)pid, &parent, &group) != 0 || group != leader) return;
    adopt(scan->entries, scan->count, scan->capacity, (pid_t)pid, 0, group, scan->entries[scan->index].fd);
}

/// Every process still in the group of rank entry `index` (some may have left its subtree), adopted
/// while the rank itself, which pins the group id, is alive.
static void adopt_group(struct guard_entry *entries, int *count, int capacity, int index) {
    int directory = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) return;
    struct guard_scan scan = {entries, count, capacity, index};
    for_each_number(directory, adopt_if_in_group, &scan);
    close(directory);
}

/// The coordinator is gone: stop everything held, find what lives below it and in the ranks'
/// groups (each proven while the process naming it is stopped and alive), then SIGKILL them all.
static void guard_sweep(struct guard_entry *entries, int count, int capacity) {
    for (int i = 0; i < count; i++) graceful_pidfd_signal(entries[i].fd, SIGSTOP);
    int held = count;
    for (int i = 0; i < held; i++) {
        if (entries[i].is_rank && alive(entries[i].fd)) adopt_group(entries, &count, capacity, i);
    }
    // Breadth first over everything held or found; what is found is appended and visited in turn.
    for (int i = 0; i < count; i++) {
        if (alive(entries[i].fd)) adopt_children(entries, &count, capacity, i);
    }
    // Deepest first (entries were found parents before children): a parent killed before its stopped
    // children could orphan their process group, whose members the kernel then sends SIGHUP and
    // SIGCONT, letting them run (and fork) before their own SIGKILL.
    for (int i = count - 1; i >= 0; i--) graceful_pidfd_signal(entries[i].fd, SIGKILL);
}

/// Closes the pidfds of processes that are gone (reaped), keeping the live ones at the front.
static int guard_prune(struct guard_entry *entries, int count) {
    int kept = 0;
    for (int i = 0; i < count; i++) {
        if (alive(entries[i].fd)) {
            entries[kept++] = entries[i];
        } else {
            guard_entry_close(&entries[i]);
        }
    }
    return kept;
}

static void guard_main(int input, int keep_fd, int max_fd, pid_t coordinator) {
    // Async-signal-safe calls and raw system calls only (the coordinator may have threads).
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP && sig != SIGCHLD) sigaction(sig, &ignore, NULL);
    }
    setsid();
    // Keep exactly the socket (as 3) and `keep_fd` (as 4); moved above both targets first.
    int moved_input = fcntl(input, F_DUPFD, 10);
    int moved_keep = keep_fd >= 0 ? fcntl(keep_fd, F_DUPFD, 10) : -1;
    if (moved_input < 0) _exit(1);
    dup2(moved_input, 3);
    input = 3;
    if (moved_keep >= 0) dup2(moved_keep, 4);
    close_from(0, 2, max_fd);
    close_from(moved_keep >= 0 ? 5 : 4, ~0U >> 1, max_fd);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    // The coordinator's end of the socket closes before the kernel has finished its exit: the end of
    // file comes before the ranks are reparented and before their process groups, orphaned by that,
    // get the kernel's SIGHUP and SIGCONT if they have a stopped member. A rank the guard stopped in
    // between would be hung up on, and die leaving its children to init, out of reach: the sweep
    // waits (bounded) until the coordinator has wholly exited, which its pidfd says.
    int coordinator_fd = graceful_pidfd_open(coordinator);
    if (coordinator_fd >= 0 && getppid() != coordinator) {
        close(coordinator_fd);
        coordinator_fd = -1;
    }
    // Bounded by the descriptors the guard may hold; the dead are pruned when it fills up. The sweep
    // may find as many again.
    struct rlimit limit;
    long capacity = getrlimit(RLIMIT_NOFILE, &limit) == 0 ? (long)limit.rlim_cur - 16 : 1000;
    if (capacity > 1 << 20) capacity = 1 << 20;
    if (capacity < 16) capacity = 16;
    struct guard_entry *entries = mmap(NULL, (size_t)capacity * sizeof *entries, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (entries == MAP_FAILED) _exit(1);
    int count = 0;
    for (;;) {
        struct guard_message payload;
        memset(&payload, 0, sizeof payload);
        char control[CMSG_SPACE(GUARD_MAX_FDS * sizeof(int))];
        struct iovec vector = {.iov_base = &payload, .iov_len = sizeof payload};
        struct msghdr message;
        memset(&message, 0, sizeof message);
        message.msg_iov = &vector;
        message.msg_iovlen = 1;
        message.msg_control = control;
        message.msg_controllen = sizeof control;
        ssize_t got;
        do { got = recvmsg(input, &message, MSG_CMSG_CLOEXEC); } while (got < 0 && errno == EINTR);
        if (got <= 0) break;
        struct guard_entry entry = {.fd = -1, .pid = payload.pid, .is_rank = payload.kind == GUARD_RANK, .held = {-1, -1, -1}};
        for (struct cmsghdr *header = CMSG_FIRSTHDR(&message); header; header = CMSG_NXTHDR(&message, header)) {
            if (header->cmsg_level == SOL_SOCKET && header->cmsg_type == SCM_RIGHTS) {
                int fds = (int)((header->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                for (int k = 0; k < fds; k++) {
                    int fd;
                    memcpy(&fd, CMSG_DATA(header) + k * sizeof(int), sizeof fd);
                    if (entry.fd < 0) {
                        entry.fd = fd;
                    } else if (k - 1 < GUARD_MAX_FDS - 1 && entry.is_rank) {
                        entry.held[k - 1] = fd;
                    } else {
                        close(fd);
                    }
                }
            }
        }
        if (payload.kind == GUARD_RELEASE) _exit(0);
        if (entry.fd < 0) continue;
        if (count >= capacity / 2) count = guard_prune(entries, count);
        if (count < capacity / 2) {
            entries[count++] = entry;
        } else {
            guard_entry_close(&entry);
        }
    }
    if (coordinator_fd >= 0) {
        struct pollfd exited = {.fd = coordinator_fd, .events = POLLIN};
        while (poll(&exited, 1, 2000) < 0 && errno == EINTR) {}
    }
    guard_sweep(entries, count, (int)capacity);
    _exit(0);
}

pid_t graceful_start_guard(int keep_fd, int *socket_fd) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) return -1;
    long open_max = sysconf(_SC_OPEN_MAX);
    int max_fd = open_max > 0 && open_max < 1048576 ? (int)open_max : 1048576;
    pid_t coordinator = getpid();
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        guard_main(fds[1], keep_fd, max_fd, coordinator);
    }
    int fork_error = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        errno = fork_error;
        return -1;
    }
    int error = graceful_set_nonblocking(fds[0]);
    if (error != 0) {
        close(fds[0]);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        errno = error;
        return -1;
    }
    *socket_fd = fds[0];
    return pid;
}

static int guard_send(int socket_fd, char kind, pid_t pid, const int *fds, int count) {
    char control[CMSG_SPACE(GUARD_MAX_FDS * sizeof(int))];
    memset(control, 0, sizeof control);
    struct guard_message payload;
    memset(&payload, 0, sizeof payload);
    payload.kind = kind;
    payload.pid = pid;
    struct iovec vector = {.iov_base = &payload, .iov_len = sizeof payload};
    struct msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    if (count > GUARD_MAX_FDS) count = GUARD_MAX_FDS;
    if (count > 0) {
        message.msg_control = control;
        message.msg_controllen = CMSG_SPACE(count * sizeof(int));
        struct cmsghdr *header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(count * sizeof(int));
        memcpy(CMSG_DATA(header), fds, count * sizeof(int));
    }
    ssize_t sent;
    do { sent = sendmsg(socket_fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL); } while (sent < 0 && errno == EINTR);
    return sent == (ssize_t)sizeof payload ? 0 : errno;
}

int graceful_guard_watch(int socket_fd, pid_t pid, int pidfd, int is_rank) {
    return guard_send(socket_fd, is_rank ? GUARD_RANK : GUARD_WATCH, pid, &pidfd, pidfd >= 0 ? 1 : 0);
}

int graceful_guard_watch_rank(int socket_fd, pid_t pid, const int *fds, int count) {
    return guard_send(socket_fd, GUARD_RANK, pid, fds, count);
}

int graceful_guard_release(int socket_fd) {
    // The guard reads in order: after a watch backlog, the release still arrives; wait for room.
    for (int tries = 0; tries < 200; tries++) {
        int error = guard_send(socket_fd, GUARD_RELEASE, 0, NULL, 0);
        if (error != EAGAIN) return error;
        struct pollfd wait = {.fd = socket_fd, .events = POLLOUT};
        poll(&wait, 1, 10);
    }
    return EAGAIN;
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

long graceful_raise_nofile_limit(long *previous_soft) {
    struct rlimit limit;
    *previous_soft = -1;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    *previous_soft = limit.rlim_cur == RLIM_INFINITY ? -1 : (long)limit.rlim_cur;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) getrlimit(RLIMIT_NOFILE, &limit);
    }
    return (long)limit.rlim_cur;
}

int graceful_batch_open(unsigned long *context) {
    aio_context_t created = 0;
    if (syscall(SYS_io_setup, GRACEFUL_BATCH_MAX, &created) != 0) return errno;
    *context = created;
    return 0;
}

void graceful_batch_close(unsigned long context) { syscall(SYS_io_destroy, (aio_context_t)context); }

int graceful_write_batch(unsigned long context, const int *fds, const void *const *buffers,
                         const size_t *lengths, long *results, int count) {
    if (count < 1 || count > GRACEFUL_BATCH_MAX) return -EINVAL;
    struct iocb blocks[GRACEFUL_BATCH_MAX];
    struct iocb *pointers[GRACEFUL_BATCH_MAX];
    memset(blocks, 0, sizeof(struct iocb) * (size_t)count);
    for (int i = 0; i < count; i++) {
        blocks[i].aio_data = (uint64_t)i;
        blocks[i].aio_lio_opcode = IOCB_CMD_PWRITE;
        blocks[i].aio_fildes = (uint32_t)fds[i];
        blocks[i].aio_buf = (uint64_t)(uintptr_t)buffers[i];
        blocks[i].aio_nbytes = lengths[i];
        pointers[i] = &blocks[i];
    }
    long submitted = syscall(SYS_io_submit, (aio_context_t)context, (long)count, pointers);
    if (submitted < 0) return -errno;
    // A write to a non-blocking socket completes inside io_submit; this only collects the results.
    struct io_event events[GRACEFUL_BATCH_MAX];
    long collected = 0;
    while (collected < submitted) {
        long got = syscall(SYS_io_getevents, (aio_context_t)context, submitted - collected,
                           submitted - collected, events + collected, NULL);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -errno;
        collected += got;
    }
    for (long i = 0; i < collected; i++) results[events[i].data] = (long)events[i].res;
    return (int)submitted;
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

int graceful_doorbell_create(uint32_t **page) {
    int fd = memfd_create("graceful-doorbell", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    int error = 0;
    // Allocated now: a page first touched later could fault (SIGBUS) when memory is short.
    if (ftruncate(fd, GRACEFUL_DOORBELL_SIZE) != 0 || (error = posix_fallocate(fd, 0, GRACEFUL_DOORBELL_SIZE)) != 0) {
        if (error == 0) error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    void *mapped = mmap(NULL, GRACEFUL_DOORBELL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mapped == MAP_FAILED) {
        error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    // FUTURE_WRITE leaves this mapping writable and makes every other one read-only (Linux 5.1).
    int seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
    if (fcntl(fd, F_ADD_SEALS, seals | F_SEAL_FUTURE_WRITE) != 0 && fcntl(fd, F_ADD_SEALS, seals) != 0) {
        error = errno;
        munmap(mapped, GRACEFUL_DOORBELL_SIZE);
        close(fd);
        errno = error;
        return -1;
    }
    *page = mapped;
    return fd;
}

uint32_t *graceful_doorbell_map_fd(int fd) {
    struct stat info;
    if (fstat(fd, &info) != 0) return NULL;
    if (!S_ISREG(info.st_mode) || info.st_size < GRACEFUL_DOORBELL_SIZE) {
        errno = EINVAL;
        return NULL;
    }
    void *page = mmap(NULL, GRACEFUL_DOORBELL_SIZE, PROT_READ, MAP_SHARED, fd, 0);
    return page == MAP_FAILED ? NULL : page;
}

void graceful_doorbell_store(uint32_t *word, uint32_t id) { __atomic_store_n(word, id, __ATOMIC_SEQ_CST); }

void graceful_doorbell_wake(uint32_t *word) {
    // Shared (not FUTEX_PRIVATE): the waiters are in other processes. Without waiters it is cheap.
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

void graceful_doorbell_wait(const uint32_t *word, uint32_t seen) {
    // Returns early on a signal or a spurious wake-up: the loop checks the word again.
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == seen) {
        syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0);
    }
}
