import Glibc
import GracefulProtocol

/// The queue's files on a directory several hosts may share (README, "graceful queue", has the
/// layout). Every change is one operation that is atomic on NFS as on a local disk: a file appears
/// complete through `link(2)` of a temporary written in full and closed first (which fails if the
/// name exists, so exactly one of several creators wins); a lease is renewed by setting the claim's
/// modification time. No lock is ever held.
///
/// What must survive a crash of the machine (or of the file server) is fsynced, and only that
/// (`Durability`): a task's outcome and the definition, content and name; an attempt's end, its
/// content; a claim, nothing (its holder dies with the machine, and the claim, lost or left empty,
/// is taken back like any claim whose holder is gone).
final class QueueDirectory {
    let path: String
    let hostID: String
    /// The definition, as read from (or written to) `queue.json`.
    private(set) var definition: QueueDefinition
    /// Files never change once they exist (only a claim's time does): what was parsed is kept.
    private var parsedClaims: [String: ParsedClaim] = [:]
    private var parsedEnds: [String: TaskFiles.AttemptEnd] = [:]
    private var outcomes: [String: TaskFiles.Outcome] = [:]

    /// Why the queue cannot be used; each is one line for the user.
    enum Failure: Error, CustomStringConvertible {
        /// Not a queue, another definition, a corrupted file (exit 65).
        case data(String)
        case system(SystemError)
        var description: String {
            switch self {
            case .data(let message): return message
            case .system(let error): return "\(error)"
            }
        }
    }

    /// How much of a new file must survive a crash of the machine.
    enum Durability {
        /// Nothing: a claim. Its holder dies with the machine; a claim lost in the crash means the
        /// task is claimed again, one left empty or incomplete is a claim by an unknown holder,
        /// taken back when its lease runs out. Either way no fsync holds up the claiming worker.
        case none
        /// The content, fsynced before the link: an attempt's end. Its name may be lost with the
        /// machine (the claim then looks open, and its holder is gone with the machine: the lease
        /// takes it back; a lost failure is one failed attempt forgiven), but never found empty.
        case content
        /// The content, then the name (the directory fsynced): a task's outcome, the definition.
        case contentAndName
    }

    private init(path: String, hostID: String, definition: QueueDefinition) {
        self.path = path
        self.hostID = hostID
        self.definition = definition
    }

    /// Opens the queue at `path`; with a `definition`, creates it first when there is none, and
    /// refuses a queue made by another definition. Without one, the queue must exist.
    /// A `command`, when given, must be the queue's.
    static func open(_ path: String, hostID: String, definition: QueueDefinition?, command: [String]? = nil) throws(Failure) -> QueueDirectory {
        let file = path + "/queue.json"
        if let definition { try create(path, definition: definition) }
        let existing = try readDefinition(file)
        if let definition, existing != definition {
            throw .data("\(path) is a queue of another definition (its queue.json has \(existing.tasks.count) tasks of '\(existing.command.joined(separator: " "))'); use another directory, or run without --grid/--tasks to join it")
        }
        if let command, !command.isEmpty, command != existing.command {
            throw .data("\(path) is a queue of another command ('\(existing.command.joined(separator: " "))'); give the same command, or none, to join it")
        }
        return QueueDirectory(path: path, hostID: hostID, definition: existing)
    }

    private static func readDefinition(_ file: String) throws(Failure) -> QueueDefinition {
        let contents: [UInt8]?
        do { contents = try AtomicFile.read(file) } catch { throw .system(error) }
        guard let contents else {
            throw .data("\(AtomicFile.parentDirectory(of: file)) is not a queue (it has no queue.json); create one with --grid or --tasks")
        }
        do { return try QueueDefinition.decode(contents) } catch { throw .data("\(file): \(error)") }
    }

    /// Makes the directory and links `queue.json` into it, unless a queue is already there. A
    /// directory holding anything else is refused, so no stray directory becomes a queue.
    private static func create(_ path: String, definition: QueueDefinition) throws(Failure) {
        do { try makeDirectories(path) } catch { throw .system(error) }
        var info = stat()
        if stat(path + "/queue.json", &info) == 0 { return }
        let strangers = entries(of: path).filter { !$0.hasPrefix("queue.json.tmp.") }
        guard strangers.isEmpty else {
            throw .data("\(path) is not a queue (no queue.json) and not empty (it has \(strangers.sorted().prefix(3).joined(separator: ", "))); give an empty or new directory")
        }
        do {
            _ = try linkNew(Array(definition.encoded.utf8), at: path + "/queue.json", durability: .contentAndName)
            for task in definition.tasks { try makeDirectories(path + "/tasks/" + task.id) }
        } catch { throw .system(error) }
    }

