/// The keys of an established link, one per direction, so that a frame reflected back to its sender
/// does not verify.
public struct LinkKeys: Equatable, Sendable {
    public var sending: [UInt8]
    public var receiving: [UInt8]

    public init(sending: [UInt8], receiving: [UInt8]) {
        self.sending = sending
        self.receiving = receiving
    }
}

/// The mutual challenge-response that opens a link between two coordinators holding the same job
/// token (the secret), which never crosses the wire. A pure state machine: the caller does the I/O
/// and supplies the nonce.
///
/// 1. follower → leader, HELLO: magic ‖ nF (48 bytes).
/// 2. leader → follower, CHALLENGE: magic ‖ nL ‖ HMAC(secret, "graceful leader" ‖ nF ‖ nL) (80 bytes).
/// 3. follower → leader, PROOF: HMAC(secret, "graceful follower" ‖ nL ‖ nF) (32 bytes).
///
/// Each side proves the secret over the other's fresh nonce, so an old exchange replays nowhere, and
/// the two proofs carry different labels, so neither side's proof serves as the other's. The
/// session key k = HMAC(secret, "graceful session" ‖ nF ‖ nL) gives one frame key per direction:
/// HMAC(k, "follower to leader") and HMAC(k, "leader to follower").
public struct LinkHandshake: Sendable {
    public enum Role: Sendable { case leader, follower }

    public static let nonceLength = 32
    static let magic = Array("GRACEFUL-LINK/1\n".utf8)
    static let helloLength = magic.count + nonceLength
    static let challengeLength = magic.count + nonceLength + HMACSHA256.length
    static let proofLength = HMACSHA256.length

    public enum ReceiveAction: Equatable, Sendable {
        case needMore
        /// The leader's CHALLENGE.
        case send([UInt8])
        /// The follower sends its PROOF (`send`), the leader nothing; `leftover` is what arrived after
        /// the handshake, for the frame reader.
        case established(LinkKeys, send: [UInt8], leftover: [UInt8])
        case rejected(LinkRejection)
    }

    private enum State {
        case created
        /// Leader: waiting for the follower's HELLO.
        case awaitingHello
        /// Follower: HELLO sent, waiting for the CHALLENGE.
        case awaitingChallenge
        /// Leader: CHALLENGE sent, waiting for the follower's PROOF.
        case awaitingProof(expected: [UInt8], keys: LinkKeys)
        /// Established or rejected.
        case finished
    }

    private let role: Role
    private let secret: [UInt8]
    private let nonce: [UInt8]
    private var state = State.created
    /// The part of the message awaited that has arrived; never longer than that message.
    private var buffer: [UInt8] = []

    public init(role: Role, secret: [UInt8], nonce: [UInt8]) {
        precondition(nonce.count == Self.nonceLength, "a link nonce is \(Self.nonceLength) bytes")
        precondition(!secret.isEmpty, "a link needs a non-empty secret")
        self.role = role
        self.secret = secret
        self.nonce = nonce
    }

    /// The bytes to send at once: HELLO for a follower, nothing for a leader.
    public mutating func start() -> [UInt8] {
        guard case .created = state else { preconditionFailure("LinkHandshake.start() called twice") }
        switch role {
        case .leader:
            state = .awaitingHello
            return []
        case .follower:
            state = .awaitingChallenge
            return Self.magic + nonce
        }
    }

    /// Bytes received from the peer, in any split.
    public mutating func receive(_ bytes: some Collection<UInt8>) -> ReceiveAction {
        switch state {
        case .created:
            return finish(.malformed("before the handshake started"))
        case .finished:
            return .rejected(.malformed("after the handshake"))
        case .awaitingHello:
            guard let (hello, leftover) = collect(bytes, length: Self.helloLength) else { return pending() }
            return receivedHello(hello, leftover: leftover)
        case .awaitingChallenge:
            guard let (challenge, leftover) = collect(bytes, length: Self.challengeLength) else { return pending() }
            return receivedChallenge(challenge, leftover: leftover)
        case .awaitingProof(let expected, let keys):
            guard let (proof, leftover) = collect(bytes, length: Self.proofLength) else { return .needMore }
            guard HMACSHA256.isEqual(proof, expected) else { return finish(.wrongSecret) }
            state = .finished
            return .established(keys, send: [], leftover: leftover)
        }
    }

    /// Adds `bytes` to the message awaited; once it is complete, returns it and what followed it.
    private mutating func collect(_ bytes: some Collection<UInt8>, length: Int) -> ([UInt8], leftover: [UInt8])? {
        let wanted = length - buffer.count
        buffer += bytes.prefix(wanted)
        guard buffer.count == length else { return nil }
        defer { buffer = [] }
        return (buffer, Array(bytes.dropFirst(wanted)))
    }

    /// Waiting for the rest of a message that opens with the magic; refused as soon as a byte of the
    /// magic is wrong, rather than after a stranger's whole message.
    private mutating func pending() -> ReceiveAction {
        let checked = min(buffer.count, Self.magic.count)
        return buffer[..<checked].elementsEqual(Self.magic[..<checked]) ? .needMore : finish(.notGraceful)
    }

    private mutating func receivedHello(_ hello: [UInt8], leftover: [UInt8]) -> ReceiveAction {
        guard hello.starts(with: Self.magic) else { return finish(.notGraceful) }
        // The follower has nothing else to send before it has the CHALLENGE to answer.
        guard leftover.isEmpty else { return finish(.malformed("before the challenge")) }
        let followerNonce = Array(hello[Self.magic.count...])
        let proof = authenticate("graceful leader", followerNonce + nonce)
        state = .awaitingProof(
            expected: authenticate("graceful follower", nonce + followerNonce),
            keys: keys(followerNonce: followerNonce, leaderNonce: nonce))
        return .send(Self.magic + nonce + proof)
    }

    private mutating func receivedChallenge(_ challenge: [UInt8], leftover: [UInt8]) -> ReceiveAction {
        guard challenge.starts(with: Self.magic) else { return finish(.notGraceful) }
        let leaderNonce = Array(challenge[Self.magic.count..<Self.magic.count + Self.nonceLength])
        let proof = Array(challenge[(Self.magic.count + Self.nonceLength)...])
        guard HMACSHA256.isEqual(proof, authenticate("graceful leader", nonce + leaderNonce)) else {
            return finish(.wrongSecret)
        }
        state = .finished
        return .established(
            keys(followerNonce: nonce, leaderNonce: leaderNonce),
            send: authenticate("graceful follower", leaderNonce + nonce),
            leftover: leftover)
    }

    private func keys(followerNonce: [UInt8], leaderNonce: [UInt8]) -> LinkKeys {
        let session = authenticate("graceful session", followerNonce + leaderNonce)
        let followerToLeader = HMACSHA256.authenticationCode(key: session, message: "follower to leader".utf8)
        let leaderToFollower = HMACSHA256.authenticationCode(key: session, message: "leader to follower".utf8)
        switch role {
        case .leader: return LinkKeys(sending: leaderToFollower, receiving: followerToLeader)
        case .follower: return LinkKeys(sending: followerToLeader, receiving: leaderToFollower)
        }
    }

    private func authenticate(_ label: String, _ nonces: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticationCode(key: secret, message: Array(label.utf8) + nonces)
    }

    private mutating func finish(_ rejection: LinkRejection) -> ReceiveAction {
        state = .finished
        buffer = []
        return .rejected(rejection)
    }
}
