import Glibc

/// One rank's stdout and stderr, relayed in whole lines to its log (everything it can write), its
/// tail (for the failure report) and the console (prefixed, as much as the console takes).
///
/// Work and memory are bounded whatever the rank writes: one read of at most `readSize` bytes per
/// stream per wakeup (so signals, deadlines and exits are never starved by a rank printing as fast as
/// it can), a partial line of at most `maximumLine` bytes, `tailLength` tail lines of at most
/// `maximumTailLine` bytes each. Each read costs one write to the log and one queued console write.
final class OutputRelay {
    static let readSize = 65536
    /// Longer lines are cut into pieces of this length.
    static let maximumLine = 64 * 1024
    static let tailLength = 20
    static let maximumTailLine = 1024

    private let log: Int32
    private let prefix: [UInt8]
    private let showsOnConsole: Bool
    /// The start of each stream's current line, not yet ended by a newline.
    private var partial: [[UInt8]] = [[], []]
    private(set) var tail: [String] = []
    /// Bytes the log could not take (a full disk); reported once.
    private(set) var logLostBytes = 0

    /// `label` prefixes the console lines: `rank3` gives `[rank3]: `.
    init(label: String, log: Int32, showsOnConsole: Bool = true) {
        self.log = log
        self.showsOnConsole = showsOnConsole
        prefix = Array("[\(label)]: ".utf8)
    }

    enum ReadResult {
        /// Read something; more may be waiting (the event loop says so again).
        case read
        /// Nothing was available.
        case empty
        case endOfFile
    }

    /// One bounded read of `fd` (stream 0: stdout, 1: stderr), relayed.
    func relay(_ fd: Int32, stream: Int, console: Console) -> ReadResult {
        withUnsafeTemporaryAllocation(byteCount: Self.readSize, alignment: 1) { buffer in
            guard let count = readAvailable(fd, into: buffer) else { return .empty }
            if count == 0 { return .endOfFile }
            relay(UnsafeRawBufferPointer(rebasing: buffer[0..<count]), stream: stream, console: console)
            return .read
        }
    }

    /// Relays what is left of a stream's last line, at its end.
    func finish(stream: Int, console: Console) {
        guard !partial[stream].isEmpty else { return }
        [UInt8(ascii: "\n")].withUnsafeBytes { relay($0, stream: stream, console: console) }
    }

    private func relay(_ bytes: UnsafeRawBufferPointer, stream: Int, console: Console) {
        var logged: [UInt8] = []
        var shown: [UInt8] = []
        logged.reserveCapacity(bytes.count + partial[stream].count + 1)
        shown.reserveCapacity(bytes.count + partial[stream].count + 64)
        var lines = 0
        var start = 0
        func emit(_ piece: UnsafeRawBufferPointer) {
            logged += partial[stream]
            logged += piece
            logged.append(UInt8(ascii: "\n"))
            // A line the rank already prefixed the same way (PyTorch does, for tracebacks) keeps its own.
            if !startsWithOwnPrefix(partial[stream], piece) { shown += prefix }
            shown += partial[stream]
            shown += piece
            shown.append(UInt8(ascii: "\n"))
            partial[stream].removeAll(keepingCapacity: true)
            lines += 1
        }
        while start < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[start...])
            let room = Self.maximumLine - partial[stream].count
            if let newline = rest.firstIndex(of: UInt8(ascii: "\n")), newline - rest.startIndex <= room {
                let length = newline - rest.startIndex
                emit(UnsafeRawBufferPointer(rebasing: rest[rest.startIndex..<(rest.startIndex + length)]))
                start += length + 1
            } else if rest.count >= room {
                emit(UnsafeRawBufferPointer(rebasing: rest[rest.startIndex..<(rest.startIndex + room)]))
                start += room
            } else {
                partial[stream] += rest
                start = bytes.count
            }
        }
        guard lines > 0 else { return }
        if !logged.withUnsafeBytes({ writeAll(log, $0) }) { logLostBytes += logged.count }
        if showsOnConsole { shown.withUnsafeBytes { console.rankLines($0, lines: lines, toStandardError: stream == 1) } }
        remember(lastLinesOf: logged)
    }

    /// Whether the line made of `head` then `rest` starts with `[rankN]:`, this rank's prefix.
    private func startsWithOwnPrefix(_ head: [UInt8], _ rest: UnsafeRawBufferPointer) -> Bool {
        let marker = prefix.dropLast()
        guard head.count + rest.count >= marker.count else { return false }
        for (offset, byte) in marker.enumerated() {
            let actual = offset < head.count ? head[offset] : rest[offset - head.count]
            if actual != byte { return false }
        }
        return true
    }

    /// Keeps the last `tailLength` lines; only the end of a large batch is looked at.
    private func remember(lastLinesOf logged: [UInt8]) {
        var found: [String] = []
        // `logged` ends with a newline; `end` is the newline closing the line being looked at.
        var end = logged.count - 1
        while end >= 0 && found.count < Self.tailLength {
            var start = end
            while start > 0 && logged[start - 1] != UInt8(ascii: "\n") { start -= 1 }
            found.append(String(decoding: logged[start..<min(end, start + Self.maximumTailLine)], as: UTF8.self))
            end = start - 1
        }
        tail = Array((tail + found.reversed()).suffix(Self.tailLength))
    }
}
