import Testing

@testable import Graceful

/// The link's challenge-response, both roles driven against each other or against crafted bytes.
@Suite struct LinkHandshakeTests {
    let secret = Array("the job token".utf8)
    let followerNonce = [UInt8](repeating: 0xF0, count: 32)
    let leaderNonce = [UInt8](repeating: 0x1E, count: 32)

    func leader(secret: [UInt8]? = nil) -> LinkHandshake {
        var leader = LinkHandshake(role: .leader, secret: secret ?? self.secret, nonce: leaderNonce)
        #expect(leader.start() == [])
        return leader
    }

    func follower(secret: [UInt8]? = nil, nonce: [UInt8]? = nil) -> (LinkHandshake, hello: [UInt8]) {
        var follower = LinkHandshake(role: .follower, secret: secret ?? self.secret, nonce: nonce ?? followerNonce)
        let hello = follower.start()
        return (follower, hello)
    }

    func challenge(from leader: inout LinkHandshake, hello: [UInt8]) -> [UInt8] {
        guard case .send(let challenge) = leader.receive(hello) else {
            Issue.record("no CHALLENGE")
            return []
        }
        return challenge
    }

    /// Feeds `bytes` one at a time: .needMore until the last, whose action is returned.
    func receiveByteByByte(_ handshake: inout LinkHandshake, _ bytes: [UInt8]) -> LinkHandshake.ReceiveAction {
        for byte in bytes.dropLast() {
            #expect(handshake.receive([byte]) == .needMore)
        }
        return handshake.receive(bytes.suffix(1))
    }

    @Test func messagesHaveTheDocumentedLayout() {
        var (follower, hello) = follower()
        var leader = leader()
        #expect(hello == Array("GRACEFUL-LINK/1\n".utf8) + followerNonce)
        let challenge = challenge(from: &leader, hello: hello)
        #expect(challenge.count == 80)
        #expect(Array(challenge[..<48]) == Array("GRACEFUL-LINK/1\n".utf8) + leaderNonce)
        #expect(Array(challenge[48...]) == HMACSHA256.authenticationCode(key: secret, message: Array("graceful leader".utf8) + followerNonce + leaderNonce))
        guard case .established(let keys, let proof, let leftover) = follower.receive(challenge) else {
            Issue.record("follower not established")
            return
        }
        #expect(proof == HMACSHA256.authenticationCode(key: secret, message: Array("graceful follower".utf8) + leaderNonce + followerNonce))
        #expect(leftover == [])
        let session = HMACSHA256.authenticationCode(key: secret, message: Array("graceful session".utf8) + followerNonce + leaderNonce)
        #expect(keys.sending == HMACSHA256.authenticationCode(key: session, message: Array("follower to leader".utf8)))
        #expect(keys.receiving == HMACSHA256.authenticationCode(key: session, message: Array("leader to follower".utf8)))
    }

    @Test func bothRolesAgreeOnMirroredKeysInOneChunk() {
        var (follower, hello) = follower()
        var leader = leader()
        let challenge = challenge(from: &leader, hello: hello)
        guard case .established(let followerKeys, let proof, []) = follower.receive(challenge),
              case .established(let leaderKeys, [], []) = leader.receive(proof)
        else {
            Issue.record("not established")
            return
        }
        #expect(followerKeys.sending == leaderKeys.receiving)
        #expect(followerKeys.receiving == leaderKeys.sending)
        #expect(followerKeys.sending != followerKeys.receiving)
        // The secret itself never crosses the wire.
        for message in [hello, challenge, proof] {
            #expect(!message.indices.contains { message[$0...].starts(with: secret) })
        }
    }

    @Test func bothRolesAgreeByteByByte() {
        var (follower, hello) = follower()
        var leader = leader()
        guard case .send(let challenge) = receiveByteByByte(&leader, hello),
              case .established(let followerKeys, let proof, []) = receiveByteByByte(&follower, challenge),
              case .established(let leaderKeys, [], []) = receiveByteByByte(&leader, proof)
        else {
            Issue.record("not established")
            return
        }
        #expect(followerKeys == LinkKeys(sending: leaderKeys.receiving, receiving: leaderKeys.sending))
        #expect(followerKeys == EstablishedPair(secret: secret, followerNonce: followerNonce, leaderNonce: leaderNonce).follower)
    }

    @Test func freshNoncesGiveFreshKeys() {
        let first = EstablishedPair(secret: secret, followerNonce: followerNonce, leaderNonce: leaderNonce)
        let otherFollower = EstablishedPair(secret: secret, followerNonce: leaderNonce, leaderNonce: leaderNonce)
        let otherLeader = EstablishedPair(secret: secret, followerNonce: followerNonce, leaderNonce: followerNonce)
        #expect(first.follower != otherFollower.follower)
        #expect(first.follower != otherLeader.follower)
        #expect(otherFollower.follower != otherLeader.follower)
    }

