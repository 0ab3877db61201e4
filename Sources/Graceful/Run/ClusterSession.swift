import GracefulProtocol
import Glibc

/// This node's part in a multi-node job: the links to the other coordinators, the rendezvous, the
/// heartbeats, and on node 0 the leader (`ClusterLeader`). What the leader says to this node comes
/// out of `takeCommands()`; what this node says goes in through `tell(_:now:)`.
///
/// Nothing from the network is trusted before the handshake proved the peer holds the job's
/// secret; until then a connection costs one bounded buffer and is dropped after
/// `handshakeTimeout`. Every kind of bad traffic is reported once.
final class ClusterSession {
    struct Settings {
        var nodeCount: Int
        var nodeRank: Int
        var rendezvousHost: String
        var rendezvousPort: Int
        var rendezvousTimeout: Double
        var heartbeatTimeout: Double
        var secret: [UInt8]
    }

    enum Outcome: Equatable {
        case gathering
        case launched(ClusterWorld, record: String?)
        case refused(String)
    }

    static let listenerToken = UInt64.max - 4
    private static let connectionTokenBit: UInt64 = 1 << 62
    /// Seconds a connection may take to prove itself; a port scanner is dropped after it.
    static let handshakeTimeout = 5.0
    /// Connections still proving themselves at once; more are refused at once.
    static let maximumUnproven = 64

    static func isSessionToken(_ token: UInt64) -> Bool {
        token == listenerToken || (token & connectionTokenBit != 0 && token < UInt64.max - 16)
    }

    let settings: Settings
    var isLeader: Bool { settings.nodeRank == 0 }
    private(set) var outcome: Outcome = .gathering
    /// Writes the job's commit record; the leader's: its JSON, or why it failed.
    var writeRecord: ((Int, [CheckpointPath?], String) -> Result<String, CommitFailure>)?
    private let loop: EventLoop
    private let report: (String) -> Void
    private let join: ClusterJoin
    private var leader: ClusterLeader?
    private var listener: Int32 = -1
    private var connections: [UInt64: ClusterConnection] = [:]
    private var tokenByNode: [Int: UInt64] = [:]
    private var nextConnectionID: UInt64 = 0
    private var leaderToken: UInt64?
    private var nextConnectAttempt: Instant
    private var connectBackoff = 0.1
    private let rendezvousDeadline: Instant
    private var commands: [ClusterCommand] = []
    private var warned: Set<String> = []
    private var leaderLost = false
    private var readBuffer = [UInt8](repeating: 0, count: ClusterConnection.readSize)
    private lazy var batchWriter = BatchWriter()

    struct CommitFailure: Error {
        let reason: String
    }

    var heartbeatInterval: Double { max(0.05, settings.heartbeatTimeout / 5) }

    init(
        settings: Settings, join: ClusterJoin, runID: String, record: String?, policy: ClusterLeader.Policy,
        loop: EventLoop, now: Instant, report: @escaping (String) -> Void
    ) throws(SystemError) {
        self.settings = settings
        self.join = join
        self.loop = loop
        self.report = report
        nextConnectAttempt = now
        rendezvousDeadline = now + settings.rendezvousTimeout
        if settings.nodeRank == 0 {
            listener = try ClusterSocket.listen(port: settings.rendezvousPort)
            do {
                try loop.register(listener, token: Self.listenerToken)
            } catch {
                throw SystemError("epoll_ctl(ADD)", errno: EINVAL)
            }
            leader = ClusterLeader(leader: join, runID: runID, record: record, policy: policy, now: now)
            report("leader: waiting for \(settings.nodeCount - 1) node(s) at port \(settings.rendezvousPort)")
        }
    }

    /// The commands for this node since the last call, in order.
    func takeCommands() -> [ClusterCommand] {
        defer { commands = [] }
        return commands
    }

    /// Whether every node of the job has finished or was lost (the leader waits for that).
    var allEnded: Bool { leader?.allEnded ?? true }

