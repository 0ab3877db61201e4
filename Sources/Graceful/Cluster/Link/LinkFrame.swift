/// A frame on an established link: payload length (UInt32, big-endian), sequence number (UInt64,
/// big-endian, 1 for the first frame in each direction), the payload, then
/// HMAC(direction key, length ‖ sequence ‖ payload). Authenticated, not encrypted.
enum LinkFrame {
    static let headerLength = 12
    static let macLength = HMACSHA256.length
    /// The longest frame a reader accepts.
    static let maximumLength = headerLength + LinkFrameReader.maximumPayload + macLength
}

/// Seals payloads into frames for one direction of a link.
public struct LinkFrameWriter: Sendable {
    private let key: [UInt8]
    private var sequence: UInt64 = 1

    public init(key: [UInt8]) {
        self.key = key
    }

    /// The frame carrying `payload`, at most `LinkFrameReader.maximumPayload` bytes.
    public mutating func seal(_ payload: some Collection<UInt8>) -> [UInt8] {
        let length = payload.count
        precondition(
            length <= LinkFrameReader.maximumPayload, "a link frame carries at most \(LinkFrameReader.maximumPayload) bytes")
        var frame: [UInt8] = []
        frame.reserveCapacity(LinkFrame.headerLength + length + LinkFrame.macLength)
        withUnsafeBytes(of: UInt32(length).bigEndian) { frame += $0 }
        withUnsafeBytes(of: sequence.bigEndian) { frame += $0 }
        frame += payload
        let code = HMACSHA256.authenticationCode(key: key, message: frame)
        frame += code
        sequence += 1
        return frame
    }
}

/// Opens the frames of one direction of a link, from bytes in any split.
///
/// Memory is bounded: once `next()` has returned `.needMore`, what is kept is less than one maximal
/// frame (`LinkFrame.maximumLength`, 4 MiB and 44 bytes), so with `next()` drained after each
/// `append`, the reader never holds more than one maximal frame plus what arrived in the last append
/// (the caller reads at most 64 KiB per wakeup). After a rejection it holds nothing. A length over
/// `maximumPayload` is refused from the header alone, without waiting for the payload.
public struct LinkFrameReader: Sendable {
    /// Room for the commit record of a large job (each node gets the whole record).
    public static let maximumPayload = 4 << 20

    public enum Next: Equatable, Sendable {
        case payload([UInt8])
        case needMore
        case rejected(LinkRejection)
    }

    private let key: [UInt8]
    private var expected: UInt64 = 1
    private var buffer: [UInt8] = []
    /// Where the first frame not yet delivered starts in `buffer`.
    private var start = 0
    /// Once set, the link is over: every later `next()` repeats it.
    private var rejection: LinkRejection?

    public init(key: [UInt8]) {
        self.key = key
    }

    /// The bytes held, for the memory bound's test.
    var bufferedCount: Int { buffer.count }

    public mutating func append(_ bytes: some Collection<UInt8>) {
        guard rejection == nil else { return }
        if start > 0 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer += bytes
    }

    /// The next payload; call until `.needMore`. Once rejected, always rejected.
    public mutating func next() -> Next {
        if let rejection { return .rejected(rejection) }
        guard buffer.count - start >= LinkFrame.headerLength else { return .needMore }
        let (length, sequence) = buffer.withUnsafeBytes { bytes in
            (
                Int(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: start, as: UInt32.self))),
                UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: start + 4, as: UInt64.self))
            )
        }
        guard length <= Self.maximumPayload else { return reject(.oversized(length)) }
        let macStart = start + LinkFrame.headerLength + length
        guard buffer.count >= macStart + LinkFrame.macLength else { return .needMore }
        // The code first: a damaged sequence number is tampering, not a replay.
        let code = HMACSHA256.authenticationCode(key: key, message: buffer[start..<macStart])
        guard HMACSHA256.isEqual(code, Array(buffer[macStart..<macStart + LinkFrame.macLength])) else {
            return reject(.tampered)
        }
        guard sequence == expected else { return reject(.outOfSequence(expected: expected, got: sequence)) }
        let payload = Array(buffer[(start + LinkFrame.headerLength)..<macStart])
        expected += 1
        start = macStart + LinkFrame.macLength
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        return .payload(payload)
    }

    private mutating func reject(_ rejection: LinkRejection) -> Next {
        self.rejection = rejection
        buffer = []
        start = 0
        return .rejected(rejection)
    }
}
