import GracefulProtocol

/// The content of `<run-dir>/last_checkpoint.json`: the last step every rank checkpointed and
/// confirmed, so the next launch resumes every rank from the same step.
public struct CommitRecord: Equatable, Sendable {
    public static let fileName = "last_checkpoint.json"
    public static let formatVersion = 1

    public var runID: String
    public var step: Int
    /// Each rank's checkpoint path, indexed by rank (`nil` for a rank that does not speak the protocol).
    public var paths: [String?]
    public var trigger: String
    /// UTC, ISO 8601, seconds.
    public var time: String

    public var worldSize: Int { paths.count }

    public init(runID: String, step: Int, paths: [String?], trigger: String, time: String) {
        self.runID = runID
        self.step = step
        self.paths = paths
        self.trigger = trigger
        self.time = time
    }

    /// Pretty JSON with a final newline.
    public var json: String {
        let ranks = paths.enumerated().map { rank, path in
            "    {\"rank\": \(rank), \"path\": \(JSONEncoding.string(path))}"
        }
        return """
        {
          "version": \(Self.formatVersion),
          "run_id": \(JSONEncoding.quoted(runID)),
          "step": \(step),
          "world_size": \(worldSize),
          "trigger": \(JSONEncoding.quoted(trigger)),
          "time": \(JSONEncoding.quoted(time)),
          "ranks": [
        \(ranks.joined(separator: ",\n"))
          ]
        }

        """
    }

    /// Why a record on disk cannot be used.
    public struct DecodingError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    /// Reads a record written by `json`; a record from a newer version, or anything malformed, is refused.
    public init(contents: some Collection<UInt8>) throws(DecodingError) {
        let value: JSONValue
        do {
            value = try JSONParser.parse(contents)
        } catch {
            throw DecodingError(description: "not valid JSON (\(error))")
        }
        guard case .object = value else { throw DecodingError(description: "not a JSON object") }
        guard let version = value["version"]?.intValue else { throw DecodingError(description: "no \"version\"") }
        guard version == Self.formatVersion else {
            throw DecodingError(description: "format version \(version); this graceful reads version \(Self.formatVersion)")
        }
        guard let step = value["step"]?.intValue else { throw DecodingError(description: "no integer \"step\"") }
        guard let worldSize = value["world_size"]?.intValue, worldSize > 0 else {
            throw DecodingError(description: "no positive \"world_size\"")
        }
        guard case .array(let entries)? = value["ranks"], entries.count == worldSize else {
            throw DecodingError(description: "\"ranks\" does not list \(worldSize) ranks")
        }
        var paths = [String?](repeating: nil, count: worldSize)
        for entry in entries {
            guard let rank = entry["rank"]?.intValue, paths.indices.contains(rank) else {
                throw DecodingError(description: "a rank entry without a valid \"rank\"")
            }
            switch entry["path"] {
            case .some(.string(let path)): paths[rank] = path
            case .some(.null), .none: paths[rank] = nil
            default: throw DecodingError(description: "rank \(rank) has a \"path\" that is not a string")
            }
        }
        self.init(
            runID: value["run_id"]?.stringValue ?? "",
            step: step,
            paths: paths,
            trigger: value["trigger"]?.stringValue ?? "",
            time: value["time"]?.stringValue ?? "")
    }
}
