import CGraceful
import Glibc

/// Signals turned into bytes on a pipe (the self-pipe trick), so the event loop sees them as input.
/// Every signal's path is deliberate:
/// - stop signals (SIGINT, SIGTERM, SIGUSR1, and SIGHUP unless it was ignored at start, as under
///   nohup) request the graceful stop;
/// - quit signals (SIGQUIT, the terminal's Ctrl+\, and SIGABRT, a watchdog's `kill -ABRT`) request a
///   stop now: every rank gets SIGTERM at once. A real abort() in the coordinator still ends it: glibc
///   falls back to the default action when the handler returns;
/// - SIGUSR2 asks for a checkpoint without stopping; SIGCHLD reaps;
/// - SIGTSTP (Ctrl+Z, or a scheduler's suspend) pauses the whole job: every process of it gets
///   SIGSTOP, then the coordinator stops itself; SIGCONT (`fg`, `bg`, a scheduler's resume) lets them
///   all go on;
/// - SIGPIPE is ignored, so a closed rank channel shows up as EPIPE instead;
/// - the crash signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP) get their default action back from
///   the Swift runtime's backtracer, which would otherwise swallow one sent with `kill`: the
///   coordinator dies, and its guard kills the ranks;
/// - every other signal keeps its default action.
final class SignalPipe {
    let readFD: Int32
    private let writeFD: Int32
    /// The signals that request a stop.
    let stopSignals: [Int32]
    /// The signals that request a stop now.
    static let quitSignals: [Int32] = [SIGQUIT, SIGABRT]
    static let crashSignals: [Int32] = [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP]

    init() throws(SystemError) {
        var fds: [Int32] = [-1, -1]
        let error = graceful_pipe(&fds)
        if error != 0 { throw SystemError("pipe2", errno: error) }
        readFD = fds[0]
        writeFD = fds[1]
        let setError = graceful_set_nonblocking(writeFD)
        if setError != 0 { throw SystemError("fcntl(O_NONBLOCK)", errno: setError) }
        var stops = [SIGINT, SIGTERM, SIGUSR1]
        if graceful_signal_is_ignored(SIGHUP) == 0 { stops.append(SIGHUP) }
        stopSignals = stops
        _ = graceful_signal_ignore(SIGPIPE)
        for signal in Self.crashSignals {
            let defaultError = graceful_signal_default(signal)
            if defaultError != 0 { throw SystemError("sigaction(\(SignalNumber.name(signal)))", errno: defaultError) }
        }
        for signal in stops + Self.quitSignals + [SIGUSR2, SIGCHLD, SIGTSTP, SIGCONT] {
            let catchError = graceful_signal_catch(writeFD, signal)
            if catchError != 0 { throw SystemError("sigaction(\(SignalNumber.name(signal)))", errno: catchError) }
        }
    }

    /// The signals received since the last call, in order; at most one pipe's worth per call.
    func drain() -> [Int32] {
        var received: [Int32] = []
        var bytes = [UInt8](repeating: 0, count: 256)
        while received.count < 4096 {
            let count = bytes.withUnsafeMutableBytes { readAvailable(readFD, into: $0) }
            guard let count, count > 0 else { break }
            received.append(contentsOf: bytes[0..<count].map { Int32($0) })
        }
        return received
    }
}
