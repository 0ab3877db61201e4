import GracefulProtocol

/// What a node's coordinator tells the leader (docs/PROTOCOL.md, "Between coordinators").
public enum ClusterNodeMessage: Equatable, Sendable {
    case join(ClusterJoin)
    /// A stop trigger seen on the node (its signals, already debounced there, or its control file).
    case trigger(Trigger)
    case checkpointRequest(String)
    case position(round: Int, furthest: Int?)
    /// Every rank of the node confirmed `step`; its ranks' paths in local rank order.
    case confirmed(round: Int, step: Int, paths: [CheckpointPath?])
    case roundFailed(round: Int, String)
    case rankFailed(String)
    /// Every process of the node's ranks is gone, for the job's restart `restart` (`.restart`).
    case cleared(restart: Int)
    /// Every rank of the node ended; the node's coordinator exits with `exitCode`.
    case finished(exitCode: Int32)
    case ping
}

/// What the leader tells a node's coordinator.
public enum ClusterCommand: Equatable, Sendable {
    /// Every node joined and agrees: launch. `record` is the leader's commit record (JSON), which
    /// every node resumes from. Also the relaunch of a restart (`world.restart` above 0).
    case launch(ClusterWorld, record: String?)
    /// The job restarts from its last commit (restart `restart` of `maxRestarts`): tear the ranks
    /// down, then say `cleared`; the relaunch comes as `.launch` once every node did.
    case restart(restart: Int, maxRestarts: Int, reason: String)
    /// The job is refused before launch; one line saying why, naming the node at fault.
    case refused(String)
    case stop(round: Int, Trigger)
    case checkpoint(round: Int, trigger: String)
    /// A repeated stop signal on some node: the whole job escalates.
    case escalate(Trigger)
    case step(round: Int, step: Int?)
    /// The leader committed `record` (JSON): every node keeps a copy.
    case committed(round: Int, record: String)
    case roundFailed(round: Int, String)
    case nodeFailed(String)
    case ping
}

/// The JSON of the messages between coordinators: one object per link frame.
enum ClusterCoding {
    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    static func encode(_ message: ClusterNodeMessage) -> [UInt8] {
        var fields: [(String, String)]
        switch message {
        case .join(let join):
            let commit = join.commit.map { "{\"run\":\(JSONEncoding.quoted($0.runID)),\"step\":\($0.step)}" } ?? "null"
            fields = [("type", q("join")), ("node", "\(join.node)"), ("nodes", "\(join.nodeCount)"),
                      ("ranks", "\(join.localRanks)"), ("command", array(join.command.map(JSONEncoding.quoted))),
                      ("commit", commit), ("host", q(join.host))]
        case .trigger(let trigger):
            fields = [("type", q("trigger"))] + triggerFields(trigger)
        case .checkpointRequest(let trigger):
            fields = [("type", q("checkpoint-request")), ("trigger", q(trigger))]
        case .position(let round, let furthest):
            fields = [("type", q("position")), ("round", "\(round)"), ("furthest", JSONEncoding.number(furthest))]
        case .confirmed(let round, let step, let paths):
            fields = [("type", q("confirmed")), ("round", "\(round)"), ("step", "\(step)"),
                      ("paths", array(paths.map(JSONEncoding.path)))]
        case .roundFailed(let round, let reason):
            fields = [("type", q("round-failed")), ("round", "\(round)"), ("reason", q(reason))]
        case .rankFailed(let reason):
            fields = [("type", q("rank-failed")), ("reason", q(reason))]
        case .cleared(let restart):
            fields = [("type", q("cleared")), ("restart", "\(restart)")]
        case .finished(let code):
            fields = [("type", q("finished")), ("code", "\(code)")]
        case .ping:
            fields = [("type", q("ping"))]
        }
        return object(fields)
    }

    static func encode(_ command: ClusterCommand) -> [UInt8] {
        var fields: [(String, String)]
        switch command {
        case .launch(let world, let record):
            fields = [("type", q("launch")), ("run", q(world.runID)), ("nodes", "\(world.nodeCount)"),
                      ("ranks", "\(world.localRanks)"), ("restart", "\(world.restart)"), ("record", JSONEncoding.string(record))]
        case .restart(let restart, let maxRestarts, let reason):
            fields = [("type", q("restart")), ("restart", "\(restart)"), ("max_restarts", "\(maxRestarts)"), ("reason", q(reason))]
        case .refused(let reason):
            fields = [("type", q("refused")), ("reason", q(reason))]
        case .stop(let round, let trigger):
            fields = [("type", q("stop")), ("round", "\(round)")] + triggerFields(trigger)
        case .checkpoint(let round, let trigger):
            fields = [("type", q("checkpoint")), ("round", "\(round)"), ("trigger", q(trigger))]
        case .escalate(let trigger):
            fields = [("type", q("escalate"))] + triggerFields(trigger)
        case .step(let round, let step):
            fields = [("type", q("step")), ("round", "\(round)"), ("step", JSONEncoding.number(step))]
        case .committed(let round, let record):
            fields = [("type", q("committed")), ("round", "\(round)"), ("record", q(record))]
        case .roundFailed(let round, let reason):
            fields = [("type", q("round-failed")), ("round", "\(round)"), ("reason", q(reason))]
        case .nodeFailed(let reason):
            fields = [("type", q("node-failed")), ("reason", q(reason))]
        case .ping:
            fields = [("type", q("ping"))]
        }
        return object(fields)
    }

