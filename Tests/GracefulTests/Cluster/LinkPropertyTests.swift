import Foundation
import Testing

@testable import Graceful

/// Random handshakes and frame streams, in random splits, with at most one fault each: everything
/// before the fault is delivered in order, the fault is refused, and nothing after it is delivered.
///
/// `GRACEFUL_PROPERTY_RUNS` sets the number of runs; `GRACEFUL_PROPERTY_SEED` replays one run (the
/// seed a failure prints).
@Suite struct LinkPropertyTests {
    @Test func randomStreamsDeliverInOrderAndRefuseEveryFault() {
        let seeds = propertySeeds(defaultRuns: 300, start: 0x11AC_0001)
        for seed in seeds {
            var stream = LinkStream(seed: seed)
            do {
                try stream.run()
            } catch {
                Issue.record("\(error.message)\nreplay with GRACEFUL_PROPERTY_SEED=\(seed)\n\(stream.trace.joined(separator: "\n"))")
                return
            }
        }
    }
}

/// One run: a handshake, then one direction's frames with at most one fault.
struct LinkStream {
    enum Fault: CaseIterable {
        case clean, flippedBit, truncated, replayed, reordered, otherDirection
    }

    var random: SeededGenerator
    var trace: [String] = []

    init(seed: UInt64) {
        random = SeededGenerator(seed: seed)
    }

