import Glibc

/// The environment of one rank: the coordinator's own, plus what torchrun and msrun scripts read, plus
/// the protocol's variables (docs/PROTOCOL.md lists them all).
public struct RankEnvironment: Sendable {
    public var runID: String
    public var runDirectory: String
    public var worldSize: Int
    /// The ranks on this node; the world's size on a single node.
    public var localWorldSize: Int
    /// This node's rank in a multi-node job (torchrun's GROUP_RANK); 0 on a single node.
    public var nodeRank = 0
    public var masterAddress: String
    public var masterPort: Int
    public var restartCount = 0
    public var maxRestarts = 0
    /// The committed record to resume from, if any.
    public var resume: CommitRecord?
    /// Whether every rank gets the doorbell (docs/PROTOCOL.md) on `doorbellDescriptor`.
    public var hasDoorbell = false

    /// The descriptor numbers the channel and the doorbell have inside every rank.
    public static let channelDescriptor: Int32 = 3
    /// The descriptor number the doorbell's memory file has inside every rank.
    public static let doorbellDescriptor: Int32 = 4

    /// One variable: its name, and its value as bytes (a resume path need not be UTF-8).
    public typealias Variable = (name: String, value: [UInt8])

    public init(runID: String, runDirectory: String, worldSize: Int, masterAddress: String, masterPort: Int, resume: CommitRecord?) {
        self.runID = runID
        self.runDirectory = runDirectory
        self.worldSize = worldSize
        self.localWorldSize = worldSize
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.resume = resume
    }

    /// `inherited` overlaid with the variables of local rank `localRank`. Keys are unique; order is
    /// stable.
    public func variables(rank localRank: Int, inherited: [Variable]) -> [Variable] {
        let rank = nodeRank * localWorldSize + localRank
        var own: [(String, String)] = [
            ("RANK", String(rank)),
            ("LOCAL_RANK", String(localRank)),
            ("GROUP_RANK", String(nodeRank)),
            ("ROLE_RANK", String(rank)),
            ("ROLE_NAME", "default"),
            ("WORLD_SIZE", String(worldSize)),
            ("LOCAL_WORLD_SIZE", String(localWorldSize)),
            ("ROLE_WORLD_SIZE", String(worldSize)),
            ("MASTER_ADDR", masterAddress),
            ("MASTER_PORT", String(masterPort)),
            ("TORCHELASTIC_RUN_ID", runID),
            ("TORCHELASTIC_RESTART_COUNT", String(restartCount)),
            ("TORCHELASTIC_MAX_RESTARTS", String(maxRestarts)),
            ("RANK_ID", String(rank)),
            ("RANK_SIZE", String(worldSize)),
            ("DEVICE_ID", String(localRank)),
            ("MS_WORKER_NUM", String(worldSize)),
            ("MS_NODE_ID", String(rank)),
            ("MS_ROLE", "MS_WORKER"),
            ("MS_SCHED_HOST", masterAddress),
            ("MS_SCHED_PORT", String(masterPort)),
            ("GRACEFUL_PROTOCOL", "1"),
            ("GRACEFUL_CHANNEL_FD", String(Self.channelDescriptor)),
            ("GRACEFUL_RUN_ID", runID),
            ("GRACEFUL_RUN_DIR", runDirectory),
            ("GRACEFUL_RESTART_COUNT", String(restartCount)),
        ]
        if hasDoorbell { own.append(("GRACEFUL_DOORBELL_FD", String(Self.doorbellDescriptor))) }
        var ownVariables: [Variable] = own.map { ($0.0, Array($0.1.utf8)) }
        if let resume {
            ownVariables.append(("GRACEFUL_RESUME_STEP", Array(String(resume.step).utf8)))
            if let path = resume.resumePath(rank: rank) {
                ownVariables.append(("GRACEFUL_RESUME_PATH", path.bytes))
            }
        }
        let ownKeys = Set(ownVariables.map(\.name))
        // The protocol's variables in the coordinator's own environment (a graceful run inside a rank,
        // a shell that exported them) describe another run: none may leak into this one's ranks.
        // The job's secret stays with the coordinators: a rank has no use for it.
        let dropped: Set<String> = [
            "GRACEFUL_RESUME_STEP", "GRACEFUL_RESUME_PATH", "GRACEFUL_DOORBELL", "GRACEFUL_DOORBELL_FD", "GRACEFUL_CHANNEL_FD",
            "GRACEFUL_JOB_TOKEN",
        ]
        var result = inherited.filter { !ownKeys.contains($0.name) && !dropped.contains($0.name) }
        let inheritedKeys = Set(result.map(\.name))
        // torchrun's defaults: one OpenMP thread per rank when several share the machine.
        if localWorldSize > 1 && !inheritedKeys.contains("OMP_NUM_THREADS") { result.append(("OMP_NUM_THREADS", Array("1".utf8))) }
        if !inheritedKeys.contains("PYTHONUNBUFFERED") { result.append(("PYTHONUNBUFFERED", Array("1".utf8))) }
        return result + ownVariables
    }

    /// This process's environment, values as the bytes they are. A name is decoded as UTF-8 (names
    /// are ASCII in practice; the variables above are looked up by name).
    public static func processEnvironment() -> [Variable] {
        var result: [Variable] = []
        var pointer = environ
        while let entry = pointer.pointee {
            let bytes = UnsafeRawBufferPointer(start: entry, count: strlen(entry))
            if let equals = bytes.firstIndex(of: UInt8(ascii: "=")) {
                result.append((String(decoding: bytes[..<equals], as: UTF8.self), Array(bytes[(equals + 1)...])))
            }
            pointer += 1
        }
        return result
    }
}
