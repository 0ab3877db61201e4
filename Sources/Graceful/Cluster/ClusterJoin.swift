/// What a node says of itself when it joins a multi-node job; the leader checks that every node
/// agrees before any rank starts (`ClusterLeader.joined`).
public struct ClusterJoin: Equatable, Sendable {
    /// The last commit a node knows of: its run id and step (a follower's copy, or the leader's record).
    public struct Commit: Equatable, Sendable, CustomStringConvertible {
        public var runID: String
        public var step: Int

        public init(runID: String, step: Int) {
            self.runID = runID
            self.step = step
        }

        public var description: String { "step \(step) of run \(runID)" }
    }

    public var node: Int
    public var nodeCount: Int
    /// Ranks on this node (`-n`).
    public var localRanks: Int
    public var command: [String]
    public var commit: Commit?
    /// For messages: which machine claims this node rank.
    public var host: String

    public init(node: Int, nodeCount: Int, localRanks: Int, command: [String], commit: Commit?, host: String) {
        self.node = node
        self.nodeCount = nodeCount
        self.localRanks = localRanks
        self.command = command
        self.commit = commit
        self.host = host
    }
}

/// The job as the leader launches it once every node joined.
public struct ClusterWorld: Equatable, Sendable {
    public var runID: String
    public var nodeCount: Int
    public var localRanks: Int
    /// The job's restart this launch is (0: the first launch), as torchrun's `TORCHELASTIC_RESTART_COUNT`.
    public var restart: Int
    public var worldSize: Int { nodeCount * localRanks }

    public init(runID: String, nodeCount: Int, localRanks: Int, restart: Int = 0) {
        self.runID = runID
        self.nodeCount = nodeCount
        self.localRanks = localRanks
        self.restart = restart
    }

    /// The global rank of `localRank` on `node`, as torchrun numbers them.
    public func globalRank(node: Int, localRank: Int) -> Int { node * localRanks + localRank }
}
