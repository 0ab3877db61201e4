import CGraceful
import Glibc
import Testing

@testable import Graceful

/// Writes to several sockets in one call deliver each socket its own bytes, never block, and report
/// a full socket and a gone peer as `send` does; where batching is refused, the same holds one call
/// at a time.
@Suite(.serialized) struct BatchWriterTests {
    /// Socket pairs, the writer's ends non-blocking, as the leader's links are.
    private static func pairs(_ count: Int) -> [(writer: Int32, reader: Int32)] {
        (0..<count).map { _ in
            var fds: [Int32] = [-1, -1]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
            return (fds[0], fds[1])
        }
    }

    private static func readAll(_ fd: Int32) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var got: [UInt8] = []
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count <= 0 { return got }
            got += buffer[0..<count]
        }
    }

    private static func writers() -> [BatchWriter] {
        // The coordinator ignores SIGPIPE; so must this process, or batching stays off.
        _ = graceful_signal_ignore(SIGPIPE)
        return [BatchWriter(), BatchWriter(batching: false)]
    }

    @Test func eachSocketGetsItsOwnBytesWhateverTheCount() {
        for writer in Self.writers() {
            // Several batches hold too, and a single write left after them.
            for count in [1, 3, Int(GRACEFUL_BATCH_MAX) + 5, 2 * Int(GRACEFUL_BATCH_MAX) + 1] {
                let sockets = Self.pairs(count)
                defer { sockets.forEach { close($0.writer); close($0.reader) } }
                let payloads = (0..<count).map { index in Array("frame \(index) of \(count)\n".utf8) }
                let results = writer.write(zip(sockets, payloads).map { BatchWriter.Write(fd: $0.writer, bytes: $1[...]) })
                #expect(results == payloads.map { $0.count }, "batching: \(writer.batches), \(count) sockets")
                for (socket, payload) in zip(sockets, payloads) {
                    #expect(Self.readAll(socket.reader) == payload)
                }
            }
        }
    }

    @Test func aFullSocketTakesWhatFitsWithoutBlockingAndAGonePeerIsReported() {
        for writer in Self.writers() {
            let sockets = Self.pairs(3)
            defer { sockets.forEach { close($0.writer); close($0.reader) } }
            // Fill the first one: the next write cannot take a byte.
            let filler = [UInt8](repeating: 7, count: 1 << 16)
            while ClusterSocket.send(sockets[0].writer, filler[...]) ?? 0 > 0 {}
            close(sockets[2].reader)
            let big = [UInt8](repeating: 1, count: 4 << 20)
            let results = writer.write([
                BatchWriter.Write(fd: sockets[0].writer, bytes: [1, 2, 3][...]),
                BatchWriter.Write(fd: sockets[1].writer, bytes: big[...]),
                BatchWriter.Write(fd: sockets[2].writer, bytes: [4][...]),
            ])
            #expect(results.count == 3)
            #expect(results[0] == 0, "batching: \(writer.batches)")
            // A socket with room takes part of a write too large for it, and says how much.
            let partial = results[1] ?? -1
            #expect(partial > 0 && partial < big.count, "batching: \(writer.batches), \(partial)")
            #expect(Self.readAll(sockets[1].reader).count == partial)
            #expect(results[2] == nil, "batching: \(writer.batches)")
        }
    }

    /// The batch path is the one the leader takes on Linux: if this machine refuses AIO, say so.
    @Test func batchingIsOnWhereTheKernelAllowsIt() {
        _ = graceful_signal_ignore(SIGPIPE)
        var context: UInt = 0
        let opened = graceful_batch_open(&context)
        if opened == 0 { graceful_batch_close(context) }
        #expect(BatchWriter().batches == (opened == 0), "io_setup: \(opened == 0 ? "allowed" : String(cString: strerror(opened)))")
        #expect(BatchWriter(batching: false).batches == false)
    }
}