    // MARK: - Paths

    func taskDirectory(_ task: String) -> String { "\(path)/tasks/\(task)" }
    func claimPath(_ task: String, attempt: Int) -> String { "\(taskDirectory(task))/attempt_\(attempt).claim" }
    func copyPath(_ task: String, attempt: Int) -> String { "\(taskDirectory(task))/attempt_\(attempt).copy" }
    func endPath(_ task: String, attempt: Int) -> String { "\(taskDirectory(task))/attempt_\(attempt).end" }
    func resultPath(_ task: String, attempt: Int, copy: Bool) -> String {
        "\(taskDirectory(task))/attempt_\(attempt)\(copy ? ".copy" : "").result"
    }
    func outcomePath(_ task: String) -> String { "\(taskDirectory(task))/outcome.json" }
    func runDirectory(_ task: String, copy: Bool) -> String { "\(path)/runs/\(task)\(copy ? ".copy" : "")" }
    func logDirectory(_ task: String, attempt: Int, copy: Bool) -> String {
        "\(path)/logs/\(task)/attempt_\(attempt)\(copy ? ".copy" : "")"
    }

    // MARK: - Scanning

    /// Every task's files now.
    func scan() throws(Failure) -> [TaskFiles] {
        var result: [TaskFiles] = []
        for task in definition.tasks {
            result.append(try scan(task.id))
        }
        return result
    }

    func scan(_ task: String) throws(Failure) -> TaskFiles {
        if let outcome = outcomes[task] { return TaskFiles(id: task, outcome: outcome) }
        let directory = taskDirectory(task)
        let names = Self.entries(of: directory)
        if names.contains("outcome.json") {
            let outcome = try readOutcome(task)
            outcomes[task] = outcome.state
            return TaskFiles(id: task, outcome: outcome.state)
        }
        var claims: [TaskFiles.Claim] = []
        for name in names where name.hasPrefix("attempt_") && name.hasSuffix(".claim") {
            guard let attempt = Int(name.dropFirst(8).dropLast(6)), attempt > 0 else {
                throw .data("\(directory)/\(name): not a claim of this queue (corrupted?); move it away")
            }
            let file = "\(directory)/\(name)"
            var info = stat()
            // Gone since the listing: it cannot be, claims are never removed; a corrupted queue.
            guard stat(file, &info) == 0 else { throw .system(SystemError("stat \(file)")) }
            let holder = parsedClaim(file)
            let heartbeat = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
            var end: TaskFiles.AttemptEnd?
            if names.contains("attempt_\(attempt).end") { end = try parsedEnd(endPath(task, attempt: attempt)) }
            claims.append(TaskFiles.Claim(
                attempt: attempt, holder: holder.holder, host: holder.host, heartbeat: heartbeat,
                holderGone: holder.host == hostID && !isThisProcess(pid: holder.pid, start: holder.start)
                    && !Self.processAlive(pid: holder.pid, start: holder.start),
                end: end, copied: names.contains("attempt_\(attempt).copy"), takeover: holder.takeover))
        }
        return TaskFiles(id: task, claims: claims)
    }

    private typealias ParsedClaim = (holder: String, host: String, pid: Int32, start: UInt64, takeover: Bool)

    /// The holder a claim names. A claim is linked only once written in full and closed, so one
    /// that is empty or incomplete was cut short by a crash of the machine (claims are not fsynced,
    /// `Durability.none`): its holder is unknown, `?` on no host, and its lease decides (and the
    /// takeover it may have been is forgiven).
    private func parsedClaim(_ file: String) -> ParsedClaim {
        if let known = parsedClaims[file] { return known }
        var parsed = (holder: Self.unknownHolder, host: Self.unknownHolder, pid: Int32(0), start: UInt64(0), takeover: false)
        if let value = try? Self.readJSON(file), let holder = value["worker"]?.stringValue, let host = value["host"]?.stringValue,
           let pid = value["pid"]?.intValue, let start = value["start"]?.intValue {
            parsed = (holder, host, Int32(truncatingIfNeeded: pid), UInt64(max(0, start)), value["takeover"] != nil)
        }
        parsedClaims[file] = parsed
        return parsed
    }

    /// The holder and host of a claim a crash left without its content.
    static let unknownHolder = "?"

