extension Coordinator {
    /// One request to every rank: stop, or checkpoint and keep training.
    public struct Round: Equatable, Sendable {
        public enum Kind: Equatable, Sendable {
            case stop
            case checkpoint
        }

        public enum Target: Equatable, Sendable {
            /// Collecting positions until every rank answered or `deadline`.
            case aligning(deadline: Instant)
            /// A member of a multi-node job told the leader its furthest position; the leader chooses
            /// the step for every node (`CoordinatorEvent.stepChosen`).
            case awaitingLeader
            /// The round's step; `nil` means "each rank's next boundary".
            case decided(Int?)
        }

        /// The commit record's write, asked for once every rank confirmed the same step.
        public enum Commit: Equatable, Sendable {
            case notRequested
            /// `.commit` was returned; `.commitWritten` or `.commitFailed` answers it.
            case pending(step: Int)
            case written(step: Int)
            case failed(step: Int)
        }

        public let id: Int
        public let kind: Kind
        public let trigger: String
        public let requestedAt: Instant
        public internal(set) var target: Target
        public internal(set) var commit: Commit = .notRequested
        /// Why nothing can be committed, first reason first.
        public internal(set) var problems: [Problem] = []

        var isAligning: Bool {
            if case .aligning = target { return true }
            return false
        }

        var decidedStep: Int?? {
            if case .decided(let step) = target { return .some(step) }
            return nil
        }

        var committedStep: Int? {
            if case .written(let step) = commit { return step }
            return nil
        }
    }

    /// A stop in progress.
    public struct Stop: Equatable, Sendable {
        public internal(set) var round: Round
        /// Counted stop signals since the stop started (1: SIGTERM now, 2: SIGKILL now); a quit counts as 1
        /// when it starts the stop and as 2 later.
        public internal(set) var hurry = 0
        /// The last counted signal that forced the teardown (or the quit that started it), for 128+N.
        public internal(set) var forcedBy: Int32?
        public internal(set) var graceExpired = false
        /// When to say next which ranks the stop still waits for (every `StopPolicy.progressInterval`).
        var nextProgressAt: Instant
        /// The step of a checkpoint round this stop superseded: late confirmations of it are ignored.
        var supersededStep: Int?
        /// The stop was requested by the control file and no stop signal has been counted since: the
        /// first one is the same request, not a second one (it hurries nothing).
        var awaitingFirstSignal = false
    }

    /// The first rank that failed while no stop was pending, in one attempt.
    public struct Failure: Equatable, Sendable {
        public let rank: Int
        public let status: ExitStatus
    }

    /// An attempt that ended, for the summary.
    public struct Attempt: Equatable, Sendable {
        public let restart: Int
        public let failure: Failure?
        public let ranks: [RankRecord]
    }

    public enum Phase: Equatable, Sendable {
        /// Training; `checkpoint` is the checkpoint round in flight, if any.
        case running(checkpoint: Round?)
        case stopping(Stop)
        /// Tearing the gang down after a failure; `stopRequested` forbids the restart. The failure is
        /// nil when it happened on another node of a multi-node job (`failedElsewhere` says what).
        case failing(Failure?, stopRequested: Bool)
        /// The failed gang is being cleared (`resumeAt` nil) or the backoff runs until `resumeAt`.
        case restarting(resumeAt: Instant?)
        case finished(exitCode: Int32)
    }
}
