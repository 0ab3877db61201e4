/// The version of docs/PROTOCOL.md these types implement.
public let gracefulProtocolVersion = 1

/// The longest line either side accepts on a channel, newline excluded.
public let maximumMessageLength = 65_536

/// The largest step, position, id, protocol version or pid a message may carry: 2^53 − 1, the largest
/// integer every JSON implementation holds exactly.
public let maximumMessageInteger = 9_007_199_254_740_991

/// Steps and positions: 0 up to `maximumMessageInteger`.
public let stepRange = 0...maximumMessageInteger

/// Ids (and protocol versions, pids): 1 up to `maximumMessageInteger`.
public let idRange = 1...maximumMessageInteger

/// Why a line on a channel is not a valid message.
public enum MessageError: Error, Equatable, Sendable, CustomStringConvertible {
    case notJSON(String)
    case notAnObject
    case missingType
    case unknownType(String)
    case badField(type: String, field: String)

    public var description: String {
        switch self {
        case .notJSON(let reason): return "not JSON (\(reason))"
        case .notAnObject: return "not a JSON object"
        case .missingType: return "no string field \"type\""
        case .unknownType(let type): return "unknown message type \"\(type)\""
        case .badField(let type, let field): return "\"\(type)\" message with a missing or invalid \"\(field)\""
        }
    }
}

/// Reads the object and its `type` out of one line.
private func object(from line: some Collection<UInt8>) throws(MessageError) -> (String, JSONValue) {
    let value: JSONValue
    do {
        value = try JSONParser.parse(line)
    } catch {
        throw .notJSON(error.description)
    }
    guard case .object = value else { throw .notAnObject }
    guard let type = value["type"]?.stringValue else { throw .missingType }
    return (type, value)
}

/// An integer field within `range`, or `nil` for JSON null; anything else (or absence) is invalid.
private func optionalInt(
    _ value: JSONValue, _ type: String, _ field: String, in range: ClosedRange<Int> = stepRange
) throws(MessageError) -> Int? {
    guard let raw = value[field] else { throw .badField(type: type, field: field) }
    if raw.isNull { return nil }
    guard let number = raw.intValue, range.contains(number) else { throw .badField(type: type, field: field) }
    return number
}

private func requiredInt(
    _ value: JSONValue, _ type: String, _ field: String, in range: ClosedRange<Int> = stepRange
) throws(MessageError) -> Int {
    guard let number = try optionalInt(value, type, field, in: range) else { throw .badField(type: type, field: field) }
    return number
}

/// What a rank sends to the coordinator.
public enum RankMessage: Equatable, Sendable {
    /// The rank speaks the protocol.
    case hello(protocolVersion: Int, pid: Int)
    /// The rank's last step boundary when stop request `id` arrived (`nil`: none yet).
    case position(id: Int, step: Int?)
    /// The rank saved its state after `step` at `path`.
    case checkpointed(step: Int, path: CheckpointPath?)

    /// One line of JSON, newline included.
    public var line: String {
        switch self {
        case .hello(let version, let pid):
            return "{\"type\":\"hello\",\"protocol\":\(version),\"pid\":\(pid)}\n"
        case .position(let id, let step):
            return "{\"type\":\"position\",\"id\":\(id),\"step\":\(JSONEncoding.number(step))}\n"
        case .checkpointed(let step, let path):
            return "{\"type\":\"checkpointed\",\"step\":\(step),\"path\":\(JSONEncoding.path(path))}\n"
        }
    }

    /// Decodes one line (without its newline).
    public init(line: some Collection<UInt8>) throws(MessageError) {
        let (type, value) = try object(from: line)
        switch type {
        case "hello":
            self = .hello(
                protocolVersion: try requiredInt(value, type, "protocol", in: idRange),
                pid: try requiredInt(value, type, "pid", in: idRange))
        case "position":
            self = .position(id: try requiredInt(value, type, "id", in: idRange), step: try optionalInt(value, type, "step"))
        case "checkpointed":
            let path: CheckpointPath?
            switch value["path"] {
            case .none, .some(.null): path = nil
            case .some(let raw):
                // NUL, an empty string or a lone surrogate no byte stands for: never a confirmation.
                guard let decoded = CheckpointPath(json: raw) else { throw .badField(type: type, field: "path") }
                path = decoded
            }
            self = .checkpointed(step: try requiredInt(value, type, "step"), path: path)
        default:
            throw .unknownType(type)
        }
    }
}

/// What the coordinator sends to a rank.
public enum CoordinatorMessage: Equatable, Sendable {
    /// Stop request `id`, caused by `trigger`; answer with `position` at once.
    case stop(id: Int, trigger: String)
    /// The stop step for request `id` (`nil`: stop at the next boundary).
    case stopAt(id: Int, step: Int?)
    /// Checkpoint request `id` (save at one aligned step and keep training); answer with `position`.
    case checkpoint(id: Int, trigger: String)
    /// The checkpoint step for request `id` (`nil`: at the next boundary).
    case checkpointAt(id: Int, step: Int?)
    /// The coordinator recorded `step` as the consistent checkpoint.
    case committed(step: Int)

    /// One line of JSON, newline included.
    public var line: String {
        switch self {
        case .stop(let id, let trigger):
            return "{\"type\":\"stop\",\"id\":\(id),\"trigger\":\(JSONEncoding.quoted(trigger))}\n"
        case .stopAt(let id, let step):
            return "{\"type\":\"stop_at\",\"id\":\(id),\"step\":\(JSONEncoding.number(step))}\n"
        case .checkpoint(let id, let trigger):
            return "{\"type\":\"checkpoint\",\"id\":\(id),\"trigger\":\(JSONEncoding.quoted(trigger))}\n"
        case .checkpointAt(let id, let step):
            return "{\"type\":\"checkpoint_at\",\"id\":\(id),\"step\":\(JSONEncoding.number(step))}\n"
        case .committed(let step):
            return "{\"type\":\"committed\",\"step\":\(step)}\n"
        }
    }

    /// Decodes one line (without its newline).
    public init(line: some Collection<UInt8>) throws(MessageError) {
        let (type, value) = try object(from: line)
        switch type {
        case "stop":
            guard let trigger = value["trigger"]?.stringValue else { throw .badField(type: type, field: "trigger") }
            self = .stop(id: try requiredInt(value, type, "id", in: idRange), trigger: trigger)
        case "stop_at":
            self = .stopAt(id: try requiredInt(value, type, "id", in: idRange), step: try optionalInt(value, type, "step"))
        case "checkpoint":
            guard let trigger = value["trigger"]?.stringValue else { throw .badField(type: type, field: "trigger") }
            self = .checkpoint(id: try requiredInt(value, type, "id", in: idRange), trigger: trigger)
        case "checkpoint_at":
            self = .checkpointAt(id: try requiredInt(value, type, "id", in: idRange), step: try optionalInt(value, type, "step"))
        case "committed":
            self = .committed(step: try requiredInt(value, type, "step"))
        default:
            throw .unknownType(type)
        }
    }
}
