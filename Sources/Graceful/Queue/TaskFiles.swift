/// What one task's directory held at one scan (`QueueDirectory.scan`): the input of every decision
/// the queue makes, so that the decisions are tested without files.
public struct TaskFiles: Equatable, Sendable {
    /// One attempt's claim, `attempt_N.claim`, created exclusively by the worker that runs it.
    public struct Claim: Equatable, Sendable {
        public var attempt: Int
        /// The worker holding it: `<host-id>/<pid>/w<slot>`.
        public var holder: String
        public var host: String
        /// Changes at every renewal of the lease (the claim file's modification time, in ns).
        public var heartbeat: Int64
        /// Its holder ran on the scanning host and that process is gone: no need to wait for the lease.
        public var holderGone: Bool
        /// `attempt_N.end`, once the attempt ended without finishing the task.
        public var end: AttemptEnd?
        /// A straggler copy of this attempt runs (`attempt_N.copy` exists).
        public var copied: Bool
        /// This claim took the task back from the previous attempt, whose lease had expired (the
        /// claim's `takeover`): one lease expiry of the task.
        public var takeover: Bool

        public init(attempt: Int, holder: String, host: String, heartbeat: Int64, holderGone: Bool = false,
                    end: AttemptEnd? = nil, copied: Bool = false, takeover: Bool = false) {
            self.attempt = attempt
            self.holder = holder
            self.host = host
            self.heartbeat = heartbeat
            self.holderGone = holderGone
            self.end = end
            self.copied = copied
            self.takeover = takeover
        }
    }

    /// How an attempt ended when it did not finish the task.
    public enum AttemptEnd: Equatable, Sendable {
        /// It failed (non-zero exit, timeout, memory): it counts against `--max-attempts`.
        case failed(exit: Int32?)
        /// It was put back: the sweep was stopped, its lease was lost, its run directory was busy.
        /// It does not count.
        case released
    }

    /// `outcome.json`, linked exactly once: the task's final state.
    public enum Outcome: Equatable, Sendable {
        case finished(attempt: Int)
        case failed(attempts: Int)
    }

    public var id: String
    /// Sorted by attempt.
    public var claims: [Claim]
    public var outcome: Outcome?

    public init(id: String, claims: [Claim] = [], outcome: Outcome? = nil) {
        self.id = id
        self.claims = claims.sorted { $0.attempt < $1.attempt }
        self.outcome = outcome
    }

    /// The latest attempt's claim.
    public var latest: Claim? { claims.last }

    /// Leases of the task taken back so far (count against `--max-lease-expiries`).
    public var expiries: Int { claims.filter(\.takeover).count }

    /// Attempts that failed (and count against `--max-attempts`).
    public var failures: Int {
        claims.filter { if case .failed = $0.end { return true } else { return false } }.count
    }
}