    /// On the leader: why the job failed (a node lost, a rank failed), if it did.
    var jobFailure: String? { leader?.failure }

    var nextDeadline: Instant {
        var earliest = Instant.seconds(Double(Int32.max))
        func consider(_ instant: Instant?) {
            if let instant, instant < earliest { earliest = instant }
        }
        if outcome == .gathering && !isLeader && leaderToken == nil { consider(nextConnectAttempt) }
        consider(leader?.nextDeadline)
        for connection in connections.values {
            consider(connection.lastSent + heartbeatInterval)
            consider(connection.lastHeard + (connection.isEstablished ? settings.heartbeatTimeout : Self.handshakeTimeout))
        }
        return earliest
    }

    var hasQueued: Bool { connections.values.contains(where: \.hasQueued) }

    // MARK: - Input

    func handle(token: UInt64, now: Instant) {
        clockNow = now
        if token == Self.listenerToken {
            acceptConnections(now: now)
            return
        }
        guard let connection = connections[token] else { return }
        switch connection.read(now: now, into: &readBuffer) {
        case .payloads(let payloads):
            for payload in payloads { receive(payload, on: token, now: now) }
        case .closed(let reason, let kind):
            drop(token, reason: reason, kind: kind, now: now)
        }
    }

    private func acceptConnections(now: Instant) {
        for _ in 0..<16 {
            guard let (fd, peer) = ClusterSocket.accept(listener) else { return }
            if connections.values.filter({ $0.node == nil }).count >= Self.maximumUnproven {
                warnOnce("flood", "warning: leader: more than \(Self.maximumUnproven) connections are proving themselves at once; refusing more (from \(peer) first)")
                closeDescriptor(fd)
                continue
            }
            add(ClusterConnection(fd: fd, peer: peer, role: .leader, secret: settings.secret, now: now))
        }
    }

    @discardableResult
    private func add(_ connection: ClusterConnection) -> UInt64? {
        nextConnectionID += 1
        let token = Self.connectionTokenBit | nextConnectionID
        do {
            try loop.register(connection.fd, token: token)
        } catch {
            connection.close()
            return nil
        }
        connections[token] = connection
        return token
    }

    private func receive(_ payload: [UInt8], on token: UInt64, now: Instant) {
        guard let connection = connections[token] else { return }
        if isLeader {
            let message: ClusterNodeMessage
            do {
                message = try ClusterCoding.decodeNodeMessage(payload)
            } catch {
                warnOnce("malformed", "warning: leader: an authenticated message from \(connection.peer) is malformed (\(error)); ignored")
                return
            }
            if let node = connection.node {
                perform(leader!.received(message, from: node, now: now))
            } else if case .join(let join) = message {
                let actions = leader!.joined(join, now: now)
                let refusal = actions.lazy.compactMap { action -> String? in
                    switch action {
                    case .abort(let reason), .refuseJoin(let reason): return reason
                    default: return nil
                    }
                }.first
                if let refusal {
                    connection.send(ClusterCoding.encode(.refused(refusal)), now: now)
                    connection.drain(milliseconds: 500)
                    // It was told why; it holds no node rank, so nothing else is lost with it.
                    connections[token] = nil
                    loop.unregister(connection.fd)
                    connection.close()
                } else if leader!.joins[join.node] == join, tokenByNode[join.node] == nil {
                    connection.node = join.node
                    tokenByNode[join.node] = token
                }
                perform(actions)
            } else {
                warnOnce("nojoin", "warning: leader: \(connection.peer) sent \(message) before joining; dropped")
                drop(token, reason: "no join", now: now)
            }
        } else {
            let command: ClusterCommand
            do {
                command = try ClusterCoding.decodeCommand(payload)
            } catch {
                warnOnce("malformed", "warning: an authenticated message from the leader is malformed (\(error)); ignored")
                return
            }
            switch command {
            case .launch(let world, let record):
                // After the launch, a launch is a restart's relaunch.
                if outcome == .gathering { outcome = .launched(world, record: record) } else { commands.append(command) }
            case .refused(let reason):
                if outcome == .gathering { outcome = .refused(reason) }
            case .ping:
                break
            default:
                commands.append(command)
            }
        }
    }

