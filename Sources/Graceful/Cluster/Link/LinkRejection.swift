/// Why a link's handshake or one of its frames was refused; the connection is closed after any of
/// them.
public enum LinkRejection: Error, Equatable, Sendable, CustomStringConvertible {
    /// The peer did not open with the link's magic: not a graceful coordinator.
    case notGraceful
    /// A handshake proof did not verify: the peer holds another job's token.
    case wrongSecret
    /// A frame's authentication code did not verify.
    case tampered
    /// An authentic frame with another sequence number than the next one: replayed, lost or reordered.
    case outOfSequence(expected: UInt64, got: UInt64)
    /// A frame announced a payload longer than `LinkFrameReader.maximumPayload`.
    case oversized(Int)
    /// Bytes that have no place in the protocol; the text says where.
    case malformed(String)

    /// The case without its details (numbers, places): what "one warning per kind" counts, so a
    /// peer varying them cannot turn one warning into one per connection.
    public var kind: String {
        switch self {
        case .notGraceful: "not graceful"
        case .wrongSecret: "wrong secret"
        case .tampered: "tampered"
        case .outOfSequence: "out of sequence"
        case .oversized: "oversized"
        case .malformed: "malformed"
        }
    }

    public var description: String {
        switch self {
        case .notGraceful:
            "the peer does not speak the graceful link protocol"
        case .wrongSecret:
            "the peer's proof did not verify (a different job token)"
        case .tampered:
            "a frame's authentication code did not verify"
        case .outOfSequence(let expected, let got):
            "frame \(got) arrived where frame \(expected) was due (replayed, lost or reordered)"
        case .oversized(let length):
            "a frame announced \(length) bytes, more than the \(LinkFrameReader.maximumPayload) allowed"
        case .malformed(let place):
            "malformed link data (\(place))"
        }
    }
}