    @Test func bytesAfterTheProofAreLeftoverForTheFrameReader() {
        var (follower, hello) = follower()
        var leader = leader()
        guard case .established(let followerKeys, let proof, _) = follower.receive(challenge(from: &leader, hello: hello)) else {
            Issue.record("follower not established")
            return
        }
        var writer = LinkFrameWriter(key: followerKeys.sending)
        let frame = writer.seal(Array("first".utf8))
        // Split inside the proof, so that the leftover comes from the second chunk only.
        #expect(leader.receive(proof.prefix(10)) == .needMore)
        guard case .established(let leaderKeys, [], let leftover) = leader.receive(proof.dropFirst(10) + frame) else {
            Issue.record("leader not established")
            return
        }
        #expect(leftover == frame)
        var reader = LinkFrameReader(key: leaderKeys.receiving)
        reader.append(leftover)
        #expect(reader.next() == .payload(Array("first".utf8)))
    }

    @Test func theFollowerRefusesALeaderWithAnotherSecret() {
        var (follower, hello) = follower()
        var leader = leader(secret: Array("another job".utf8))
        #expect(follower.receive(challenge(from: &leader, hello: hello)) == .rejected(.wrongSecret))
        #expect(follower.receive([0]) == .rejected(.malformed("after the handshake")))
    }

    @Test func theLeaderRefusesAFollowerWithAnotherSecret() {
        // A follower holding another secret would stop at the CHALLENGE; one that answers anyway
        // sends the proof its secret gives.
        let (_, hello) = follower()
        var leader = leader()
        let challenge = challenge(from: &leader, hello: hello)
        let nonce = Array(challenge[16..<48])
        let forged = HMACSHA256.authenticationCode(
            key: Array("another job".utf8), message: Array("graceful follower".utf8) + nonce + followerNonce)
        #expect(leader.receive(forged) == .rejected(.wrongSecret))
        #expect(leader.receive(forged) == .rejected(.malformed("after the handshake")))
    }

    @Test func nothingTheLeaderSendsVerifiesAsAFollowerProof() {
        let (_, hello) = follower()
        var replayed = leader()
        let challenge = challenge(from: &replayed, hello: hello)
        #expect(replayed.receive(challenge) == .rejected(.wrongSecret))
        var echoed = leader()
        _ = self.challenge(from: &echoed, hello: hello)
        #expect(echoed.receive(challenge.suffix(32)) == .rejected(.wrongSecret))
    }

    @Test func aChallengeFromAnEarlierHandshakeIsRefused() {
        let (_, oldHello) = follower()
        var oldLeader = leader()
        let oldChallenge = challenge(from: &oldLeader, hello: oldHello)
        var (follower, _) = follower(nonce: [UInt8](repeating: 0x77, count: 32))
        #expect(follower.receive(oldChallenge) == .rejected(.wrongSecret))
    }

    @Test func anotherProtocolIsRefusedAtItsFirstWrongByte() {
        var leader = leader()
        #expect(leader.receive(Array("GRACEFUL".utf8)) == .needMore)
        #expect(leader.receive(Array("-LINK/2".utf8)) == .rejected(.notGraceful))

        var httpLeader = self.leader()
        #expect(httpLeader.receive(Array("GET / HTTP/1.1\r\n".utf8)) == .rejected(.notGraceful))
        #expect(httpLeader.receive(Array("GRACEFUL".utf8)) == .rejected(.malformed("after the handshake")))

        var (follower, _) = follower()
        var challenge = [UInt8](repeating: 0, count: 80)
        challenge[0] = UInt8(ascii: "G")
        #expect(follower.receive(challenge.prefix(1)) == .needMore)
        #expect(follower.receive(challenge.dropFirst()) == .rejected(.notGraceful))
    }

    @Test func garbageIsRefused() {
        var random = SeededGenerator(seed: 4231)
        for _ in 0..<50 {
            var leader = leader()
            let garbage = (0..<Int.random(in: 1...200, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            #expect(leader.receive(garbage) == .rejected(.notGraceful))
            var (follower, _) = follower()
            #expect(follower.receive(garbage) == .rejected(.notGraceful))
        }
    }

    @Test func aFollowerSpeakingBeforeTheChallengeIsRefused() {
        let (_, hello) = follower()
        var leader = leader()
        #expect(leader.receive(hello + [0]) == .rejected(.malformed("before the challenge")))
    }

    @Test func bytesBeforeStartAreRefused() {
        var follower = LinkHandshake(role: .follower, secret: secret, nonce: followerNonce)
        #expect(follower.receive([1]) == .rejected(.malformed("before the handshake started")))
        var leader = LinkHandshake(role: .leader, secret: secret, nonce: leaderNonce)
        #expect(leader.receive([1]) == .rejected(.malformed("before the handshake started")))
    }

    @Test func rejectionsReadAsOneShortPhrase() {
        #expect(LinkRejection.wrongSecret.description == "the peer's proof did not verify (a different job token)")
        #expect(LinkRejection.outOfSequence(expected: 3, got: 2).description
            == "frame 2 arrived where frame 3 was due (replayed, lost or reordered)")
        #expect(LinkRejection.oversized(5_000_000).description == "a frame announced 5000000 bytes, more than the 4194304 allowed")
        #expect(LinkRejection.malformed("after the handshake").description == "malformed link data (after the handshake)")
    }
}
