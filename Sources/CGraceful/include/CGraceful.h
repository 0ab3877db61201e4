#ifndef CGRACEFUL_H
#define CGRACEFUL_H

#include <stdint.h>
#include <sys/types.h>

#pragma clang assume_nonnull begin

/// Starts `path` in a new process whose descriptors 0..<count are `sources[0..<count]` and nothing else.
///
/// In the child, before exec: every signal disposition is reset to the default, the signal mask is
/// emptied, the child becomes the leader of a new process group, `pdeathsig` (when non-zero) is
/// delivered to it if the spawning thread dies, the soft limit of open files is set back to
/// `nofile_soft` (when >= 0: the coordinator raised its own), and every descriptor from `count` up is
/// closed. Returns 0 and stores the pid, or an errno value (from fork, or from exec in the child, in
/// which case the child has already been reaped).
int graceful_spawn(const char *path, char *_Nullable const argv[_Nonnull],
                   char *_Nullable const envp[_Nonnull], const int *sources, int count, int pdeathsig,
                   long nofile_soft, pid_t *pid_out);

/// A pipe whose two ends are close-on-exec; the read end is also non-blocking. Returns 0 or errno.
int graceful_pipe(int fds[_Nonnull 2]);
/// A connected AF_UNIX stream socket pair, both close-on-exec, fds[0] non-blocking. Returns 0 or errno.
int graceful_channel_pair(int fds[_Nonnull 2]);
/// Makes `fd` non-blocking. Returns 0 or errno.
int graceful_set_nonblocking(int fd);

/// Routes `sig` to one byte (the signal number) written to `write_fd`, which must be non-blocking.
/// The handler saves and restores errno. Returns 0 or errno.
int graceful_signal_catch(int write_fd, int sig);
/// Sets `sig` to SIG_IGN. Returns 0 or errno.
int graceful_signal_ignore(int sig);
/// Sets `sig` to SIG_DFL. Returns 0 or errno.
int graceful_signal_default(int sig);
/// 1 when `sig` is currently ignored (SIG_IGN), else 0.
int graceful_signal_is_ignored(int sig);

/// Makes the coordinator the reaper of every orphan among its descendants (PR_SET_CHILD_SUBREAPER),
/// so a rank's children that outlive it are still its to kill and reap. Returns 0 or errno.
int graceful_become_subreaper(void);

/// waitpid(-1, WNOHANG): the pid of some ended child (status stored), 0 if none ended, -1 with
/// errno ECHILD when there is no child at all.
int graceful_reap_any(int *status);

/// A pidfd for `pid` (pidfd_open, close-on-exec), or -1 with errno. It never refers to a recycled pid.
int graceful_pidfd_open(pid_t pid);
/// pidfd_send_signal: 0, or an errno value (ESRCH once the process has been reaped).
int graceful_pidfd_signal(int pidfd, int sig);

/// Starts the guard: a forked process, in a session of its own and ignoring every catchable signal,
/// that receives pidfds over a datagram socket (`graceful_guard_watch`). When the socket reaches end
/// of file without `graceful_guard_release`, the coordinator has died (even by SIGKILL): the guard
/// stops (SIGSTOP) every process it holds, finds what lives below them and what is still in a rank's
/// process group (each proven with a pidfd while the process that names it is stopped and alive),
/// and SIGKILLs them all. A pidfd never reaches a recycled pid, so the guard cannot hit a process
/// that is not the job's. `keep_fd` (when >= 0, e.g. the run directory's lock) stays open in the
/// guard until it exits. Stores the coordinator's end of the socket (close-on-exec, non-blocking).
/// Returns the guard's pid, or -1 with errno.
pid_t graceful_start_guard(int keep_fd, int *socket_fd);
/// Hands the guard a duplicate of `pidfd`, the process `pid` (a rank's group leader when `is_rank`).
/// Never blocks: returns 0, or an errno value (EAGAIN when a stopped guard lets its socket fill up).
int graceful_guard_watch(int socket_fd, pid_t pid, int pidfd, int is_rank);
/// Hands the guard a rank: `fds[0]` its pidfd, then up to three descriptors the guard keeps open
/// and never reads (the coordinator's ends of its channel and output pipes), so the coordinator's
/// death ends none of them while the guard lives. Never blocks, like `graceful_guard_watch`.
int graceful_guard_watch_rank(int socket_fd, pid_t pid, const int *fds, int count);
/// Tells the guard the coordinator ends on purpose: it exits without killing anything.
int graceful_guard_release(int socket_fd);

/// Empties the calling thread's signal mask: a parent may have started the coordinator with stop
/// signals blocked (Foundation.Process from a worker thread does), which would silently defeat them.
void graceful_unblock_signals(void);
/// Opens /dev/null on any of descriptors 0, 1, 2 that is closed, so no later descriptor lands there.
void graceful_ensure_stdio(void);
/// Raises the soft limit of open files to the hard limit; returns the new soft limit and stores the
/// previous one (for the ranks, which get the limit the coordinator was started with).
long graceful_raise_nofile_limit(long *previous_soft);
/// The most writes one `graceful_write_batch` takes.
#define GRACEFUL_BATCH_MAX 64

/// A Linux AIO context for `graceful_write_batch` (io_setup), holding up to GRACEFUL_BATCH_MAX
/// writes. Returns 0 and stores it, or an errno value (ENOSYS, EPERM under a seccomp filter, EAGAIN
/// at fs.aio-max-nr): the caller then writes one call per descriptor.
int graceful_batch_open(unsigned long *context);
/// Releases the context (io_destroy).
void graceful_batch_close(unsigned long context);
/// Writes `lengths[i]` bytes of `buffers[i]` to `fds[i]`, for i in 0..<count (at most
/// GRACEFUL_BATCH_MAX), all in one system call (io_submit). Non-blocking sockets complete at once, so
/// every receiver is woken before the caller can be preempted by any of them. Stores in `results[i]`
/// the bytes written or a negative errno. Returns how many were attempted, in order (the rest were
/// not: write them one by one), or a negative errno when none was.
int graceful_write_batch(unsigned long context, const int *fds, const void *_Nonnull const *_Nonnull buffers,
                         const size_t *lengths, long *results, int count);

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

/// The doorbell: a page of shared memory every rank maps, whose first 32-bit word is the id of the
/// latest request (stop or checkpoint) the coordinator sent (docs/PROTOCOL.md, "The doorbell").
enum { GRACEFUL_DOORBELL_SIZE = 4096 };
/// Creates the doorbell: a memfd of one page, allocated up front (no SIGBUS on a later touch), mapped
/// read-write here, then sealed so that nobody can shrink or grow it and nobody else can write it.
/// Stores the page; returns the descriptor (close-on-exec) for the ranks to inherit, or -1 with errno.
int graceful_doorbell_create(uint32_t *_Nullable *_Nonnull page);
/// Maps an inherited doorbell descriptor read-only; NULL with errno when it is not one page or more.
uint32_t *_Nullable graceful_doorbell_map_fd(int fd);
/// Stores `id` in the word: every rank reads it at its next boundary.
void graceful_doorbell_store(uint32_t *word, uint32_t id);
/// Wakes every thread waiting on the word with FUTEX_WAIT.
void graceful_doorbell_wake(uint32_t *word);
/// Blocks until the word differs from `seen` (FUTEX_WAIT, so it costs nothing while it waits).
void graceful_doorbell_wait(const uint32_t *word, uint32_t seen);
/// The word as it is now. Inline, so a rank's step boundary pays a load and no call.
static inline uint32_t graceful_doorbell_load(const uint32_t *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

#pragma clang assume_nonnull end

#endif