    static func decodeNodeMessage(_ bytes: [UInt8]) throws(Malformed) -> ClusterNodeMessage {
        let value = try parse(bytes)
        switch try string(value, "type") {
        case "join":
            guard let commandValues = value["command"], case .array(let items) = commandValues else {
                throw Malformed(description: "join without a command")
            }
            var command: [String] = []
            for item in items {
                guard let text = item.stringValue else { throw Malformed(description: "join with a command that is not strings") }
                command.append(text)
            }
            var commit: ClusterJoin.Commit?
            if let commitValue = value["commit"], !commitValue.isNull {
                commit = .init(runID: try string(commitValue, "run"), step: try integer(commitValue, "step"))
            }
            return .join(ClusterJoin(
                node: try integer(value, "node"), nodeCount: try integer(value, "nodes"), localRanks: try integer(value, "ranks"),
                command: command, commit: commit, host: try string(value, "host")))
        case "trigger": return .trigger(try trigger(value))
        case "checkpoint-request": return .checkpointRequest(try string(value, "trigger"))
        case "position": return .position(round: try integer(value, "round"), furthest: try optionalInteger(value, "furthest"))
        case "confirmed":
            guard let pathValues = value["paths"], case .array(let items) = pathValues else {
                throw Malformed(description: "confirmed without paths")
            }
            var paths: [CheckpointPath?] = []
            for item in items {
                if item.isNull {
                    paths.append(nil)
                } else if let path = CheckpointPath(json: item) {
                    paths.append(path)
                } else {
                    throw Malformed(description: "confirmed with a path that is not one")
                }
            }
            return .confirmed(round: try integer(value, "round"), step: try integer(value, "step"), paths: paths)
        case "round-failed": return .roundFailed(round: try integer(value, "round"), try string(value, "reason"))
        case "rank-failed": return .rankFailed(try string(value, "reason"))
        case "cleared": return .cleared(restart: try integer(value, "restart"))
        case "finished": return .finished(exitCode: Int32(clamping: try integer(value, "code")))
        case "ping": return .ping
        case let other: throw Malformed(description: "unknown message type '\(other)'")
        }
    }

    static func decodeCommand(_ bytes: [UInt8]) throws(Malformed) -> ClusterCommand {
        let value = try parse(bytes)
        switch try string(value, "type") {
        case "launch":
            let record = value["record"].flatMap { $0.isNull ? nil : $0.stringValue }
            return .launch(ClusterWorld(runID: try string(value, "run"), nodeCount: try integer(value, "nodes"),
                                        localRanks: try integer(value, "ranks"), restart: try integer(value, "restart")), record: record)
        case "restart":
            return .restart(restart: try integer(value, "restart"), maxRestarts: try integer(value, "max_restarts"), reason: try string(value, "reason"))
        case "refused": return .refused(try string(value, "reason"))
        case "stop": return .stop(round: try integer(value, "round"), try trigger(value))
        case "checkpoint": return .checkpoint(round: try integer(value, "round"), trigger: try string(value, "trigger"))
        case "escalate": return .escalate(try trigger(value))
        case "step": return .step(round: try integer(value, "round"), step: try optionalInteger(value, "step"))
        case "committed": return .committed(round: try integer(value, "round"), record: try string(value, "record"))
        case "round-failed": return .roundFailed(round: try integer(value, "round"), try string(value, "reason"))
        case "node-failed": return .nodeFailed(try string(value, "reason"))
        case "ping": return .ping
        case let other: throw Malformed(description: "unknown command type '\(other)'")
        }
    }

    // MARK: - Pieces

    private static func q(_ text: String) -> String { JSONEncoding.quoted(text) }

    private static func array(_ items: [String]) -> String { "[" + items.joined(separator: ",") + "]" }

    private static func object(_ fields: [(String, String)]) -> [UInt8] {
        Array(("{" + fields.map { "\(q($0.0)):\($0.1)" }.joined(separator: ",") + "}").utf8)
    }

    private static func triggerFields(_ trigger: Trigger) -> [(String, String)] {
        switch trigger {
        case .controlFile: return [("trigger", q("control-file"))]
        case .signal(let number): return [("trigger", q("signal")), ("signal", "\(number)")]
        case .quit(let number): return [("trigger", q("quit")), ("signal", "\(number)")]
        }
    }

    private static func trigger(_ value: JSONValue) throws(Malformed) -> Trigger {
        switch try string(value, "trigger") {
        case "control-file": return .controlFile
        case "signal": return .signal(try signalNumber(value))
        case "quit": return .quit(try signalNumber(value))
        case let other: throw Malformed(description: "unknown trigger '\(other)'")
        }
    }

    private static func signalNumber(_ value: JSONValue) throws(Malformed) -> Int32 {
        let number = try integer(value, "signal")
        guard (1...64).contains(number) else { throw Malformed(description: "signal \(number) out of range") }
        return Int32(number)
    }

    private static func parse(_ bytes: [UInt8]) throws(Malformed) -> JSONValue {
        do {
            return try JSONParser.parse(bytes)
        } catch {
            throw Malformed(description: "not JSON: \(error)")
        }
    }

    private static func string(_ value: JSONValue, _ key: String) throws(Malformed) -> String {
        guard let text = value[key]?.stringValue else { throw Malformed(description: "no string '\(key)'") }
        return text
    }

    private static func integer(_ value: JSONValue, _ key: String) throws(Malformed) -> Int {
        guard let number = value[key]?.intValue, number >= 0, number <= maximumMessageInteger else {
            throw Malformed(description: "no integer '\(key)' in 0...2^53-1")
        }
        return number
    }

    private static func optionalInteger(_ value: JSONValue, _ key: String) throws(Malformed) -> Int? {
        guard let field = value[key], !field.isNull else { return nil }
        return try integer(value, key)
    }
}
