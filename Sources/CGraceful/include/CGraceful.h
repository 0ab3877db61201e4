#ifndef CGRACEFUL_H
#define CGRACEFUL_H

#include <stdint.h>
#include <sys/types.h>

/// Starts `path` in a new process whose descriptors 0..<count are `sources[0..<count]` and nothing else.
///
/// In the child, before exec: every signal disposition is reset to the default, the signal mask is
/// emptied, the child becomes the leader of a new process group, `pdeathsig` (when non-zero) is
/// delivered to it if the spawning thread dies, and every descriptor from `count` up is closed.
/// Returns 0 and stores the pid, or an errno value (from fork, or from exec in the child, in which
/// case the child has already been reaped).
int graceful_spawn(const char *path, char *const argv[], char *const envp[],
                   const int *sources, int count, int pdeathsig, pid_t *pid_out);

/// A pipe whose two ends are close-on-exec; the read end is also non-blocking. Returns 0 or errno.
int graceful_pipe(int fds[2]);
/// A connected AF_UNIX stream socket pair, both close-on-exec, fds[0] non-blocking. Returns 0 or errno.
int graceful_channel_pair(int fds[2]);
/// Makes `fd` non-blocking. Returns 0 or errno.
int graceful_set_nonblocking(int fd);

/// Routes `sig` to one byte (the signal number) written to `write_fd`, which must be non-blocking.
/// The handler saves and restores errno. Returns 0 or errno.
int graceful_signal_catch(int write_fd, int sig);
/// Sets `sig` to SIG_IGN. Returns 0 or errno.
int graceful_signal_ignore(int sig);
/// 1 when `sig` is currently ignored (SIG_IGN), else 0.
int graceful_signal_is_ignored(int sig);

/// Makes the coordinator the reaper of every orphan among its descendants (PR_SET_CHILD_SUBREAPER),
/// so a rank's children that outlive it are still its to kill and reap. Returns 0 or errno.
int graceful_become_subreaper(void);

/// waitpid(-1, WNOHANG): the pid of some ended child (status stored), 0 if none ended, -1 with
/// errno ECHILD when there is no child at all.
int graceful_reap_any(int *status);

/// Starts the guard: a forked process, in a session of its own and ignoring every catchable signal,
/// that reads 32-bit process-group ids from a pipe (positive: watch, negative: forget, zero: the
/// coordinator is done, exit quietly). When the pipe reaches end of file without a zero, the
/// coordinator has died (even by SIGKILL): the guard sends SIGKILL to every group it watches and
/// exits. Stores the pipe's write end (close-on-exec). Returns the guard's pid, or -1 with errno.
pid_t graceful_start_guard(int *write_fd);

/// Empties the calling thread's signal mask: a parent may have started the coordinator with stop
/// signals blocked (Foundation.Process from a worker thread does), which would silently defeat them.
void graceful_unblock_signals(void);
/// Opens /dev/null on any of descriptors 0, 1, 2 that is closed, so no later descriptor lands there.
void graceful_ensure_stdio(void);
/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
long graceful_raise_nofile_limit(void);
/// A TCP port that was free a moment ago (bound to port 0 on all interfaces, then released), or -1.
int graceful_free_tcp_port(void);

/// The macros of <sys/wait.h>, which Swift cannot import.
int graceful_status_exit_code(int status);
int graceful_status_signaled(int status);
int graceful_status_signal(int status);

/// epoll, with an unpacked event type Swift can import.
typedef struct {
    uint64_t token;
    uint32_t events;
} graceful_event;
enum {
    GRACEFUL_READABLE = 1,
    GRACEFUL_HANGUP = 2,
    GRACEFUL_ERROR = 4,
};
int graceful_epoll_create(void);
int graceful_epoll_add(int epfd, int fd, uint64_t token);
int graceful_epoll_remove(int epfd, int fd);
/// Waits up to `timeout_ms` (-1: forever). Returns the number of events, 0 on timeout or EINTR, -1 on error.
int graceful_epoll_wait(int epfd, graceful_event *events, int max, int timeout_ms);

/// For rank processes not under the coordinator: SIGINT and SIGTERM set a flag instead of killing.
/// Returns 0 or errno.
int graceful_rank_catch_stop_signals(void);
/// The last stop signal caught by the handlers above, or 0.
int graceful_rank_caught_signal(void);

/// The doorbell: a page of a file every rank maps, whose first 32-bit word is the id of the latest
/// request (stop or checkpoint) the coordinator sent (docs/PROTOCOL.md, "The doorbell").
enum { GRACEFUL_DOORBELL_SIZE = 4096 };
/// Maps the doorbell file at `path`, read-write with `writable` (replacing any file there with a new,
/// zeroed one), else read-only. Returns the page, or NULL with errno. The descriptor is closed before returning.
uint32_t *graceful_doorbell_map(const char *path, int writable);
/// Stores `id` in the word, then wakes every thread waiting on it with FUTEX_WAIT.
void graceful_doorbell_ring(uint32_t *word, uint32_t id);
/// Blocks until the word differs from `seen` (FUTEX_WAIT, so it costs nothing while it waits).
void graceful_doorbell_wait(const uint32_t *word, uint32_t seen);
/// The word as it is now. Inline, so a rank's step boundary pays a load and no call.
static inline uint32_t graceful_doorbell_load(const uint32_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

#endif
