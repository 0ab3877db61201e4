import CGraceful
import Glibc

/// The guard process: if the coordinator dies, even by SIGKILL, it stops and kills every process it
/// was handed, everything below them and everything still in a rank's process group, through pidfds
/// (so never a process that reused a pid; `graceful_start_guard` says how each is proven). It also
/// holds the run directory's lock until then, so no second run starts while processes of this one
/// may still be alive.
///
/// It is handed each rank at launch and the orphans the coordinator adopted (they are in no rank's
/// subtree any more) as it sees them. A guard that dies is replaced and handed everything again.
/// Every message to it is non-blocking: a stopped guard can make the coordinator lose protection,
/// never make it wait.
final class ProcessGuard {
    private(set) var pid: pid_t = -1
    private var socket: Int32 = -1
    private let lockFD: Int32
    /// The processes handed over, so each is sent once; vanished ones are forgotten at each refresh.
    private var watched: Set<Descendant.Identity> = []

    init(keeping lockFD: Int32) throws(SystemError) {
        self.lockFD = lockFD
        try start()
    }

    private func start() throws(SystemError) {
        var socket: Int32 = -1
        pid = graceful_start_guard(lockFD, &socket)
        if pid < 0 { throw SystemError("starting the guard process") }
        self.socket = socket
    }

    /// Hands over a rank just spawned, with the coordinator's ends of its channel and output pipes,
    /// which the guard holds (unread) so that the coordinator's death is neither an end of file nor a
    /// SIGPIPE for the rank: a rank that ended on it before the guard stopped it would leave its
    /// children to init, out of the guard's reach.
    func watch(rank process: RankProcess) {
        guard socket >= 0, process.pidfd >= 0 else { return }
        let fds = ([process.pidfd, process.channelFD] + process.outputFDs).filter { $0 >= 0 }
        _ = graceful_guard_watch_rank(socket, process.pid, fds, Int32(fds.count))
    }

    /// Hands over every process of `snapshot` not handed over before: the coordinator's direct
    /// children (ranks, which it has, and adopted orphans, which it needs) every second, and every
    /// process of the job as it is paused (Ctrl+Z). If the coordinator dies while they are stopped,
    /// the kernel hangs up on the ranks' process groups (orphaned, with stopped members) before the
    /// guard can act: a rank killed by that SIGHUP leaves its children to init, where no walk from the
    /// rank finds them, but the guard holds each of them already.
    func watch(_ snapshot: Descendants) {
        guard socket >= 0 else { return }
        var current: Set<Descendant.Identity> = []
        for process in snapshot.processes {
            current.insert(process.identity)
            if !watched.contains(process.identity), graceful_guard_watch(socket, process.pid, process.pidfd, 0) == 0 {
                watched.insert(process.identity)
            }
        }
        watched.formIntersection(current)
    }

    /// The guard was reaped although the coordinator did not release it: a new one takes its place,
    /// handed the ranks of `gang` (the caller hands the rest at its next refresh). Returns false when
    /// none could be started.
    func replace(handing gang: [RankProcess]) -> Bool {
        closeDescriptor(socket)
        socket = -1
        pid = -1
        watched = []
        do {
            try start()
        } catch {
            return false
        }
        gang.filter { $0.pidfd >= 0 }.forEach(watch(rank:))
        return true
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
