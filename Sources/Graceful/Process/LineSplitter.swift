/// Cuts a byte stream into lines, so output from several processes is never interleaved mid-line.
///
/// A line of up to `maximumLength` bytes (newline excluded) is delivered whole. A longer one is
/// delivered in pieces of that length (flagged), then its rest, so one process that never writes a
/// newline cannot make the coordinator hold unbounded memory.
struct LineSplitter {
    let maximumLength: Int
    private var pending: [UInt8] = []

    init(maximumLength: Int) {
        self.maximumLength = maximumLength
    }

    /// Appends `bytes` and returns the complete lines (without newlines) and whether each was cut short.
    mutating func append(_ bytes: some Collection<UInt8>) -> [(line: [UInt8], truncated: Bool)] {
        var lines: [(line: [UInt8], truncated: Bool)] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append((pending, false))
                pending.removeAll(keepingCapacity: true)
            } else {
                // Full, and the line goes on: only now is it known to be too long.
                if pending.count == maximumLength {
                    lines.append((pending, true))
                    pending.removeAll(keepingCapacity: true)
                }
                pending.append(byte)
            }
        }
        return lines
    }

    /// What is left without a newline at the end of the stream.
    mutating func finish() -> [UInt8]? {
        defer { pending.removeAll() }
        return pending.isEmpty ? nil : pending
    }
}
