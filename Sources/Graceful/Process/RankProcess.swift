import CGraceful
import Glibc

/// One rank's process and the coordinator's ends of its pipes and channel.
///
/// The child starts with default signal dispositions, an empty signal mask, its own process group,
/// SIGKILL as its parent-death signal, stdin on /dev/null, stdout and stderr on pipes, the channel on
/// descriptor 3 and no other descriptor.
final class RankProcess {
    let rank: Int
    let pid: pid_t
    /// The coordinator's end of the channel (non-blocking), -1 once closed.
    var channelFD: Int32
    /// The read ends of the rank's stdout and stderr (non-blocking), -1 once closed.
    var outputFDs: [Int32]

    private init(rank: Int, pid: pid_t, channelFD: Int32, outputFDs: [Int32]) {
        self.rank = rank
        self.pid = pid
        self.channelFD = channelFD
        self.outputFDs = outputFDs
    }

    static func spawn(
        rank: Int, executable: String, arguments: [String], environment: [RankEnvironment.Variable]
    ) throws(SystemError) -> RankProcess {
        var channel: [Int32] = [-1, -1]
        var stdoutPipe: [Int32] = [-1, -1]
        var stderrPipe: [Int32] = [-1, -1]
        var opened: [Int32] = []
        func fail(_ error: SystemError) -> SystemError {
            opened.forEach(closeDescriptor)
            return error
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
        let sources: [Int32] = [devNull, stdoutPipe[1], stderrPipe[1], channel[1]]
        precondition(sources.count - 1 == Int(RankEnvironment.channelDescriptor))
        var pid: pid_t = 0
        error = graceful_spawn(executable, argv, envp, sources, Int32(sources.count), SIGKILL, &pid)
        // The child's ends belong to the child now (or to nobody, on failure).
        [devNull, stdoutPipe[1], stderrPipe[1], channel[1]].forEach(closeDescriptor)
        opened = [channel[0], stdoutPipe[0], stderrPipe[0]]
        if error != 0 { throw fail(SystemError("exec \(executable)", errno: error)) }
        return RankProcess(rank: rank, pid: pid, channelFD: channel[0], outputFDs: [stdoutPipe[0], stderrPipe[0]])
    }

    /// `NAME=value` as a C string, the value's bytes as they are (they need not be UTF-8; no value
    /// holds NUL: environment values and checkpoint paths cannot).
    private static func entry(_ variable: RankEnvironment.Variable) -> UnsafeMutablePointer<CChar>? {
        let bytes = Array(variable.name.utf8) + [UInt8(ascii: "=")] + variable.value + [0]
        return bytes.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { strdup($0.baseAddress!) } }
    }

    /// Sends `signal` to the rank's whole process group (its grandchildren included). A group that no
    /// longer exists is not an error.
    func signalGroup(_ signal: Int32) {
        _ = kill(-pid, signal)
    }

    /// Whether any process is left in the rank's group.
    var groupExists: Bool {
        kill(-pid, 0) == 0 || errno == EPERM
    }

    /// Writes one message line; false when the rank is gone.
    func send(_ line: String) -> Bool {
        guard channelFD >= 0 else { return false }
        return writeAll(channelFD, line)
    }
}
