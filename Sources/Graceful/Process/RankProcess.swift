import CGraceful
import Glibc

/// One rank's process and the coordinator's ends of its pipes and channel.
///
/// The child starts with default signal dispositions, an empty signal mask, its own process group,
/// no parent-death signal (the guard must find it alive to find what it started), the open-files limit the coordinator was started with, stdin on
/// /dev/null, stdout and stderr on pipes, the channel on descriptor 3, the doorbell on 4 (when there
/// is one) and no other descriptor.
final class RankProcess {
    let rank: Int
    let pid: pid_t
    /// A pidfd of the rank, the only way it is signalled, so never a process that reused its pid;
    /// -1 once closed.
    private(set) var pidfd: Int32
    /// The coordinator's end of the channel (non-blocking), -1 once closed.
    var channelFD: Int32
    /// The read ends of the rank's stdout and stderr (non-blocking), -1 once closed.
    var outputFDs: [Int32]

    private init(rank: Int, pid: pid_t, pidfd: Int32, channelFD: Int32, outputFDs: [Int32]) {
        self.rank = rank
        self.pid = pid
        self.pidfd = pidfd
        self.channelFD = channelFD
        self.outputFDs = outputFDs
    }

    /// Why a rank could not be started.
    enum SpawnError: Error {
        /// exec refused the program: a bad interpreter, not a known binary format, no permission.
        case notExecutable(SystemError)
        case system(SystemError)
    }

    static func spawn(
        rank: Int, executable: String, arguments: [String], environment: [RankEnvironment.Variable],
        doorbellFD: Int32?, openFilesLimit: Int
    ) throws(SpawnError) -> RankProcess {
        var channel: [Int32] = [-1, -1]
        var stdoutPipe: [Int32] = [-1, -1]
        var stderrPipe: [Int32] = [-1, -1]
        var opened: [Int32] = []
        func fail(_ error: SystemError) -> SpawnError {
            opened.forEach(closeDescriptor)
            return .system(error)
        }
        var error = graceful_channel_pair(&channel)
        if error != 0 { throw fail(SystemError("socketpair", errno: error)) }
        opened += channel
        error = graceful_pipe(&stdoutPipe)
        if error != 0 { throw fail(SystemError("pipe2", errno: error)) }
        opened += stdoutPipe
        error = graceful_pipe(&stderrPipe)
        if error != 0 { throw fail(SystemError("pipe2", errno: error)) }
        opened += stderrPipe
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if devNull < 0 { throw fail(SystemError("open /dev/null")) }
        opened.append(devNull)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { Self.entry($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var sources: [Int32] = [devNull, stdoutPipe[1], stderrPipe[1], channel[1]]
        precondition(sources.count - 1 == Int(RankEnvironment.channelDescriptor))
        if let doorbellFD {
            sources.append(doorbellFD)
            precondition(sources.count - 1 == Int(RankEnvironment.doorbellDescriptor))
        }
        var pid: pid_t = 0
        error = graceful_spawn(executable, argv, envp, sources, Int32(sources.count), 0, openFilesLimit, &pid)
        // The child's ends belong to the child now (or to nobody, on failure).
        [devNull, stdoutPipe[1], stderrPipe[1], channel[1]].forEach(closeDescriptor)
        opened = [channel[0], stdoutPipe[0], stderrPipe[0]]
        switch error {
        case 0: break
        // ENOENT here is a missing interpreter: the program itself was found before the launch.
        case ENOEXEC, EACCES, ENOENT, ELIBBAD, ETXTBSY, EISDIR:
            opened.forEach(closeDescriptor)
            throw .notExecutable(SystemError("exec \(executable)", errno: error))
        default:
            throw fail(SystemError("exec \(executable)", errno: error))
        }
        // An unreaped child's pid cannot be reused, and only the coordinator reaps it: this is the rank.
        let pidfd = graceful_pidfd_open(pid)
        if pidfd < 0 {
            let failure = SystemError("pidfd_open (Linux 5.3 or later is needed)")
            _ = kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            throw fail(failure)
        }
        return RankProcess(rank: rank, pid: pid, pidfd: pidfd, channelFD: channel[0], outputFDs: [stdoutPipe[0], stderrPipe[0]])
    }

    /// `NAME=value` as a C string, the value's bytes as they are (they need not be UTF-8; no value
    /// holds NUL: environment values and checkpoint paths cannot).
    private static func entry(_ variable: RankEnvironment.Variable) -> UnsafeMutablePointer<CChar>? {
        let bytes = Array(variable.name.utf8) + [UInt8(ascii: "=")] + variable.value + [0]
        return bytes.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { strdup($0.baseAddress!) } }
    }

    /// Sends `signal` to the rank process itself; once it is reaped, to nothing.
    func signal(_ signal: Int32) {
        if pidfd >= 0 { _ = graceful_pidfd_signal(pidfd, signal) }
    }

    func closePidfd() {
        closeDescriptor(pidfd)
        pidfd = -1
    }

    /// Writes one message line; false when the rank is gone.
    func send(_ line: String) -> Bool {
        guard channelFD >= 0 else { return false }
        return writeAll(channelFD, line)
    }
}
