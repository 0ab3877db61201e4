import CGraceful
import Glibc

/// The guard process: if the coordinator dies, even by SIGKILL, it kills every process it was
/// handed, through pidfds (so never a process that reused a pid). It also holds the run directory's
/// lock until then, so no second run starts while processes of this one may still be alive.
///
/// Every message to it is non-blocking: a stopped guard can make the coordinator lose protection,
/// never make it wait.
final class ProcessGuard {
    private(set) var pid: pid_t
    private var socket: Int32
    /// The processes handed over, so each is sent once; vanished ones are forgotten at each refresh.
    private var watched: Set<Descendant.Identity> = []
    /// Whether a process could not be handed over (the guard stopped reading); reported once.
    private(set) var lagging = false

    init(keeping lockFD: Int32) throws(SystemError) {
        var socket: Int32 = -1
        pid = graceful_start_guard(lockFD, &socket)
        if pid < 0 { throw SystemError("starting the guard process") }
        self.socket = socket
    }

    /// Hands over one process (a rank just spawned). Returns false when it could not be delivered.
    @discardableResult
    func watch(pidfd: Int32) -> Bool {
        guard socket >= 0 else { return false }
        let delivered = graceful_guard_watch(socket, pidfd) == 0
        if !delivered { lagging = true }
        return delivered
    }

    /// Hands over every process of `snapshot` not handed over before.
    func watch(_ snapshot: Descendants) {
        var current: Set<Descendant.Identity> = []
        for process in snapshot.processes {
            current.insert(process.identity)
            if !watched.contains(process.identity), watch(pidfd: process.pidfd) { watched.insert(process.identity) }
        }
        watched.formIntersection(current)
    }

    /// The guard was reaped although the coordinator did not release it.
    func ended() {
        pid = -1
        closeDescriptor(socket)
        socket = -1
    }

    /// The coordinator ends on purpose: the guard exits without killing anything, and is reaped. A
    /// guard that does not exit within a second (stopped) is killed: it is the coordinator's own child.
    func release() {
        guard socket >= 0 else { return }
        _ = graceful_guard_release(socket)
        closeDescriptor(socket)
        socket = -1
        guard pid > 0 else { return }
        var status: Int32 = 0
        for _ in 0..<100 {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid || (reaped < 0 && errno != EINTR) {
                pid = -1
                return
            }
            var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&pause, nil)
        }
        kill(pid, SIGKILL)
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        pid = -1
    }
}