    mutating func run() throws(Violation) {
        let keys = try handshake()
        let fromLeader = random.chance(0.5)
        let (sending, receiving) = fromLeader ? (keys.leader.sending, keys.follower.receiving) : (keys.follower.sending, keys.leader.receiving)
        let otherDirection = fromLeader ? keys.follower.sending : keys.leader.sending

        let payloads = (0..<Int.random(in: 1...8, using: &random)).map { _ in randomPayload() }
        var writer = LinkFrameWriter(key: sending)
        var frames = payloads.map { writer.seal($0) }
        let fault = random.pick(Fault.allCases)
        // The frame the fault hits: everything before it is delivered, nothing from it on.
        var hit = Int.random(in: 0..<frames.count, using: &random)
        var refusal: LinkRejection?
        // Set when the refusal depends on the header the reader finds at the hit frame: a length
        // over the limit is oversized, any other is a frame whose code does not verify.
        var damaged = false
        switch fault {
        case .clean:
            hit = frames.count
        case .flippedBit:
            let bit = Int.random(in: 0..<(frames[hit].count * 8), using: &random)
            trace.append("bit \(bit) of frame \(hit + 1) flipped")
            frames[hit][bit / 8] ^= 1 << (bit % 8)
            damaged = true
        case .truncated:
            let kept = Int.random(in: 0..<frames[hit].count, using: &random)
            trace.append("frame \(hit + 1) cut to \(kept) bytes")
            frames[hit].removeLast(frames[hit].count - kept)
            if kept > 0 {
                damaged = true
            } else if hit + 1 < frames.count {
                refusal = .outOfSequence(expected: UInt64(hit + 1), got: UInt64(hit + 2))
            } else {
                // The last frame lost: what follows is the filler, which is no frame at all.
                refusal = .tampered
            }
        case .replayed:
            let earlier = Int.random(in: 0...hit, using: &random)
            trace.append("frame \(earlier + 1) replayed after frame \(hit + 1)")
            frames.insert(frames[earlier], at: hit + 1)
            hit += 1
            refusal = .outOfSequence(expected: UInt64(hit + 1), got: UInt64(earlier + 1))
        case .reordered:
            let later = Int.random(in: hit..<frames.count, using: &random)
            trace.append("frame \(later + 1) moved before frame \(hit + 1)")
            frames.insert(frames.remove(at: later), at: hit)
            if later == hit {
                hit = frames.count
            } else {
                refusal = .outOfSequence(expected: UInt64(hit + 1), got: UInt64(later + 1))
            }
        case .otherDirection:
            trace.append("frame \(hit + 1) sealed with the other direction's key")
            var reflector = LinkFrameWriter(key: otherDirection)
            frames[hit] = payloads[...hit].map { reflector.seal($0) }.last!
            refusal = .tampered
        }
        trace.append("\(payloads.count) payloads of \(payloads.map(\.count)) bytes, \(fromLeader ? "leader to follower" : "follower to leader")")

        let bytes = frames.flatMap { $0 }
        let faulty = damaged || refusal != nil
        // Zeros after a fault, enough to complete any frame a damaged header announces.
        let filler = [UInt8](repeating: 0, count: faulty ? LinkFrame.maximumLength : 0)
        if damaged {
            let offset = frames[..<hit].reduce(0) { $0 + $1.count }
            let length = (bytes + filler)[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            refusal = length > LinkFrameReader.maximumPayload ? .oversized(length) : .tampered
        }

        var reader = LinkFrameReader(key: receiving)
        var delivered: [[UInt8]] = []
        var outcome = LinkFrameReader.Next.needMore
        for chunk in split(bytes) + [filler[...]] {
            reader.append(chunk)
            while true {
                outcome = reader.next()
                guard case .payload(let payload) = outcome else { break }
                delivered.append(payload)
            }
        }
        let expected = Array(payloads.prefix(min(hit, payloads.count)))
        try expect(delivered == expected, "delivered \(delivered.map(\.count)), expected \(expected.map(\.count))")
        if let refusal {
            try expect(outcome == .rejected(refusal), "ended in \(outcome), expected \(refusal)")
            reader.append(writer.seal([1]))
            try expect(reader.next() == outcome, "a rejection did not stick")
        } else {
            try expect(outcome == .needMore, "a clean stream ended in \(outcome)")
        }
    }

    /// Both roles, fed each other's bytes in random splits; returns their keys.
    mutating func handshake() throws(Violation) -> EstablishedPair {
        let secret = (0..<Int.random(in: 1...100, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        var follower = LinkHandshake(role: .follower, secret: secret, nonce: randomNonce())
        var leader = LinkHandshake(role: .leader, secret: secret, nonce: randomNonce())
        _ = leader.start()
        guard case .send(let challenge) = try deliver(follower.start(), to: &leader),
              case .established(let followerKeys, let proof, []) = try deliver(challenge, to: &follower),
              case .established(let leaderKeys, [], []) = try deliver(proof, to: &leader)
        else { throw Violation(message: "the handshake failed") }
        try expect(followerKeys == LinkKeys(sending: leaderKeys.receiving, receiving: leaderKeys.sending), "keys not mirrored")
        return EstablishedPair(leader: leaderKeys, follower: followerKeys)
    }

    /// The action for the last chunk of `bytes`; every earlier chunk must leave the handshake waiting.
    mutating func deliver(_ bytes: [UInt8], to handshake: inout LinkHandshake) throws(Violation) -> LinkHandshake.ReceiveAction {
        let chunks = split(bytes)
        for chunk in chunks.dropLast() {
            let action = handshake.receive(chunk)
            try expect(action == .needMore, "\(action) before the whole message arrived")
        }
        return handshake.receive(chunks.last ?? [])
    }

    /// `bytes` cut at random places, sometimes into single bytes.
    mutating func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        let largest = random.pick([1, 5, 64, 1000, 70000])
        var chunks: [ArraySlice<UInt8>] = []
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + Int.random(in: 1...largest, using: &random))
            chunks.append(bytes[start..<end])
            start = end
        }
        return chunks
    }

    mutating func randomPayload() -> [UInt8] {
        let length = random.chance(0.03) ? LinkFrameReader.maximumPayload : random.pick([0, 1, Int.random(in: 0...300, using: &random)])
        return (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
    }

    mutating func randomNonce() -> [UInt8] {
        (0..<LinkHandshake.nonceLength).map { _ in UInt8.random(in: 0...255, using: &random) }
    }

    func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws(Violation) {
        if !condition { throw Violation(message: message()) }
    }
}
