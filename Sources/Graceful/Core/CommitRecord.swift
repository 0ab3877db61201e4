import Glibc
import GracefulProtocol

/// The content of `<run-dir>/last_checkpoint.json`: the last step every rank checkpointed and
/// confirmed, so the next launch resumes every rank from the same step.
public struct CommitRecord: Equatable, Sendable {
    public static let fileName = "last_checkpoint.json"
    /// Where the record of a completed run is kept when the next launch starts from scratch.
    public static let completedFileName = "last_checkpoint.completed.json"
    public static let formatVersion = 1

    public var runID: String
    public var step: Int
    /// Each rank's checkpoint path, indexed by rank (`nil` for a rank that does not speak the protocol).
    public var paths: [CheckpointPath?]
    public var trigger: String
    /// UTC, ISO 8601, seconds.
    public var time: String
    /// The coordinator's working directory at the commit, which the ranks shared: what relative paths
    /// are relative to (nil in a record written before it was recorded).
    public var directory: CheckpointPath?
    /// When every rank finished its work after this commit (UTC, ISO 8601): the record is no longer
    /// a point to resume from, and the next launch starts from scratch.
    public var completed: String?

    public var worldSize: Int { paths.count }

    public init(
        runID: String, step: Int, paths: [CheckpointPath?], trigger: String, time: String,
        directory: CheckpointPath? = nil, completed: String? = nil
    ) {
        self.runID = runID
        self.step = step
        self.paths = paths
        self.trigger = trigger
        self.time = time
        self.directory = directory
        self.completed = completed
    }

    /// Rank `rank`'s checkpoint as a path that works from any directory: a relative one joined to
    /// the directory it was committed from.
    public func resumePath(rank: Int) -> CheckpointPath? {
        guard rank < paths.count, let path = paths[rank] else { return nil }
        guard path.bytes.first != UInt8(ascii: "/"), let directory else { return path }
        return CheckpointPath(bytes: directory.bytes + [UInt8(ascii: "/")] + path.bytes)
    }

    /// Pretty JSON with a final newline; paths as the protocol writes them (docs/PROTOCOL.md, "Paths").
    public var json: String {
        let ranks = paths.enumerated().map { rank, path in
            "    {\"rank\": \(rank), \"path\": \(JSONEncoding.path(path))}"
        }
        return """
        {
          "version": \(Self.formatVersion),
          "run_id": \(JSONEncoding.quoted(runID)),
          "step": \(step),
          "world_size": \(worldSize),
          "trigger": \(JSONEncoding.quoted(trigger)),
          "time": \(JSONEncoding.quoted(time)),
          "directory": \(JSONEncoding.path(directory)),
          "completed": \(completed.map(JSONEncoding.quoted) ?? "null"),
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
        guard let step = value["step"]?.intValue, stepRange.contains(step) else {
            throw DecodingError(description: "no integer \"step\" from 0 to \(maximumMessageInteger)")
        }
        guard let worldSize = value["world_size"]?.intValue, worldSize > 0 else {
            throw DecodingError(description: "no positive \"world_size\"")
        }
        guard case .array(let entries)? = value["ranks"], entries.count == worldSize else {
            throw DecodingError(description: "\"ranks\" does not list \(worldSize) ranks")
        }
        var paths = [CheckpointPath?](repeating: nil, count: worldSize)
        var listed = Set<Int>()
        for entry in entries {
            guard let rank = entry["rank"]?.intValue, paths.indices.contains(rank) else {
                throw DecodingError(description: "a rank entry without a valid \"rank\"")
            }
            // Listed twice, another rank is missing: it would resume with no path, or with another's.
            guard listed.insert(rank).inserted else {
                throw DecodingError(description: "rank \(rank) is listed twice in \"ranks\"")
            }
            switch entry["path"] {
            case .some(.null), .none: paths[rank] = nil
            case .some(let raw):
                guard let path = CheckpointPath(json: raw) else {
                    throw DecodingError(description: "rank \(rank) has a \"path\" that is not a path")
                }
                paths[rank] = path
            }
        }
        var directory: CheckpointPath?
        if let raw = value["directory"], !raw.isNull {
            guard let path = CheckpointPath(json: raw), path.bytes.first == UInt8(ascii: "/") else {
                throw DecodingError(description: "\"directory\" is not an absolute path")
            }
            directory = path
        }
        // A completed run is never resumed: a marker of another type must not read as "not completed".
        if let raw = value["completed"], !raw.isNull, raw.stringValue == nil {
            throw DecodingError(description: "\"completed\" is neither a time nor null")
        }
        self.init(
            runID: value["run_id"]?.stringValue ?? "",
            step: step,
            paths: paths,
            trigger: value["trigger"]?.stringValue ?? "",
            time: value["time"]?.stringValue ?? "",
            directory: directory,
            completed: value["completed"]?.stringValue)
    }

    /// Why the record at a path cannot be used.
    public enum LoadError: Error, CustomStringConvertible {
        /// A symbolic link whose target does not exist: a record that was there is missing, which is
        /// not the same as nothing ever committed.
        case danglingSymbolicLink(target: String)
        case unreadable(SystemError)
        case malformed(DecodingError)

        public var description: String {
            switch self {
            case .danglingSymbolicLink(let target): return "dangling symbolic link to \(target)"
            case .unreadable(let error): return "\(error)"
            case .malformed(let error): return "\(error)"
            }
        }
    }

    /// The record at `path`; nil only when nothing at all is there (not even a symbolic link).
    public static func load(from path: String) throws(LoadError) -> CommitRecord? {
        var info = stat()
        if lstat(path, &info) != 0 {
            if errno == ENOENT { return nil }
            throw .unreadable(SystemError("lstat \(path)"))
        }
        let contents: [UInt8]?
        do {
            contents = try AtomicFile.read(path)
        } catch {
            throw .unreadable(error)
        }
        guard let contents else {
            // Gone since lstat, or a link that points nowhere.
            guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFLNK else { return nil }
            throw .danglingSymbolicLink(target: linkTarget(path))
        }
        do {
            return try CommitRecord(contents: contents)
        } catch {
            throw .malformed(error)
        }
    }

    private static func linkTarget(_ path: String) -> String {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBufferPointer { raw in
            raw.withMemoryRebound(to: CChar.self) { readlink(path, $0.baseAddress!, $0.count) }
        }
        return count > 0 ? CheckpointPath(bytes: buffer[0..<count])?.description ?? "" : ""
    }
}
