import Foundation
import Glibc

/// A process started for the output-flood part (`graceful run`, or the `cat` baseline), its console
/// drained here as fast as this process can read it, or stalled.
///
/// Unlike `Child`, it keeps no line of stdout: a flood is tens of millions of lines, so stdout (a
/// pipe, as under `| tee`) is only counted. Drained: stderr, where graceful writes its own lines, is a
/// SOCK_SEQPACKET socket stamped by the kernel as `Child`'s are, so the `stop requested` line's time
/// does not depend on when this process gets a CPU. Stalled: stdout and stderr are one pipe that
/// nothing reads (a terminal paused with Ctrl+S, a stuck `| tee`); its read end stays open here until
/// the process is gone, so writes to it wait (or fail with EAGAIN) rather than break.
///
/// The process starts like `Child`'s: empty signal mask, default dispositions, stdin /dev/null, the
/// benchmark's process group. Killed and reaped at deinit if still running.
final class FloodProcess {
    enum Console: String, CaseIterable {
        case drained
        case stalled
    }

    struct Line {
        /// When the process wrote it (CLOCK_MONOTONIC ns, from the kernel's stamp).
        let time: Int64
        let text: String
    }

    let pid: pid_t
    /// Just before the spawn (CLOCK_MONOTONIC ns).
    let started: Int64
    private(set) var exitStatus: Int32?
    /// When `reap` found the process ended.
    private(set) var exitedAt: Int64?
    /// Newlines and bytes read from stdout (drained only).
    private(set) var outputLines = 0
    private(set) var outputBytes = 0
    /// stderr's lines (drained only).
    private(set) var errorLines: [Line] = []
    private var output: Int32
    private var errors: Int32
    private var stalled: Int32
    private var partialError: [UInt8] = []
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)

    init(_ path: String, _ arguments: [String], console: Console) throws {
        var pipeEnds: [Int32] = [-1, -1]
        guard closeOnExecPipe(&pipeEnds) == 0 else { throw BenchError("pipe failed") }
        let outputEnd: Int32
        let errorEnd: Int32
        switch console {
        case .drained:
            var pair: [Int32] = [-1, -1]
            let kind = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            guard socketpair(AF_UNIX, kind, 0, &pair) == 0 else {
                pipeEnds.forEach { close($0) }
                throw BenchError("socketpair failed")
            }
            var on: Int32 = 1
            setsockopt(pair[0], SOL_SOCKET, Child.timestampOption, &on, socklen_t(MemoryLayout<Int32>.size))
            shutdown(pair[0], Int32(SHUT_WR))
            // Only this end: the pipe's two ends are separate open file descriptions.
            _ = fcntl(pipeEnds[0], F_SETFL, O_NONBLOCK)
            (output, errors, stalled) = (pipeEnds[0], pair[0], -1)
            (outputEnd, errorEnd) = (pipeEnds[1], pair[1])
        case .stalled:
            (output, errors, stalled) = (-1, -1, pipeEnds[0])
            (outputEnd, errorEnd) = (pipeEnds[1], pipeEnds[1])
        }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            if null >= 0 { close(null) }
            close(outputEnd)
            if errorEnd != outputEnd { close(errorEnd) }
        }
        var pid: pid_t = 0
        started = monotonicNow()
        let result = Child.spawn(path, arguments, descriptors: [null, outputEnd, errorEnd], pid: &pid)
        guard result == 0 else {
            [output, errors, stalled].filter { $0 >= 0 }.forEach { close($0) }
            buffer.deallocate()
            throw BenchError("cannot start \(path): \(String(cString: strerror(result)))")
        }
        self.pid = pid
        lastStartedChild.store(pid, ordering: .relaxed)
    }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            _ = lastStartedChild.compareExchange(expected: pid, desired: 0, ordering: .relaxed)
        }
        [output, errors, stalled].filter { $0 >= 0 }.forEach { close($0) }
        buffer.deallocate()
    }

    /// Whether the process has ended (reaped now or before).
    @discardableResult
    func reap() -> Bool {
        guard exitStatus == nil else { return true }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return false }
        exitedAt = monotonicNow()
        let signal = status & 0x7f
        exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        _ = lastStartedChild.compareExchange(expected: pid, desired: 0, ordering: .relaxed)
        return true
    }

    /// Reads what is waiting, after waiting at most `milliseconds` for something (sleeps that long
    /// when nothing here is read: a stalled console). True when something was read.
    @discardableResult
    func pump(milliseconds: Int32) -> Bool {
        var polled = [output, errors].filter { $0 >= 0 }.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        if polled.isEmpty {
            if milliseconds > 0 { sleep(seconds: Double(milliseconds) / 1000) }
            return false
        }
        guard poll(&polled, nfds_t(polled.count), milliseconds) > 0 else { return false }
        var readSomething = false
        for entry in polled where entry.revents != 0 {
            readSomething = (entry.fd == output ? readOutput() : readErrors()) || readSomething
        }
        return readSomething
    }

    /// Once the process has exited: reads until both streams end, 2 s at most (a grandchild could
    /// hold them open).
    func drainToEnd() {
        let deadline = monotonicNow() + 2_000_000_000
        while (output >= 0 || errors >= 0) && monotonicNow() < deadline { pump(milliseconds: 10) }
    }

    /// Up to 16 reads of stdout, counting newlines.
    private func readOutput() -> Bool {
        var readSomething = false
        for _ in 0..<16 {
            let count = read(output, buffer.baseAddress, buffer.count)
            if count > 0 {
                readSomething = true
                outputBytes += count
                var newlines = 0
                for byte in UnsafeRawBufferPointer(rebasing: buffer[0..<count]) where byte == UInt8(ascii: "\n") {
                    newlines += 1
                }
                outputLines += newlines
                continue
            }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            close(output)
            output = -1
            break
        }
        return readSomething
    }

    /// One record of stderr, its lines stamped with the kernel's time of the write.
    private func readErrors() -> Bool {
        let offset = realtimeMinusMonotonic()
        var control = [UInt8](repeating: 0, count: 64)
        var written = monotonicNow()
        let count = Child.receive(
            errors, into: buffer, control: &control, flags: Int32(MSG_DONTWAIT),
            offset: offset, stamp: &written)
        if count < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) { return false }
        if count <= 0 {
            close(errors)
            errors = -1
            return false
        }
        for byte in UnsafeRawBufferPointer(rebasing: buffer[0..<count]) {
            if byte == UInt8(ascii: "\n") {
                errorLines.append(Line(time: written, text: String(decoding: partialError, as: UTF8.self)))
                partialError.removeAll(keepingCapacity: true)
            } else {
                partialError.append(byte)
            }
        }
        return true
    }
}

/// The children of `pid`, from /proc/PID/task/*/children.
func childProcesses(of pid: pid_t) -> [pid_t] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.flatMap { task in
        let text = readSmallFile("/proc/\(pid)/task/\(task)/children") ?? ""
        return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}

/// The command name of `pid` (/proc/PID/comm), nil once it is gone.
func commandName(_ pid: pid_t) -> String? {
    readSmallFile("/proc/\(pid)/comm").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// Whether `pid` has ended: gone from /proc, or a zombie its parent has not reaped yet. Plain
/// system calls, no Foundation: it is polled every 0.2 ms while a stop is timed.
func processHasEnded(_ pid: pid_t) -> Bool {
    guard let stat = readSmallFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return true }
    let state = stat[stat.index(after: close)...].drop { $0 == " " }.first
    return state == "Z" || state == "X" || state == "x"
}

/// The first 4 KiB of a /proc file; nil when it cannot be opened.
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 4096)
    let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard count >= 0 else { return nil }
    return String(decoding: bytes[0..<count], as: UTF8.self)
}