    /// Whether a claim's holder is this very process (alive, without reading /proc).
    private func isThisProcess(pid: Int32, start: UInt64) -> Bool {
        pid == getpid() && start == Self.ownStart
    }

    private func parsedEnd(_ file: String) throws(Failure) -> TaskFiles.AttemptEnd {
        if let known = parsedEnds[file] { return known }
        let value = try Self.readJSON(file)
        let end: TaskFiles.AttemptEnd
        switch value["outcome"]?.stringValue {
        case "failed"?: end = .failed(exit: value["exit"]?.intValue.map { Int32(truncatingIfNeeded: $0) })
        case "released"?: end = .released
        default: throw .data("\(file) is corrupted (not an attempt's end); move it away")
        }
        parsedEnds[file] = end
        return end
    }

    /// `outcome.json`: the state and the whole object (for `queue status`).
    func readOutcome(_ task: String) throws(Failure) -> (state: TaskFiles.Outcome, value: JSONValue) {
        let file = outcomePath(task)
        let value = try Self.readJSON(file)
        switch (value["state"]?.stringValue, value["attempt"]?.intValue, value["attempts"]?.intValue) {
        case ("finished"?, let attempt?, _): return (.finished(attempt: attempt), value)
        case ("failed"?, _, let attempts?): return (.failed(attempts: attempts), value)
        default: throw .data("\(file) is corrupted (not a task's outcome); move it away")
        }
    }

    /// The claim file's content, when it is a valid claim (for `queue status`).
    func claimDetails(_ task: String, attempt: Int) -> JSONValue? {
        try? Self.readJSON(claimPath(task, attempt: attempt))
    }

    private static func readJSON(_ file: String) throws(Failure) -> JSONValue {
        let contents: [UInt8]?
        do { contents = try AtomicFile.read(file, limit: 1 << 20) } catch { throw .system(error) }
        guard let contents else { throw .system(SystemError("open \(file)", errno: ENOENT)) }
        do { return try JSONParser.parse(contents) } catch { throw .data("\(file) is corrupted (\(error)); move it away") }
    }

    // MARK: - Changing

    /// Claims `attempt` of `task` (or a straggler copy of it): false when another worker has it.
    /// `takeover` names the previous attempt when its expired lease is taken back: the claim
    /// records it, and the task's lease expiries are counted from such claims.
    /// (`graceful-bench --only queue` times these same file operations as the claim latency.)
    func claim(_ task: String, attempt: Int, worker: String, copy: Bool, takeover: Int? = nil) throws(Failure) -> Bool {
        let file = copy ? copyPath(task, attempt: attempt) : claimPath(task, attempt: attempt)
        var info = stat()
        // Taken already (a race lost to another host, seen through a scan a moment old): no write.
        if stat(file, &info) == 0 { return false }
        let takeoverField = takeover.map { ", \"takeover\": \($0)" } ?? ""
        let content = "{\"worker\": \(JSONEncoding.quoted(worker)), \"host\": \(JSONEncoding.quoted(hostID)), \"pid\": \(getpid()), \"start\": \(Self.ownStart), \"claimed\": \(JSONEncoding.quoted(Supervisor.timestamp())), \"claimed_epoch\": \(time(nil))\(takeoverField)}\n"
        do {
            try Self.ensureDirectory(taskDirectory(task))
            return try Self.linkNew(Array(content.utf8), at: file, durability: .none)
        } catch { throw .system(error) }
    }

    /// Renews the lease of a claim (its modification time becomes now); false when it is gone.
    func renew(_ task: String, attempt: Int, copy: Bool) -> Bool {
        let file = copy ? copyPath(task, attempt: attempt) : claimPath(task, attempt: attempt)
        return utimensat(AT_FDCWD, file, nil, 0) == 0
    }

    /// Records how an attempt ended when it did not finish the task.
    func end(_ task: String, attempt: Int, failedWith exit: Int32?, reason: String, tail: [String]) throws(Failure) {
        let outcome = exit == nil && reason.isEmpty ? "released" : "failed"
        try end(task, attempt: attempt, json: "{\"outcome\": \"\(outcome)\", \"exit\": \(JSONEncoding.number(exit.map(Int.init))), \"reason\": \(JSONEncoding.quoted(reason)), \"tail\": [\(tail.map(JSONEncoding.quoted).joined(separator: ", "))], \"time\": \(JSONEncoding.quoted(Supervisor.timestamp()))}\n")
    }

