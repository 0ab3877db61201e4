import Glibc
import Synchronization

/// The child started last and not yet reaped (0: none): what a signal ending the benchmark is passed
/// on to, so a `graceful run` in progress stops its ranks instead of outliving the benchmark.
let lastStartedChild = Atomic<Int32>(0)

/// SIGINT, SIGTERM and SIGHUP end the benchmark after sending SIGTERM to `lastStartedChild`. Peers
/// need nothing: they exit at the end of file on their input, or when their parent changes.
func passStopSignalsOn() {
    // Touched here, so the global's lazy initialisation never runs inside a handler.
    lastStartedChild.store(0, ordering: .relaxed)
    for stopSignal in [SIGINT, SIGTERM, SIGHUP] {
        signal(stopSignal) { received in
            let child = lastStartedChild.load(ordering: .relaxed)
            if child > 0 { kill(child, SIGTERM) }
            signal(received, SIG_DFL)
            raise(received)
        }
    }
}

/// A process started by the benchmark, its stdout and stderr read into lines, each stamped with the
/// moment the child wrote it.
///
/// stdout and stderr are AF_UNIX SOCK_SEQPACKET sockets rather than pipes, with SO_TIMESTAMPNS on
/// this end: the kernel stamps every write when the child makes it, so a line's time does not depend
/// on when this process gets a CPU to read it (on a 2-core machine busy with 1024 ranks, that can be
/// milliseconds later). The stamp is CLOCK_REALTIME, turned into CLOCK_MONOTONIC with the offset
/// between the two clocks, which NTP slewing leaves unchanged (only a step of the clock would not).
///
/// The child starts with an empty signal mask and default dispositions (the benchmark ignores
/// SIGPIPE; its children must not inherit that), in the benchmark's process group so a Ctrl+C
/// reaches it too, and with no descriptor of the benchmark's besides the ones mapped to 0, 1 and 2
/// (all of the benchmark's own descriptors are close-on-exec). A child still running at deinit is
/// killed and reaped.
final class Child {
    struct Line {
        /// When the child wrote the line (CLOCK_MONOTONIC ns).
        let time: Int64
        let standardError: Bool
        let text: String
    }

    let pid: pid_t
    /// Every complete line read so far, in the order written.
    private(set) var lines: [Line] = []
    private(set) var exitStatus: Int32?
    private var streams: [Int32]
    private var partial: [[UInt8]] = [[], []]
    private var delivered = 0
    /// One record is one write of the child's; records larger than this would be cut.
    private static let recordLimit = 1 << 18
    static let timestampOption: Int32 = 35  // SO_TIMESTAMPNS, whose control message is a timespec

