import Glibc

/// One link between two coordinators over TCP: the challenge-response handshake, then frames that
/// each carry a MAC over a session key and a sequence number (`LinkHandshake`, `LinkFrame`).
///
/// Bounded whatever the peer does: at most `readSize` bytes read per call, one frame buffered, and
/// at most `maximumQueued` bytes waiting to be sent (a peer that stops reading is dropped).
final class ClusterConnection {
    static let readSize = 65536
    static let maximumQueued = 8 << 20

    enum State {
        case handshaking(LinkHandshake)
        case established(reader: LinkFrameReader, writer: LinkFrameWriter)
        case closed
    }

    enum ReadOutcome {
        /// Payloads of verified frames, in order (none while the handshake goes on).
        case payloads([[UInt8]])
        /// The peer closed, broke the connection, or failed the handshake or a frame's check: why,
        /// and that without its details (`LinkRejection.kind`), for warnings once per kind.
        case closed(String, kind: String)
    }

    let fd: Int32
    let peer: String
    let openedAt: Instant
    private(set) var lastHeard: Instant
    private(set) var lastSent: Instant
    private(set) var state: State
    /// The handshake completed: the peer holds the job's token (it stays so after the link closed).
    private(set) var proven = false
    /// Set by the leader once the peer's join is accepted.
    var node: Int?
    /// Payloads asked to be sent before the handshake completed.
    private var early: [[UInt8]] = []
    private var queued: [UInt8] = []
    private var queuedStart = 0

    init(fd: Int32, peer: String, role: LinkHandshake.Role, secret: [UInt8], now: Instant) {
        self.fd = fd
        self.peer = peer
        openedAt = now
        lastHeard = now
        lastSent = now
        var handshake = LinkHandshake(role: role, secret: secret, nonce: SecureRandom.bytes(LinkHandshake.nonceLength))
        let hello = handshake.start()
        state = .handshaking(handshake)
        if !hello.isEmpty { enqueue(hello) }
    }

    var isEstablished: Bool {
        if case .established = state { return true }
        return false
    }

    var hasQueued: Bool { queuedStart < queued.count }

    /// One bounded read, into `buffer` (`readSize` bytes, shared by every connection of a session:
    /// a fresh zeroed one per read cost more than the rest of handling a frame).
    func read(now: Instant, into buffer: inout [UInt8]) -> ReadOutcome {
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, min($0.count, Self.readSize)) }
        if count < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return .payloads([]) }
            let reason = "\(SystemError("read"))"
            return .closed(reason, kind: reason)
        }
        if count == 0 { return .closed("it closed the connection", kind: "closed") }
        lastHeard = now
        return receive(buffer[0..<count])
    }

    private func receive(_ bytes: ArraySlice<UInt8>) -> ReadOutcome {
        switch state {
        case .closed:
            return .closed("already closed", kind: "closed")
        case .handshaking(var handshake):
            switch handshake.receive(bytes) {
            case .needMore:
                state = .handshaking(handshake)
                return .payloads([])
            case .send(let reply):
                state = .handshaking(handshake)
                enqueue(reply)
                return .payloads([])
            case .established(let keys, let reply, let leftover):
                if !reply.isEmpty { enqueue(reply) }
                proven = true
                state = .established(reader: LinkFrameReader(key: keys.receiving), writer: LinkFrameWriter(key: keys.sending))
                for payload in early { send(payload) }
                early = []
                return leftover.isEmpty ? .payloads([]) : receive(leftover[...])
            case .rejected(let rejection):
                state = .closed
                return .closed("\(rejection)", kind: rejection.kind)
            }
        case .established(var reader, let writer):
            reader.append(bytes)
            var payloads: [[UInt8]] = []
            while true {
                switch reader.next() {
                case .payload(let payload):
                    payloads.append(payload)
                case .needMore:
                    state = .established(reader: reader, writer: writer)
                    return .payloads(payloads)
                case .rejected(let rejection):
                    state = .closed
                    return .closed("\(rejection)", kind: rejection.kind)
                }
            }
        }
    }

    /// Seals and queues `payload`, and sends what the socket takes. False when the queue overflowed
    /// (the peer stopped reading) or the connection broke.
    @discardableResult
    func send(_ payload: [UInt8], now: Instant? = nil) -> Bool {
        queue(payload, now: now) && flush()
    }

    /// Seals and queues `payload` without sending it (a `BatchWriter` sends it with others). False
    /// when the queue overflowed or the connection is closed.
    func queue(_ payload: [UInt8], now: Instant? = nil) -> Bool {
        if let now { lastSent = now }
        switch state {
        case .closed:
            return false
        case .handshaking:
            early.append(payload)
            return true
        case .established(let reader, var writer):
            guard payload.count <= LinkFrameReader.maximumPayload else { return false }
            let frame = writer.seal(payload)
            state = .established(reader: reader, writer: writer)
            return append(frame)
        }
    }

    /// What is queued and not sent yet.
    var unsent: ArraySlice<UInt8> { queued[queuedStart...] }

    /// The first `count` bytes of `unsent` were sent.
    func sent(_ count: Int) {
        queuedStart = min(queued.count, queuedStart + count)
    }

    @discardableResult
    private func enqueue(_ bytes: [UInt8]) -> Bool {
        append(bytes) && flush()
    }

    private func append(_ bytes: [UInt8]) -> Bool {
        if queuedStart > 0 && queuedStart == queued.count {
            queued.removeAll(keepingCapacity: true)
            queuedStart = 0
        }
        guard queued.count - queuedStart + bytes.count <= Self.maximumQueued else { return false }
        queued += bytes
        return true
    }

    /// Sends what the socket takes of the queue; false when the connection is broken.
    @discardableResult
    func flush() -> Bool {
        while queuedStart < queued.count {
            guard let sent = ClusterSocket.send(fd, queued[queuedStart...]) else { return false }
            if sent == 0 { return true }
            queuedStart += sent
        }
        return true
    }

    /// Blocks up to `milliseconds` until the queue is sent (before exiting, so the last words arrive).
    func drain(milliseconds: Int32) {
        var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        var left = milliseconds
        while hasQueued && left > 0 {
            guard poll(&poller, 1, 50) >= 0, flush() else { return }
            left -= 50
        }
    }

    func close() {
        state = .closed
        closeDescriptor(fd)
    }
}