    /// Closes a connection; `kind` is `reason` without its details, for the once-per-kind warnings.
    private func drop(_ token: UInt64, reason: String, kind: String? = nil, now: Instant) {
        guard let connection = connections.removeValue(forKey: token) else { return }
        loop.unregister(connection.fd)
        connection.close()
        if isLeader {
            if let node = connection.node {
                tokenByNode[node] = nil
                perform(leader!.lost(node: node, reason: reason, now: now))
            } else if connection.proven {
                // It holds the token: a leaked secret, or a coordinator of another version.
                warnOnce("unjoined:\(kind ?? reason)", "warning: leader: dropped a connection from \(connection.peer) that holds the job's token but did not join (\(reason))")
            } else {
                warnOnce("unproven:\(kind ?? reason)", "warning: leader: dropped a connection from \(connection.peer) that did not prove it holds the job's token (\(reason))")
            }
            return
        }
        leaderToken = nil
        switch outcome {
        case .gathering:
            if reason == "\(LinkRejection.wrongSecret)" {
                outcome = .refused("the leader at \(settings.rendezvousHost):\(settings.rendezvousPort) does not hold this node's job token (GRACEFUL_JOB_TOKEN or --token-file)")
            }
        case .launched:
            if !leaderLost {
                leaderLost = true
                commands.append(.nodeFailed("the leader (node 0) is gone: \(reason)"))
            }
        case .refused:
            break
        }
    }

    // MARK: - Output

    /// Says `message` to the leader (on node 0: to itself).
    func tell(_ message: ClusterNodeMessage, now: Instant) {
        clockNow = now
        if leader != nil {
            perform(leader!.received(message, from: 0, now: now))
            return
        }
        guard let token = leaderToken, let connection = connections[token] else { return }
        if !connection.send(ClusterCoding.encode(message), now: now) { drop(token, reason: "its connection broke", now: now) }
    }

    /// The leader's sends to other nodes are queued, not sent: `sendQueued()` sends them all at once.
    private func perform(_ actions: [ClusterLeader.Action]) {
        for action in actions {
            switch action {
            case .send(0, let command):
                commands.append(command)
            case .send(let node, let command):
                guard let token = tokenByNode[node], let connection = connections[token] else { continue }
                if !connection.queue(ClusterCoding.encode(command), now: clockNow) {
                    drop(token, reason: "stopped reading (its connection broke or its queue overflowed)", now: clockNow)
                }
            case .commit(let round, let step, let paths, let trigger):
                switch writeRecord?(step, paths, trigger) ?? .failure(CommitFailure(reason: "no writer")) {
                case .success(let record): perform(leader!.commitWritten(round: round, record: record, now: clockNow))
                case .failure(let failure): perform(leader!.commitFailed(round: round, reason: failure.reason, now: clockNow))
                }
            case .abort(let reason):
                outcome = .refused(reason)
            case .refuseJoin:
                break
            case .report(let line):
                report("\(line)")
            }
        }
        if isLeader, outcome == .gathering, leader!.phase == .running, case .launch(let world, let record)? = commands.first {
            commands.removeFirst()
            outcome = .launched(world, record: record)
        }
    }

    /// Sends what every connection has queued (the leader's commands to the other nodes, what a full
    /// socket left over), in one call where the kernel allows (`BatchWriter`): a node woken by the
    /// first frame must not delay the others'. The supervisor calls it once its own node stored a
    /// request in its doorbell and said so, before it wakes anything of its own, and after obeying
    /// the leader's commands; `tick` calls it too.
    func sendQueued() {
        let pending = connections.filter { $0.value.hasQueued }.map { ($0.key, $0.value) }
        guard !pending.isEmpty else { return }
        let results = batchWriter.write(pending.map { BatchWriter.Write(fd: $0.1.fd, bytes: $0.1.unsent) })
        for ((token, connection), result) in zip(pending, results) {
            if let sent = result {
                connection.sent(sent)
            } else {
                drop(token, reason: "its connection broke", now: clockNow)
            }
        }
    }