    /// Records that an attempt was put back (a stop, a lost lease, a busy run directory).
    func release(_ task: String, attempt: Int, reason: String) throws(Failure) {
        try end(task, attempt: attempt, json: "{\"outcome\": \"released\", \"reason\": \(JSONEncoding.quoted(reason)), \"time\": \(JSONEncoding.quoted(Supervisor.timestamp()))}\n")
    }

    private func end(_ task: String, attempt: Int, json: String) throws(Failure) {
        do {
            // Only the claim's holder writes its end, once: a link keeps even that honest.
            _ = try Self.linkNew(Array(json.utf8), at: endPath(task, attempt: attempt), durability: .content)
        } catch { throw .system(error) }
    }

    /// Links the task's outcome, `state`: true for the one caller that recorded it, false when it
    /// already was.
    func recordOutcome(_ task: String, state: TaskFiles.Outcome, json: String) throws(Failure) -> Bool {
        let recorded: Bool
        do {
            try Self.ensureDirectory(taskDirectory(task))
            recorded = try Self.linkNew(Array(json.utf8), at: outcomePath(task), durability: .contentAndName)
        } catch { throw .system(error) }
        if recorded { outcomes[task] = state }
        return recorded
    }

    /// The outcomes known here (from scans and from this process's own records), by state: what
    /// the progress count says without a scan.
    var knownOutcomes: (finished: Int, failed: Int) {
        outcomes.values.reduce(into: (0, 0)) { counts, outcome in
            if case .finished = outcome { counts.0 += 1 } else { counts.1 += 1 }
        }
    }

    /// Whether the task has an outcome now (read fresh, not from the cache of scans).
    func hasOutcome(_ task: String) -> Bool {
        var info = stat()
        return stat(outcomePath(task), &info) == 0
    }

    /// Whether an attempt later than `attempt` was claimed (the lease of `attempt` was taken back).
    func superseded(_ task: String, attempt: Int) -> Bool {
        var info = stat()
        return stat(claimPath(task, attempt: attempt + 1), &info) == 0
    }

    // MARK: - Helpers

    /// Writes `contents` to a temporary beside `path`, closes it and links it there: true when this
    /// call created `path`, false when it existed. The temporary is removed either way. What is
    /// fsynced is what `durability` asks for.
    static func linkNew(_ contents: [UInt8], at path: String, durability: Durability) throws(SystemError) -> Bool {
        let temporary = "\(path).tmp.\(getpid())"
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw SystemError("open \(temporary)") }
        defer { unlink(temporary) }
        let written = contents.withUnsafeBytes { writeAll(fd, $0) }
        let synced = written && (durability == .none || fsync(fd) == 0)
        // close flushes to an NFS server: the content is there before the link makes it visible.
        let closed = Glibc.close(fd) == 0 || errno == EINTR
        guard synced && closed else { throw SystemError("write \(temporary)") }
        if link(temporary, path) != 0 {
            if errno == EEXIST { return false }
            throw SystemError("link \(path)")
        }
        if durability == .contentAndName {
            let directory = Glibc.open(AtomicFile.parentDirectory(of: path), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if directory >= 0 {
                _ = fsync(directory)
                closeDescriptor(directory)
            }
        }
        return true
    }

    /// `makeDirectories`, in one `mkdir` when only the last component may be missing (the usual case).
    static func ensureDirectory(_ path: String) throws(SystemError) {
        if mkdir(path, 0o755) == 0 { return }
        if errno == EEXIST {
            var info = stat()
            if stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR { return }
        }
        try makeDirectories(path)
    }

    static func entries(of directory: String) -> [String] {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// This process's start time (clock ticks since boot): with the pid, it names this process for all time.
    static let ownStart: UInt64 = startTime(of: getpid()) ?? 0

    static func startTime(of pid: Int32) -> UInt64? {
        guard let bytes = try? AtomicFile.read("/proc/\(pid)/stat", limit: 8192),
              let close = bytes.lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19 else { return nil }
        return UInt64(String(decoding: fields[19], as: UTF8.self))
    }

    /// Whether the process `pid` that started at `start` still lives (a zombie does not count).
    static func processAlive(pid: Int32, start: UInt64) -> Bool {
        guard pid > 0, let bytes = try? AtomicFile.read("/proc/\(pid)/stat", limit: 8192),
              let close = bytes.lastIndex(of: UInt8(ascii: ")"))
        else { return false }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19 else { return false }
        return fields[0].first != UInt8(ascii: "Z") && UInt64(String(decoding: fields[19], as: UTF8.self)) == start
    }
}
