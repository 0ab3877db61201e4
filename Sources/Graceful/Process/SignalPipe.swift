import CGraceful
import Glibc

/// Signals turned into bytes on a pipe (the self-pipe trick), so the event loop sees them as input.
///
/// Stop signals (SIGINT, SIGTERM, SIGUSR1, and SIGHUP unless it was ignored at start, as under nohup),
/// SIGUSR2 (a checkpoint without stopping) and SIGCHLD are caught; SIGPIPE is ignored so a closed rank
/// channel shows up as EPIPE instead.
final class SignalPipe {
    let readFD: Int32
    private let writeFD: Int32
    /// The signals that request a stop.
    let stopSignals: [Int32]

    init() throws {
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
        for signal in stops + [SIGUSR2, SIGCHLD] {
            let catchError = graceful_signal_catch(writeFD, signal)
            if catchError != 0 { throw SystemError("sigaction(\(SignalNumber.name(signal)))", errno: catchError) }
        }
    }

    /// The signals received since the last call, in order.
    func drain() -> [Int32] {
        var received: [Int32] = []
        var bytes = [UInt8](repeating: 0, count: 256)
        while true {
            let count = bytes.withUnsafeMutableBytes { readAvailable(readFD, into: $0) }
            guard let count, count > 0 else { break }
            received.append(contentsOf: bytes[0..<count].map { Int32($0) })
        }
        return received
    }
}