    /// The time of the input being handled: actions performed for it carry it.
    private var clockNow = Instant.seconds(0)

    // MARK: - Time

    func tick(now: Instant) {
        clockNow = now
        if !isLeader, outcome == .gathering, leaderToken == nil, now >= nextConnectAttempt { connectToLeader(now: now) }
        if leader != nil { perform(leader!.tick(now: now)) }
        keepAlive(now: now)
        sendQueued()
        for (token, connection) in connections {
            if carriesHeartbeats(connection) {
                if now.seconds(since: connection.lastHeard) >= settings.heartbeatTimeout {
                    drop(token, reason: "sent nothing for \(format(settings.heartbeatTimeout))s (--heartbeat-timeout)", now: now)
                }
            } else if isLeader && connection.node == nil && now.seconds(since: connection.openedAt) >= Self.handshakeTimeout {
                drop(token, reason: "it did not complete the handshake within \(format(Self.handshakeTimeout))s", now: now)
            }
        }
        if !isLeader, outcome == .gathering, now >= rendezvousDeadline {
            outcome = .refused("no launch from the leader at \(settings.rendezvousHost):\(settings.rendezvousPort) within \(format(settings.rendezvousTimeout))s (--rdzv-timeout)")
        }
    }

    private func connectToLeader(now: Instant) {
        do {
            let fd = try ClusterSocket.connect(host: settings.rendezvousHost, port: settings.rendezvousPort, timeoutMilliseconds: 1000)
            let connection = ClusterConnection(fd: fd, peer: "\(settings.rendezvousHost):\(settings.rendezvousPort)", role: .follower, secret: settings.secret, now: now)
            guard let token = add(connection) else { return }
            leaderToken = token
            connection.send(ClusterCoding.encode(.join(join)), now: now)
            connectBackoff = 0.1
        } catch {
            warnOnce("connect", "waiting for the leader at \(settings.rendezvousHost):\(settings.rendezvousPort) (\(error)); retrying until --rdzv-timeout")
            nextConnectAttempt = now + connectBackoff
            connectBackoff = min(2, connectBackoff * 2)
        }
    }

    /// While this node starts its ranks (seconds, for hundreds of them), its event loop waits: the
    /// heartbeats due go out meanwhile, so that no other node judges it lost.
    func keepAlive(now: Instant) {
        clockNow = now
        for (token, connection) in connections where carriesHeartbeats(connection) {
            let ping = isLeader ? ClusterCoding.encode(ClusterCommand.ping) : ClusterCoding.encode(ClusterNodeMessage.ping)
            if now >= connection.lastSent + heartbeatInterval, !connection.send(ping, now: now) {
                drop(token, reason: "its connection broke", now: now)
            }
        }
    }

    /// A link to the leader, or to a node that joined: one a stranger still proving itself is not.
    private func carriesHeartbeats(_ connection: ClusterConnection) -> Bool {
        connection.isEstablished && (connection.node != nil || !isLeader)
    }

    /// Sends what is queued, waiting up to `milliseconds` (the last words before exiting).
    func drain(milliseconds: Int32) {
        for connection in connections.values { connection.drain(milliseconds: milliseconds) }
    }

    func close() {
        for connection in connections.values {
            loop.unregister(connection.fd)
            connection.close()
        }
        connections = [:]
        if listener >= 0 {
            loop.unregister(listener)
            closeDescriptor(listener)
            listener = -1
        }
    }

    private func warnOnce(_ kind: String, _ line: String) {
        if warned.insert(kind).inserted { report(line) }
    }
}
