/// The decisions of one `queue run` process about a shared queue: which task an idle worker claims,
/// when a claim's lease has expired, when a failed task may be tried again, when a task has used up
/// its attempts or its lease expiries, and which task a straggler copy duplicates. No files: it is
/// fed scans (`TaskFiles`) and a monotonic clock.
///
/// Guarantees (checked by `QueueSchedulerPropertyTests` against a model of many processes sharing
/// the directory, crashing, hanging and restarting at random):
/// - a claim whose heartbeat changed less than `lease` seconds ago, on this process's own clock, is
///   never taken over, unless its holder ran on this host and is gone: clocks of other hosts (and of
///   the file server) are never compared with this one, so clock skew cannot expire a live lease;
/// - a failed task is not tried again before `backoff(afterFailures:)` has passed since this process
///   first saw the failure (which is never before the failure itself);
/// - a task is recorded failed only once `maxAttempts` attempts failed (never while it runs), or
///   when its lease expired for the `maxLeaseExpiries`-th time (its lease taken back at most
///   `maxLeaseExpiries - 1` times: never claimed again after that);
/// - a straggler copy is proposed only when no task is pending (nor waiting for its backoff), for
///   a live running attempt that has no copy yet;
/// - once every task has an outcome, and only then, the answer is `.drained`.
public struct QueueScheduler: Sendable {
    public let policy: QueuePolicy

    /// An attempt of a task.
    struct AttemptKey: Hashable, Sendable {
        let task: String
        let attempt: Int
    }

    /// Per claim seen: its last heartbeat and when this process saw it change (or first saw it).
    private var heartbeats: [AttemptKey: (token: Int64, changedAt: Instant)] = [:]
    /// When this process first saw each claim (how long the task has run, as far as it knows).
    private var firstSeen: [AttemptKey: Instant] = [:]
    /// When this process first saw each failed attempt's end.
    private var failureSeen: [AttemptKey: Instant] = [:]

    public init(policy: QueuePolicy) {
        self.policy = policy
    }

    /// A task's state, as `queue status` shows it and `next` decides on it.
    public enum TaskState: Equatable, Sendable {
        /// Waiting for `attempt`; not before `readyAt` when it failed before.
        case pending(attempt: Int, failures: Int, readyAt: Instant?)
        /// Its latest attempt is claimed; `expired` once the lease ran out.
        case running(TaskFiles.Claim, expired: Bool)
        /// `maxAttempts` of its attempts failed; not yet recorded (`next` answers `.fail`).
        case exhausted(failures: Int)
        case finished(attempt: Int)
        case failed(attempts: Int)
    }

    /// Why a task is recorded failed.
    public enum FailReason: Equatable, Sendable {
        /// `maxAttempts` attempts failed.
        case attemptsFailed(Int)
        /// Its lease expired for the `maxLeaseExpiries`-th time; `last` is the claim whose lease it was.
        case leaseExpired(times: Int, last: TaskFiles.Claim)
    }

    /// What an idle worker should do.
    public enum Decision: Equatable, Sendable {
        /// Record the task failed.
        case fail(task: String, reason: FailReason)
        /// Claim `attempt` of the task (creating `attempt_N.claim` exclusively); `takeover` names the
        /// expired claim it replaces.
        case claim(task: String, attempt: Int, takeover: TaskFiles.Claim?)
        /// Start a straggler copy of the task's running `attempt`.
        case copy(task: String, attempt: Int)
        /// Nothing to do now; scan again at `until` (or when something happens here).
        case wait(until: Instant?)
        /// Every task has its outcome.
        case drained
    }

    /// Takes in a scan made at `now`, and the states it shows.
    public mutating func observe(_ tasks: [TaskFiles], at now: Instant) -> [TaskState] {
        tasks.map { observe($0, at: now) }
    }

    private mutating func observe(_ task: TaskFiles, at now: Instant) -> TaskState {
        switch task.outcome {
        case .finished(let attempt)?: return .finished(attempt: attempt)
        case .failed(let attempts)?: return .failed(attempts: attempts)
        case nil: break
        }
        for claim in task.claims {
            let key = AttemptKey(task: task.id, attempt: claim.attempt)
            if firstSeen[key] == nil { firstSeen[key] = now }
            if case .failed = claim.end, failureSeen[key] == nil { failureSeen[key] = now }
            if let seen = heartbeats[key], seen.token == claim.heartbeat { continue }
            heartbeats[key] = (claim.heartbeat, now)
        }
        let failures = task.failures
        guard let latest = task.latest else { return .pending(attempt: 1, failures: 0, readyAt: nil) }
        guard latest.end != nil else {
            let key = AttemptKey(task: task.id, attempt: latest.attempt)
            let expired = latest.holderGone || now.seconds(since: heartbeats[key]!.changedAt) >= policy.lease
            return .running(latest, expired: expired)
        }
        if failures >= policy.maxAttempts { return .exhausted(failures: failures) }
        var readyAt: Instant?
        if case .failed = latest.end, let seen = failureSeen[AttemptKey(task: task.id, attempt: latest.attempt)] {
            readyAt = seen + policy.backoff(afterFailures: failures)
        }
        return .pending(attempt: latest.attempt + 1, failures: failures, readyAt: readyAt)
    }

    /// What an idle worker does, given a scan made at `now` and the tasks this process runs
    /// (its attempts and its copies).
    public mutating func next(_ tasks: [TaskFiles], at now: Instant, runningHere: Set<String>) -> Decision {
        let states = observe(tasks, at: now)
        var wakeAt: Instant?
        func wake(_ instant: Instant) { wakeAt = min(wakeAt ?? instant, instant) }
        var anyPending = false
        var candidate: (task: String, attempt: Int, since: Instant)?
        for (task, state) in zip(tasks, states) {
            switch state {
            case .exhausted(let failures):
                return .fail(task: task.id, reason: .attemptsFailed(failures))
            case .pending(let attempt, _, let readyAt):
                anyPending = true
                if let readyAt, readyAt > now {
                    wake(readyAt)
                    continue
                }
                return .claim(task: task.id, attempt: attempt, takeover: nil)
            case .running(let claim, let expired):
                let key = AttemptKey(task: task.id, attempt: claim.attempt)
                if expired, !runningHere.contains(task.id) {
                    // A holder that dies or hangs every time would have the task taken back without end.
                    let expiries = task.expiries + 1
                    if expiries >= policy.maxLeaseExpiries {
                        return .fail(task: task.id, reason: .leaseExpired(times: expiries, last: claim))
                    }
                    return .claim(task: task.id, attempt: claim.attempt + 1, takeover: claim)
                }
                if !expired { wake(heartbeats[key]!.changedAt + policy.lease) }
                let since = firstSeen[key]!
                if !expired, !claim.copied, candidate.map({ since < $0.since }) ?? true {
                    candidate = (task.id, claim.attempt, since)
                }
            case .finished, .failed:
                continue
            }
        }
        if policy.stragglers, !anyPending, let candidate {
            return .copy(task: candidate.task, attempt: candidate.attempt)
        }
        if states.allSatisfy({ if case .finished = $0 { return true }; if case .failed = $0 { return true }; return false }) {
            return .drained
        }
        return .wait(until: wakeAt)
    }
}
