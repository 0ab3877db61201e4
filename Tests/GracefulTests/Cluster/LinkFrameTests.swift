import Testing

@testable import Graceful

/// Frames after the handshake: layout, order, and each way a frame is refused.
@Suite struct LinkFrameTests {
    let keys = EstablishedPair()

    func frames(_ payloads: [String], key: [UInt8]? = nil) -> [[UInt8]] {
        var writer = LinkFrameWriter(key: key ?? keys.follower.sending)
        return payloads.map { writer.seal(Array($0.utf8)) }
    }

    func reader() -> LinkFrameReader {
        LinkFrameReader(key: keys.leader.receiving)
    }

    @Test func aFrameHasTheDocumentedLayout() {
        let sealed = frames(["one", "two"])
        #expect(Array(sealed[1][..<12]) == [0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2])
        #expect(Array(sealed[1][12..<15]) == Array("two".utf8))
        #expect(Array(sealed[1][15...]) == HMACSHA256.authenticationCode(key: keys.follower.sending, message: sealed[1][..<15]))
        #expect(Array(sealed[0][4..<12]) == [0, 0, 0, 0, 0, 0, 0, 1])
    }

    @Test func framesArriveInOrderWhateverTheSplit() {
        let payloads = ["", "a", String(repeating: "x", count: 1000), "last"]
        let stream = frames(payloads).flatMap { $0 }
        for chunk in [1, 7, 44, stream.count] {
            var reader = reader()
            var delivered: [String] = []
            for start in stride(from: 0, to: stream.count, by: chunk) {
                reader.append(stream[start..<min(stream.count, start + chunk)])
                while case .payload(let payload) = reader.next() { delivered.append(String(decoding: payload, as: UTF8.self)) }
            }
            #expect(delivered == payloads, "chunks of \(chunk)")
            #expect(reader.next() == .needMore)
        }
    }

    @Test func theLargestPayloadPasses() {
        var writer = LinkFrameWriter(key: keys.follower.sending)
        let payload = [UInt8](repeating: 0xAB, count: LinkFrameReader.maximumPayload)
        var reader = reader()
        reader.append(writer.seal(payload))
        #expect(reader.next() == .payload(payload))
    }

    @Test func anOversizedLengthIsRefusedFromTheHeaderAlone() {
        for length: UInt32 in [UInt32(LinkFrameReader.maximumPayload) + 1, .max] {
            var reader = reader()
            var header: [UInt8] = []
            withUnsafeBytes(of: length.bigEndian) { header += $0 }
            header += [0, 0, 0, 0, 0, 0, 0, 1]
            reader.append(header.prefix(11))
            #expect(reader.next() == .needMore)
            reader.append(header.suffix(1))
            #expect(reader.next() == .rejected(.oversized(Int(length))))
        }
    }

    @Test func aFlippedBitIsTampering() {
        let frame = frames(["payload"])[0]
        for bit in 0..<(frame.count * 8) {
            var damaged = frame
            damaged[bit / 8] ^= 1 << (bit % 8)
            let length = damaged[..<4].reduce(0) { $0 << 8 | Int($1) }
            var reader = reader()
            // Enough bytes after it that a lengthened frame is complete too.
            reader.append(damaged + [UInt8](repeating: 0, count: LinkFrame.maximumLength))
            let expected = length > LinkFrameReader.maximumPayload ? LinkRejection.oversized(length) : .tampered
            #expect(reader.next() == .rejected(expected), "bit \(bit)")
        }
    }

    @Test func aReplayedFrameIsOutOfSequence() {
        let sealed = frames(["one", "two"])
        var reader = reader()
        reader.append(sealed[0] + sealed[0] + sealed[1])
        #expect(reader.next() == .payload(Array("one".utf8)))
        #expect(reader.next() == .rejected(.outOfSequence(expected: 2, got: 1)))
    }

    @Test func aLostFrameIsOutOfSequence() {
        let sealed = frames(["one", "two", "three"])
        var reader = reader()
        reader.append(sealed[0] + sealed[2])
        #expect(reader.next() == .payload(Array("one".utf8)))
        #expect(reader.next() == .rejected(.outOfSequence(expected: 2, got: 3)))
    }

    @Test func aFrameReflectedToItsSenderIsRefused() {
        // The follower's own frame, fed back to the follower: sealed with the other direction's key.
        var reader = LinkFrameReader(key: keys.follower.receiving)
        reader.append(frames(["mine"])[0])
        #expect(reader.next() == .rejected(.tampered))
    }

    @Test func onceRejectedAlwaysRejected() {
        let sealed = frames(["one", "two"])
        var reader = reader()
        reader.append(frames(["forged"], key: [1, 2, 3])[0])
        #expect(reader.next() == .rejected(.tampered))
        reader.append(sealed[0] + sealed[1])
        #expect(reader.next() == .rejected(.tampered))
        #expect(reader.bufferedCount == 0)
    }

    @Test func memoryStaysWithinOneFramePlusTheLastAppend() {
        var writer = LinkFrameWriter(key: keys.follower.sending)
        let stream = (0..<6).flatMap { _ in writer.seal([UInt8](repeating: 7, count: LinkFrameReader.maximumPayload)) }
        var reader = reader()
        var delivered = 0
        for start in stride(from: 0, to: stream.count, by: 65536) {
            let chunk = stream[start..<min(stream.count, start + 65536)]
            reader.append(chunk)
            #expect(reader.bufferedCount <= LinkFrame.maximumLength + chunk.count)
            while case .payload = reader.next() { delivered += 1 }
            #expect(reader.bufferedCount <= LinkFrame.maximumLength + chunk.count)
        }
        #expect(delivered == 6)
    }
}
