import CGraceful
import Glibc

/// Writes to several non-blocking sockets in one system call (Linux AIO's `io_submit`), where the
/// kernel allows it, and one `send` each otherwise.
///
/// Why: a write to a loopback or local socket wakes its reader, and the kernel may hand the writer's
/// CPU to that reader as soon as the call returns. With one call per peer, the writer waits behind
/// every peer it woke (and whatever that peer wakes) before it writes to the next; with one call
/// for all, every peer holds its bytes before any of them runs.
///
/// An AIO write cannot say MSG_NOSIGNAL, so it batches only where SIGPIPE is ignored (the
/// coordinator ignores it: `SignalPipe`); a peer gone is then EPIPE, as with `send`.
final class BatchWriter {
    struct Write {
        var fd: Int32
        var bytes: ArraySlice<UInt8>
    }

    private var context: UInt = 0
    /// False where `io_setup` is refused (seccomp, fs.aio-max-nr): every write is then one `send`.
    let batches: Bool

    init(batching: Bool = true) {
        batches = batching && graceful_signal_is_ignored(SIGPIPE) == 1 && graceful_batch_open(&context) == 0
    }

    deinit {
        if batches { graceful_batch_close(context) }
    }

    /// Per write, in order: the bytes written (0 when the socket would block), or nil when the
    /// descriptor is broken. Every descriptor must be a non-blocking socket.
    func write(_ writes: [Write]) -> [Int?] {
        var results = [Int?](repeating: nil, count: writes.count)
        var done = 0
        // GRACEFUL_BATCH_MAX writes a call; from the first write a call did not attempt, one by one.
        while batches && writes.count - done > 1 {
            let chunk = writes[done..<min(writes.count, done + Int(GRACEFUL_BATCH_MAX))]
            let attempted = batch(chunk, into: &results)
            done += attempted
            if attempted < chunk.count { break }
        }
        for index in done..<writes.count {
            results[index] = ClusterSocket.send(writes[index].fd, writes[index].bytes)
        }
        return results
    }

    /// Writes in one call what it can; returns how many of `writes` it attempted, from the first.
    private func batch(_ writes: ArraySlice<Write>, into results: inout [Int?]) -> Int {
        // One buffer for all: the kernel needs every address at once, and frames are small.
        var joined: [UInt8] = []
        var offsets: [Int] = []
        for write in writes {
            offsets.append(joined.count)
            joined += write.bytes
        }
        let fds = writes.map(\.fd)
        let lengths = writes.map(\.bytes.count)
        var raw = [Int](repeating: 0, count: writes.count)
        let attempted = joined.withUnsafeBytes { buffer -> Int32 in
            let base = buffer.baseAddress!
            let addresses = offsets.map { UnsafeRawPointer(base + $0) }
            return graceful_write_batch(context, fds, addresses, lengths, &raw, Int32(writes.count))
        }
        guard attempted > 0 else { return 0 }
        for index in 0..<Int(attempted) {
            let result = raw[index]
            if result >= 0 {
                results[writes.startIndex + index] = result
            } else {
                let code = Int32(-result)
                results[writes.startIndex + index] = code == EAGAIN || code == EWOULDBLOCK || code == EINTR ? 0 : nil
            }
        }
        return Int(attempted)
    }
}
