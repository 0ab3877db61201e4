@testable import Graceful

extension Array where Element == UInt8 {
    /// The bytes a hexadecimal string spells, two digits a byte.
    init(hex: String) {
        let digits = Array(hex.utf8)
        precondition(digits.count % 2 == 0, "odd hex string")
        self = stride(from: 0, to: digits.count, by: 2).map { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
    }

    var hex: String {
        map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

/// A leader and a follower that completed the handshake in one chunk each way.
struct EstablishedPair {
    var leader: LinkKeys
    var follower: LinkKeys
}

extension EstablishedPair {
    init(secret: [UInt8] = Array("job token".utf8), followerNonce: [UInt8] = .init(repeating: 1, count: 32),
         leaderNonce: [UInt8] = .init(repeating: 2, count: 32)) {
        var follower = LinkHandshake(role: .follower, secret: secret, nonce: followerNonce)
        var leader = LinkHandshake(role: .leader, secret: secret, nonce: leaderNonce)
        _ = leader.start()
        guard case .send(let challenge) = leader.receive(follower.start()),
              case .established(let followerKeys, let proof, _) = follower.receive(challenge),
              case .established(let leaderKeys, _, _) = leader.receive(proof)
        else { preconditionFailure("the handshake failed") }
        self.leader = leaderKeys
        self.follower = followerKeys
    }
}