    /// Starts `path` with `arguments`; `standardInput` (left open here) becomes its fd 0, /dev/null
    /// when nil.
    init(_ path: String, _ arguments: [String], standardInput: Int32? = nil) throws {
        var output: [Int32] = [-1, -1]
        var error: [Int32] = [-1, -1]
        let kind = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, kind, 0, &output) == 0 else { throw BenchError("socketpair failed") }
        guard socketpair(AF_UNIX, kind, 0, &error) == 0 else {
            output.forEach { close($0) }
            throw BenchError("socketpair failed")
        }
        var on: Int32 = 1
        for fd in [output[0], error[0]] {
            setsockopt(fd, SOL_SOCKET, Child.timestampOption, &on, socklen_t(MemoryLayout<Int32>.size))
            // This end only reads; the child's end only writes.
            shutdown(fd, Int32(SHUT_WR))
        }
        let null = standardInput == nil ? open("/dev/null", O_RDONLY | O_CLOEXEC) : -1
        defer {
            if null >= 0 { close(null) }
            close(output[1])
            close(error[1])
        }
        var pid: pid_t = 0
        let result = Child.spawn(path, arguments, descriptors: [standardInput ?? null, output[1], error[1]], pid: &pid)
        guard result == 0 else {
            [output[0], error[0]].forEach { close($0) }
            throw BenchError("cannot start \(path): \(String(cString: strerror(result)))")
        }
        self.pid = pid
        lastStartedChild.store(pid, ordering: .relaxed)
        streams = [output[0], error[0]]
    }

    /// posix_spawn with `descriptors` as 0, 1, 2, an empty signal mask and default dispositions (the
    /// benchmark ignores SIGPIPE and blocks stop signals, which a child must not inherit). Returns 0 or
    /// an errno value.
    static func spawn(_ path: String, _ arguments: [String], descriptors: [Int32], pid: inout pid_t) -> Int32 {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (target, source) in descriptors.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, source, Int32(target))
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in 1..<32 where signal != SIGKILL && signal != SIGSTOP { sigaddset(&defaults, Int32(signal)) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        return posix_spawn(&pid, path, &actions, &attributes, argv, environ)
    }

    deinit {
        killNow()
        streams.filter { $0 >= 0 }.forEach { close($0) }
    }

    /// The lines that arrived since the last call.
    func newLines() -> ArraySlice<Line> {
        defer { delivered = lines.count }
        return lines[delivered...]
    }

    /// Reads what the child wrote, waiting at most `milliseconds` for something. False once both of
    /// its streams are closed.
    @discardableResult
    func pump(milliseconds: Int32) -> Bool {
        readOnce(milliseconds: milliseconds).open
    }

    /// Waits up to `milliseconds` for output from any of `children`, then reads what each has waiting:
    /// several coordinators at once, none of whose output waits on another's.
    static func pump(_ children: [Child], milliseconds: Int32) {
        var polled = children.flatMap { $0.streams.filter { $0 >= 0 } }.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        if polled.isEmpty {
            sleep(seconds: Double(milliseconds) / 1000)
            return
        }
        guard poll(&polled, nfds_t(polled.count), milliseconds) > 0 else { return }
        for child in children { child.drain() }
    }

    /// Reads until nothing is waiting.
    func drain() {
        while case (true, true) = readOnce(milliseconds: 0) {}
    }

    private func readOnce(milliseconds: Int32) -> (open: Bool, readSomething: Bool) {
        var polled = streams.filter { $0 >= 0 }.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard !polled.isEmpty else { return (false, false) }
        guard poll(&polled, nfds_t(polled.count), milliseconds) > 0 else { return (true, false) }
        let offset = realtimeMinusMonotonic()
        var buffer = [UInt8](repeating: 0, count: Child.recordLimit)
        var control = [UInt8](repeating: 0, count: 64)
        for entry in polled where entry.revents != 0 {
            let stream = streams.firstIndex(of: entry.fd)!
            var written: Int64 = monotonicNow()
            let count = buffer.withUnsafeMutableBytes { data in
                Child.receive(entry.fd, into: data, control: &control, flags: 0, offset: offset, stamp: &written)
            }
            if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            // A record of zero bytes is an empty write, unless the other end is gone.
            if count < 0 || (count == 0 && entry.revents & Int16(POLLHUP) != 0) {
                close(entry.fd)
                streams[stream] = -1
                continue
            }
            for byte in buffer[0..<count] {
                if byte == UInt8(ascii: "\n") {
                    lines.append(Line(time: written, standardError: stream == 1, text: String(decoding: partial[stream], as: UTF8.self)))
                    partial[stream].removeAll(keepingCapacity: true)
                } else {
                    partial[stream].append(byte)
                }
            }
        }
        return (streams.contains { $0 >= 0 }, true)
    }

    /// One record from a SOCK_SEQPACKET stream into `data`; `stamp` becomes the kernel's time of its
    /// write (monotonic ns, given `offset`, realtime minus monotonic) when the socket stamps. Returns
    /// recvmsg's count.
    static func receive(
        _ fd: Int32, into data: UnsafeMutableRawBufferPointer, control: inout [UInt8], flags: Int32, offset: Int64,
        stamp: inout Int64
    ) -> Int {
        control.withUnsafeMutableBytes { control in
            var vector = iovec(iov_base: data.baseAddress, iov_len: data.count)
            return withUnsafeMutablePointer(to: &vector) { vector in
                var message = msghdr()
                message.msg_iov = vector
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = control.count
                let count = recvmsg(fd, &message, flags)
                if count >= 0, let time = Child.timestamp(control, length: Int(message.msg_controllen)) {
                    stamp = time - offset
                }
                return count
            }
        }
    }

    /// The SCM_TIMESTAMPNS of a received record (CLOCK_REALTIME ns): the control message's header is
    /// a size_t length, an int level and an int type, its data a timespec.
    static func timestamp(_ control: UnsafeMutableRawBufferPointer, length: Int) -> Int64? {
        let header = MemoryLayout<Int>.size + 2 * MemoryLayout<Int32>.size
        guard length >= header + MemoryLayout<timespec>.size,
              control.load(fromByteOffset: MemoryLayout<Int>.size, as: Int32.self) == SOL_SOCKET,
              control.load(fromByteOffset: MemoryLayout<Int>.size + 4, as: Int32.self) == timestampOption
        else { return nil }
        let time = control.loadUnaligned(fromByteOffset: header, as: timespec.self)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }

    /// Pumps until `done` holds, the output ends, or `deadline` (monotonic ns) passes; true when `done`.
    func pump(until deadline: Int64, _ done: () -> Bool) -> Bool {
        while !done() {
            let left = deadline - monotonicNow()
            guard left > 0 else { return false }
            if !pump(milliseconds: Int32(min(left / 1_000_000 + 1, 1000))) { return done() }
        }
        return true
    }

    /// Waits for the exit (reading output meanwhile) until `deadline`; the exit code, 128+N for
    /// signal N, or nil when it is still running.
    func wait(until deadline: Int64) -> Int32? {
        while exitStatus == nil {
            var status: Int32 = 0
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid {
                let signal = status & 0x7f
                exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
                _ = lastStartedChild.compareExchange(expected: pid, desired: 0, ordering: .relaxed)
                break
            }
            guard monotonicNow() < deadline else { return nil }
            if !pump(milliseconds: 20) { sleep(seconds: 0.001) }
        }
        drain()
        return exitStatus
    }

    /// Sends SIGKILL and reaps; for a child that overran its deadline.
    func killNow() {
        guard exitStatus == nil else { return }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus = 128 + SIGKILL
        _ = lastStartedChild.compareExchange(expected: pid, desired: 0, ordering: .relaxed)
    }
}
