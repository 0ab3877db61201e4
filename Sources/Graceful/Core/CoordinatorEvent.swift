import GracefulProtocol

/// Something that happened, fed to `Coordinator.handle(_:now:)` by the process layer.
public enum CoordinatorEvent: Equatable, Sendable {
    /// Every rank of an attempt was spawned (the first launch, or a restart).
    case launched
    /// The rank wrote its first output (stdout or stderr) of the attempt: it has started running.
    case output(rank: Int)
    /// The rank's client said hello: it speaks the protocol.
    case hello(rank: Int)
    /// The rank answered request `id` with its position.
    case position(rank: Int, id: Int, step: Int?)
    /// The rank saved its state after `step` at `path`.
    case checkpointed(rank: Int, step: Int, path: CheckpointPath?)
    /// The rank's process (the group leader) ended.
    case exited(rank: Int, ExitStatus)
    /// A stop trigger arrived: a signal (a quit among them), or the control file's flag.
    case trigger(Trigger)
    /// A checkpoint without stopping was asked for (SIGUSR2).
    case requestCheckpoint(String)
    /// Every process of the failed gang, grandchildren included, is gone (after `.awaitGangExit`).
    case gangGone
    /// The commit record asked for by `.commit` is durably on disk.
    case commitWritten
    /// Writing the commit record failed, or a reported checkpoint does not exist; the previous
    /// record is untouched.
    case commitFailed(String)
    /// Time passed; deadlines are checked against `now`.
    case tick
    /// A member of a multi-node job: the leader chose `step` for round `round` (this node's id). Taken
    /// once, while the round waits for it or still aligns (the leader's deadline passed first).
    case stepChosen(round: Int, step: Int?)
    /// A member of a multi-node job: round `round` cannot complete elsewhere in the job; a commit
    /// this node waits for will not come.
    case roundFailedElsewhere(round: Int, String)
    /// A member of a multi-node job: another node failed or was lost, or the leader is gone. This
    /// node's ranks are probably blocked in a collective with it: they are torn down.
    case nodeFailed(String)
    /// A member of a multi-node job: a stop signal repeated on some node escalates the stop here as
    /// a counted signal would (no debounce: the leader counted it).
    case escalate(Trigger)
    /// A member of a multi-node job: the leader restarts the whole job from its last commit, as
    /// restart `restart` of `maxRestarts`. This node's ranks are torn down; once they are gone it
    /// says `.cleared`.
    case restartJob(restart: Int, maxRestarts: Int, String)
    /// A member of a multi-node job: every node cleared its ranks; relaunch them as restart `restart`.
    case relaunch(restart: Int)
}

/// Something the process layer must do, returned by `Coordinator.handle(_:now:)`, in order.
public enum CoordinatorAction: Equatable, Sendable {
    /// Store request `id` in the doorbell every rank maps (docs/PROTOCOL.md), so every rank has it
    /// at once; its `stop` or `checkpoint` messages follow.
    case ring(id: Int)
    /// Write one message on the rank's channel.
    case send(rank: Int, CoordinatorMessage)
    /// Send a signal to the rank's whole process group.
    case signal(rank: Int, Int32)
    /// Check that every path exists, write the commit record (step, each rank's path, the trigger),
    /// then report back with `.commitWritten` or `.commitFailed`.
    case commit(step: Int, paths: [CheckpointPath?], trigger: String)
    /// Kill whatever is left of the gang (process groups, orphaned descendants) and report
    /// `.gangGone` once nothing is left.
    case awaitGangExit
    /// Spawn every rank again, from the last committed checkpoint, as restart number `restart`.
    case launch(restart: Int)
    /// One line for the console (its `description`).
    case report(Report)
    /// Every rank has ended: exit with this code.
    case finish(exitCode: Int32)
    /// A member of a multi-node job: tell the leader. In that mode `.commit` means "this node's
    /// ranks confirmed": the leader commits, and its answer comes back as `.commitWritten` or
    /// `.roundFailedElsewhere`.
    case tellLeader(NodeReport)
}

/// What a member of a multi-node job tells the leader about its own ranks.
public enum NodeReport: Equatable, Sendable {
    /// Every local rank answered round `round` (or the alignment deadline passed): the furthest
    /// position among them; nil when none passed a boundary.
    case position(round: Int, furthest: Int?)
    /// Round `round` cannot complete on this node.
    case roundFailed(round: Int, Problem)
    /// A rank failed while no stop was pending: the whole job must come down.
    case rankFailed(rank: Int, ExitStatus)
    /// Every process of this node's ranks is gone, for the job's restart `restart`.
    case cleared(restart: Int)
}
