import GracefulProtocol

/// The coordinator's decisions, as a state machine with no system calls: which step to stop or
/// checkpoint at, when to commit, when to escalate, when to restart, when the run is over and with
/// which exit code.
///
/// Feed it events with the current time; perform the returned actions in order. It never blocks and
/// never reads a clock itself, so every decision can be tested with a fake clock.
///
/// Guarantees:
/// - it asks for a commit only when every rank confirmed the same step (the round's step), at most
///   once per round; a gang with a rank that never said hello commits nothing;
/// - every rank that has not ended `grace` seconds after a stop request gets SIGTERM, and SIGKILL
///   `killAfter` seconds after that; nothing is ever signalled after it ended;
/// - a checkpoint round never signals anybody: it commits or is abandoned;
/// - a stop (signal, control file) is never answered with a restart; a restart happens only after
///   the whole old gang is gone, and at most `maxRestarts` times;
/// - `.finish` comes exactly once, after every rank ended.
public struct Coordinator: Sendable {
    /// One request to every rank: stop, or checkpoint and keep training.
    public struct Round: Equatable, Sendable {
        public enum Kind: Equatable, Sendable {
            case stop
            case checkpoint
        }

        public enum Target: Equatable, Sendable {
            /// Collecting positions until every rank answered or `deadline`.
            case aligning(deadline: Instant)
            /// The round's step; `nil` means "each rank's next boundary".
            case decided(Int?)
        }

        public let id: Int
        public let kind: Kind
        public let trigger: String
        public let requestedAt: Instant
        public internal(set) var target: Target
        public internal(set) var commitRequested = false
        public internal(set) var committedStep: Int?
        /// Why nothing can be committed, first reason first.
        public internal(set) var problems: [String] = []

        var decidedStep: Int?? {
            if case .decided(let step) = target { return .some(step) }
            return nil
        }
    }

    /// A stop in progress.
    public struct Stop: Equatable, Sendable {
        public internal(set) var round: Round
        /// Stop signals counted after the one that started the stop (1: SIGTERM now, 2: SIGKILL now).
        public internal(set) var hurry = 0
        /// The last signal that forced the teardown, for the exit code 128+N.
        public internal(set) var forcedBy: Int32?
        public internal(set) var graceExpired = false
        /// When the last counted stop signal arrived, for the debounce.
        var lastSignalAt: Instant?
        /// The step of a checkpoint round this stop superseded: late confirmations of it are ignored.
        var supersededStep: Int?
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
        /// Tearing the gang down after a failure; `stopRequested` forbids the restart.
        case failing(Failure, stopRequested: Bool)
        /// The failed gang is being cleared (`resumeAt` nil) or the backoff runs until `resumeAt`.
        case restarting(resumeAt: Instant?)
        case finished(exitCode: Int32)
    }

    public let policy: StopPolicy
    public private(set) var ranks: [RankRecord]
    public private(set) var phase: Phase = .running(checkpoint: nil)
    /// Restarts done so far (the current attempt's number).
    public private(set) var restarts = 0
    /// The attempts that ended before the current one.
    public private(set) var attempts: [Attempt] = []
    /// The failure that ended the latest failed attempt; kept after the run finished.
    public private(set) var firstFailure: Failure?
    /// The step of the last commit (this run's or the one resumed from).
    public private(set) var lastCommittedStep: Int?
    private var nextRoundID = 1
    private var attemptFailure: Failure?
    /// The step of the last abandoned checkpoint round: ranks may still confirm it, harmlessly.
    private var abandonedStep: Int?
    private var nextCheckpointAt: Instant?
    // Kept so that no event costs a walk over every rank (a stop at 1024 ranks is some 3000 events).
    private var livingCount: Int
    /// No later than the earliest SIGKILL due to a rank still in `.terminated`.
    private var earliestKillAt: Instant?
    /// Every rank below it has answered the round's request, or is not asked (ended, no protocol).
    private var positionCursor = 0
    /// Every rank below it has confirmed the round's step, or does not speak the protocol.
    private var confirmationCursor = 0

    public init(rankCount: Int, policy: StopPolicy, resumedStep: Int? = nil) {
        precondition(rankCount > 0, "a run has at least one rank")
        self.policy = policy
        self.ranks = Array(repeating: RankRecord(), count: rankCount)
        self.livingCount = rankCount
        self.lastCommittedStep = resumedStep
    }

    /// The earliest moment at which `.tick` may change something, or `nil` when only events can.
    public var nextDeadline: Instant? {
        var earliest: Instant?
        func consider(_ instant: Instant?) {
            guard let instant else { return }
            if earliest.map({ instant < $0 }) ?? true { earliest = instant }
        }
        switch phase {
        case .running(let round):
            if let round {
                if case .aligning(let deadline) = round.target { consider(deadline) }
                consider(round.requestedAt + policy.grace)
            } else {
                consider(nextCheckpointAt)
            }
        case .stopping(let stop):
            if case .aligning(let deadline) = stop.round.target { consider(deadline) }
            if !stop.graceExpired { consider(stop.round.requestedAt + policy.grace) }
        case .restarting(let resumeAt):
            consider(resumeAt)
        case .failing, .finished:
            break
        }
        consider(earliestKillAt)
        return earliest
    }

    /// Applies one event at time `now` and returns what to do, in order.
    public mutating func handle(_ event: CoordinatorEvent, now: Instant) -> [CoordinatorAction] {
        if case .finished = phase { return [] }
        var actions: [CoordinatorAction] = []
        switch event {
        case .launched:
            if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
        case .hello(let rank):
            // A hello after a stop request is too late: the rank was told to stop as a plain process.
            if case .running = phase, ranks[rank].isAlive, !ranks[rank].speaksProtocol {
                ranks[rank].speaksProtocol = true
                positionCursor = min(positionCursor, rank)
                confirmationCursor = min(confirmationCursor, rank)
            }
        case .position(let rank, let id, let step):
            receivePosition(rank: rank, id: id, step: step, now: now, into: &actions)
        case .checkpointed(let rank, let step, let path):
            receiveConfirmation(rank: rank, step: step, path: path, now: now, into: &actions)
        case .exited(let rank, let status):
            rankExited(rank: rank, status: status, now: now, into: &actions)
        case .trigger(let trigger):
            receiveTrigger(trigger, now: now, into: &actions)
        case .requestCheckpoint(let trigger):
            if case .running(.some) = phase {
                actions.append(.report("\(trigger): a checkpoint is already in progress; ignored"))
            } else if case .running(.none) = phase {
                startCheckpoint(trigger: trigger, now: now, into: &actions)
            } else {
                actions.append(.report("\(trigger): no checkpoint while the ranks are stopping or restarting; ignored"))
            }
        case .gangGone:
            if case .restarting(.none) = phase {
                let wait = policy.backoff(beforeRestart: restarts + 1)
                phase = .restarting(resumeAt: now + wait)
                actions.append(.report("restart \(restarts + 1) of \(policy.maxRestarts) in \(format(wait))s, from \(lastCommittedStep.map { "committed step \($0)" } ?? "the beginning (nothing committed)")"))
            }
        case .commitWritten:
            commitWritten(now: now, into: &actions)
        case .commitFailed(let reason):
            commitFailed(reason, now: now, into: &actions)
        case .tick:
            break
        }
        checkDeadlines(now: now, into: &actions)
        finishIfDone(now: now, into: &actions)
        return actions
    }

    // MARK: - Requests

    private mutating func receiveTrigger(_ trigger: Trigger, now: Instant, into actions: inout [CoordinatorAction]) {
        switch phase {
        case .running(let round):
            var superseded: Int?
            if case .decided(let step)? = round?.target { superseded = step }
            startStop(trigger, supersededStep: superseded, now: now, into: &actions)
        case .stopping(var stop):
            guard case .signal(let signal) = trigger else { return }
            if let last = stop.lastSignalAt, now.seconds(since: last) < policy.signalDebounce { return }
            stop.lastSignalAt = now
            stop.hurry += 1
            stop.forcedBy = signal
            phase = .stopping(stop)
            if stop.hurry == 1 {
                actions.append(.report("\(trigger) again: sending SIGTERM to the ranks still running (SIGKILL in \(format(policy.killAfter))s, or on a third signal)"))
                terminateLiving(now: now, into: &actions)
            } else {
                actions.append(.report("\(trigger) again: sending SIGKILL to the ranks still running"))
                killLiving(into: &actions)
            }
        case .failing(let failure, let stopRequested):
            guard case .signal = trigger else { return }
            if stopRequested {
                actions.append(.report("\(trigger): sending SIGKILL to the ranks still running"))
                killLiving(into: &actions)
            } else {
                actions.append(.report("\(trigger): stop requested while a failed gang is torn down; no restart"))
                phase = .failing(failure, stopRequested: true)
            }
        case .restarting:
            actions.append(.report("stop requested (\(trigger)) before the restart; not restarting"))
            phase = .finished(exitCode: ExitCode.rankFailed)
            endAttempt()
            actions.append(.finish(exitCode: ExitCode.rankFailed))
        case .finished:
            break
        }
    }

    private mutating func newRound(_ kind: Round.Kind, trigger: String, now: Instant) -> Round {
        let id = nextRoundID
        nextRoundID += 1
        for rank in ranks.indices {
            ranks[rank].position = nil
            ranks[rank].confirmation = nil
        }
        positionCursor = 0
        confirmationCursor = 0
        return Round(id: id, kind: kind, trigger: trigger, requestedAt: now, target: .aligning(deadline: now + policy.alignTimeout))
    }

    private mutating func startStop(
        _ trigger: Trigger, supersededStep: Int?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        var stop = Stop(round: newRound(.stop, trigger: trigger.description, now: now))
        stop.supersededStep = supersededStep
        if case .signal = trigger { stop.lastSignalAt = now }
        phase = .stopping(stop)
        let speaking = ranks.indices.filter { ranks[$0].isAlive && ranks[$0].speaksProtocol }
        let plain = ranks.indices.filter { ranks[$0].isAlive && !ranks[$0].speaksProtocol }
        // The ring first: it reaches every rank at once, before anything else is written.
        if !speaking.isEmpty { actions.append(.ring(id: stop.round.id)) }
        var line = "stop requested (\(trigger))"
        if !speaking.isEmpty { line += "; asking \(speaking.count) rank(s) for their position" }
        if !plain.isEmpty { line += "; SIGTERM to \(plain.count) rank(s) that do not speak the protocol" }
        actions.append(.report(line + "; grace \(format(policy.grace))s"))
        if !speaking.isEmpty && !plain.isEmpty {
            // A record must never name a step some rank did not save: a mixed gang cannot commit.
            actions.append(.report("warning: rank(s) \(plain.map(String.init).joined(separator: ", ")) never said hello (not using the client, or not started yet): nothing will be committed"))
        }
        for rank in speaking {
            actions.append(.send(rank: rank, .stop(id: stop.round.id, trigger: trigger.description)))
        }
        for rank in plain {
            // A plain rank's deadline is the grace period itself: SIGTERM now, SIGKILL when it ends.
            setTerminated(rank, killAt: now + policy.grace)
            actions.append(.signal(rank: rank, SignalNumber.terminate))
        }
        if speaking.isEmpty { decide(into: &actions) }
    }

    private mutating func startCheckpoint(trigger: String, now: Instant, into actions: inout [CoordinatorAction]) {
        let speaking = ranks.indices.filter { ranks[$0].isAlive && ranks[$0].speaksProtocol }
        let absent = ranks.indices.filter { !ranks[$0].isAlive || !ranks[$0].speaksProtocol }
        guard absent.isEmpty else {
            // Every rank must save the same step, or the record would name a step some rank lacks.
            let names = absent.map(String.init).joined(separator: ", ")
            actions.append(.report("checkpoint (\(trigger)) skipped: rank(s) \(names) ended or have not said hello"))
            if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
            return
        }
        let round = newRound(.checkpoint, trigger: trigger, now: now)
        phase = .running(checkpoint: round)
        actions.append(.ring(id: round.id))
        actions.append(.report("checkpoint requested (\(trigger)); asking \(speaking.count) rank(s) for their position"))
        for rank in speaking {
            actions.append(.send(rank: rank, .checkpoint(id: round.id, trigger: trigger)))
        }
    }

    // MARK: - Answers and confirmations

    private mutating func receivePosition(
        rank: Int, id: Int, step: Int?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard let round = currentRound, round.id == id, ranks[rank].speaksProtocol,
              case .aligning = round.target, ranks[rank].position == nil
        else { return }
        ranks[rank].position = .some(step)
        if !isWaitingForPositions { decide(into: &actions) }
    }

    /// Whether some living rank that speaks the protocol has not answered yet; amortised O(1).
    private var isWaitingForPositions: Bool {
        mutating get {
            while positionCursor < ranks.count {
                let rank = ranks[positionCursor]
                if rank.isAlive && rank.speaksProtocol && rank.position == nil { return true }
                positionCursor += 1
            }
            return false
        }
    }

    /// T = 1 + the largest position answered; `nil` when no rank has passed a boundary.
    private mutating func decide(into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, case .aligning = round.target else { return }
        let answered = ranks.compactMap { $0.position.flatMap { $0 } }
        let step = answered.max().map { $0 + 1 }
        round.target = .decided(step)
        currentRound = round
        let noun = round.kind == .stop ? "stop" : "checkpoint"
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
            if ranks[rank].position == nil {
                ranks[rank].note = "did not answer in time"
                actions.append(.report("warning: rank \(rank) did not report its position within \(format(policy.alignTimeout))s"))
            }
            let message: CoordinatorMessage = round.kind == .stop
                ? .stopAt(id: round.id, step: step) : .checkpointAt(id: round.id, step: step)
            actions.append(.send(rank: rank, message))
        }
        if ranks.contains(where: \.speaksProtocol) {
            if let step, let low = answered.min(), let high = answered.max() {
                actions.append(.report("\(noun) step \(step) (ranks were at steps \(low)...\(high))"))
            } else {
                actions.append(.report("\(noun) at each rank's next step boundary (no rank had reached one)"))
            }
        }
        requestCommitIfComplete(into: &actions)
    }

    private mutating func receiveConfirmation(
        rank: Int, step: Int, path: CheckpointPath?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        if case .stopping(let stop) = phase, stop.supersededStep == step, stop.round.decidedStep != .some(step) {
            return // a checkpoint of the round this stop superseded, arriving late
        }
        if currentRound == nil, abandonedStep == step { return }
        guard let round = currentRound, case .decided(let expected) = round.target, ranks[rank].speaksProtocol else {
            actions.append(.report("warning: rank \(rank) confirmed step \(step) while no stop or checkpoint step was set; ignored"))
            return
        }
        if let earlier = ranks[rank].confirmation {
            actions.append(.report("warning: rank \(rank) confirmed again (step \(step), first step \(earlier.step)); ignored"))
            return
        }
        if let expected, step != expected {
            let problem = step > expected
                ? "rank \(rank) passed the \(round.kind == .stop ? "stop" : "checkpoint") step \(expected): it checkpointed step \(step)"
                : "rank \(rank) checkpointed step \(step), before the \(round.kind == .stop ? "stop" : "checkpoint") step \(expected)"
            if round.kind == .stop {
                ranks[rank].note = step > expected ? "passed stop step \(expected)" : "stopped early"
                addProblem(problem)
                actions.append(.report("error: \(problem); nothing will be committed"))
            } else {
                abandonCheckpoint("\(problem)", now: now, into: &actions)
            }
            return
        }
        ranks[rank].confirmation = .init(step: step, path: path)
        requestCommitIfComplete(into: &actions)
    }

    private mutating func requestCommitIfComplete(into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, case .decided = round.target, !round.commitRequested,
              round.problems.isEmpty, ranks.contains(where: \.speaksProtocol)
        else { return }
        while confirmationCursor < ranks.count {
            guard ranks[confirmationCursor].speaksProtocol, ranks[confirmationCursor].confirmation != nil else { return }
            confirmationCursor += 1
        }
        let steps = ranks.compactMap(\.confirmation?.step)
        guard let step = steps.first, steps.allSatisfy({ $0 == step }) else { return }
        round.commitRequested = true
        currentRound = round
        actions.append(.commit(step: step, paths: ranks.map { $0.confirmation?.path }, trigger: round.trigger))
    }

    private mutating func commitWritten(now: Instant, into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, round.commitRequested, round.committedStep == nil,
              let step = ranks.compactMap(\.confirmation?.step).first
        else { return }
        round.committedStep = step
        lastCommittedStep = step
        currentRound = round
        actions.append(.report("committed step \(step)"))
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
            actions.append(.send(rank: rank, .committed(step: step)))
        }
        if round.kind == .checkpoint { endCheckpoint(now: now) }
    }

    private mutating func commitFailed(_ reason: String, now: Instant, into actions: inout [CoordinatorAction]) {
        guard let round = currentRound, round.commitRequested, round.committedStep == nil else { return }
        if round.kind == .stop {
            addProblem("the commit failed: \(reason)")
            actions.append(.report("error: commit failed: \(reason); the previous record is untouched"))
        } else {
            abandonCheckpoint("the commit failed: \(reason)", now: now, into: &actions)
        }
    }

    private mutating func abandonCheckpoint(_ reason: String, now: Instant, into actions: inout [CoordinatorAction]) {
        actions.append(.report("warning: checkpoint round abandoned: \(reason); the previous record stays, training goes on"))
        guard case .running(.some(let round)) = phase else { return }
        if case .aligning = round.target {
            // Ranks that answered wait for the step at their next boundary: they must get one.
            let step = ranks.compactMap { $0.position.flatMap { $0 } }.max().map { $0 + 1 }
            for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
                actions.append(.send(rank: rank, .checkpointAt(id: round.id, step: step)))
            }
            abandonedStep = step
        } else {
            abandonedStep = round.decidedStep ?? nil
        }
        endCheckpoint(now: now)
    }

    private mutating func endCheckpoint(now: Instant) {
        phase = .running(checkpoint: nil)
        if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
    }

    // MARK: - Exits

    private static func stoppedCleanly(_ status: ExitStatus) -> Bool {
        // Ending on the SIGTERM a stop sent is how a plain process stops (systemd's view too).
        status.isSuccess || status == .signaled(SignalNumber.terminate)
    }

    private mutating func rankExited(
        rank: Int, status: ExitStatus, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard ranks[rank].isAlive else { return }
        ranks[rank].exit = status
        livingCount -= 1
        switch phase {
        case .running(let round):
            guard status.isSuccess else {
                let failure = Failure(rank: rank, status: status)
                firstFailure = failure
                attemptFailure = failure
                phase = .failing(failure, stopRequested: false)
                let living = ranks.indices.filter { ranks[$0].isAlive }
                if living.isEmpty {
                    actions.append(.report("rank \(rank) failed (\(status))"))
                } else {
                    actions.append(.report("rank \(rank) failed (\(status)); stopping the other \(living.count) rank(s) with SIGTERM"))
                    terminateLiving(now: now, into: &actions)
                }
                return
            }
            if round != nil, ranks[rank].speaksProtocol, ranks[rank].confirmation == nil {
                abandonCheckpoint("rank \(rank) ended during the round", now: now, into: &actions)
            }
        case .stopping(let stop):
            if ranks[rank].speaksProtocol {
                // A rank that confirmed, or whose wrong confirmation was already reported, changes nothing.
                guard ranks[rank].confirmation == nil, ranks[rank].note == nil, stop.round.committedStep == nil else { return }
                let problem = "rank \(rank) ended (\(status)) before confirming a checkpoint"
                ranks[rank].note = "ended before confirming"
                addProblem(problem)
                actions.append(.report("error: \(problem); stopping the others"))
                // Its peers are probably blocked in a collective with it: waiting for grace serves nothing.
                terminateLiving(now: now, into: &actions)
            } else if !Self.stoppedCleanly(status) {
                let problem = "rank \(rank) (no protocol) ended with \(status)"
                ranks[rank].note = "did not stop cleanly"
                addProblem(problem)
                actions.append(.report("error: \(problem)"))
            }
        case .failing, .restarting, .finished:
            break
        }
    }

    // MARK: - Time

    private mutating func checkDeadlines(now: Instant, into actions: inout [CoordinatorAction]) {
        switch phase {
        case .running(let round):
            if let round {
                if case .aligning(let deadline) = round.target, now >= deadline { decide(into: &actions) }
                if case .running(.some(let current)) = phase, now >= current.requestedAt + policy.grace {
                    let missing = ranks.indices.filter {
                        ranks[$0].isAlive && ranks[$0].speaksProtocol && ranks[$0].confirmation == nil
                    }
                    abandonCheckpoint("rank(s) \(missing.map(String.init).joined(separator: ", ")) did not confirm within \(format(policy.grace))s", now: now, into: &actions)
                }
            } else if let due = nextCheckpointAt, now >= due {
                nextCheckpointAt = nil
                startCheckpoint(trigger: "periodic", now: now, into: &actions)
            }
        case .stopping(var stop):
            if case .aligning(let deadline) = stop.round.target, now >= deadline {
                decide(into: &actions)
                if case .stopping(let decided) = phase { stop = decided }
            }
            if !stop.graceExpired, now >= stop.round.requestedAt + policy.grace {
                stop.graceExpired = true
                phase = .stopping(stop)
                let late = ranks.indices.filter { ranks[$0].isAlive }
                if !late.isEmpty {
                    let names = late.map(String.init).joined(separator: ", ")
                    actions.append(.report("grace of \(format(policy.grace))s expired; rank(s) \(names) still running: SIGTERM, then SIGKILL in \(format(policy.killAfter))s"))
                    for rank in late where ranks[rank].confirmation == nil && ranks[rank].note == nil {
                        ranks[rank].note = "no confirmation before the deadline"
                    }
                    terminateLiving(now: now, into: &actions)
                }
            }
        case .restarting(.some(let resumeAt)) where now >= resumeAt:
            endAttempt()
            restarts += 1
            ranks = Array(repeating: RankRecord(), count: ranks.count)
            livingCount = ranks.count
            earliestKillAt = nil
            phase = .running(checkpoint: nil)
            nextCheckpointAt = nil
            actions.append(.launch(restart: restarts))
        case .failing, .restarting, .finished:
            break
        }
        if let due = earliestKillAt, now >= due {
            earliestKillAt = nil
            for rank in ranks.indices where ranks[rank].isAlive {
                guard case .terminated(let killAt) = ranks[rank].teardown else { continue }
                if now >= killAt {
                    ranks[rank].teardown = .killed
                    actions.append(.signal(rank: rank, SignalNumber.kill))
                } else {
                    considerKill(at: killAt)
                }
            }
        }
    }

    private mutating func finishIfDone(now: Instant, into actions: inout [CoordinatorAction]) {
        guard livingCount == 0 else { return }
        let code: Int32
        switch phase {
        case .running:
            code = 0
        case .failing(let failure, let stopRequested):
            if !stopRequested && restarts < policy.maxRestarts {
                phase = .restarting(resumeAt: nil)
                actions.append(.report("rank \(failure.rank) failed (\(failure.status)); clearing the gang before restart \(restarts + 1) of \(policy.maxRestarts)"))
                actions.append(.awaitGangExit)
                return
            }
            if restarts > 0 {
                actions.append(.report("giving up after \(restarts) restart(s) (--max-restarts \(policy.maxRestarts))"))
            }
            code = ExitCode.rankFailed
        case .stopping(let stop):
            // A commit asked for is waiting on the disk: the exit code depends on it.
            if stop.round.commitRequested && stop.round.committedStep == nil && stop.round.problems.isEmpty { return }
            if stop.round.committedStep != nil {
                code = 0
            } else if let signal = stop.forcedBy {
                code = 128 + signal
            } else if stop.round.problems.isEmpty && !ranks.contains(where: \.speaksProtocol) {
                code = 0
            } else {
                code = ExitCode.notCommitted
            }
        case .restarting, .finished:
            return
        }
        endAttempt()
        phase = .finished(exitCode: code)
        actions.append(.finish(exitCode: code))
    }

    /// Records the current attempt for the summary.
    private mutating func endAttempt() {
        attempts.append(Attempt(restart: restarts, failure: attemptFailure, ranks: ranks))
        attemptFailure = nil
    }

    // MARK: - Teardown

    /// SIGTERM to every living rank not yet signalled; SIGKILL `killAfter` later. A rank already
    /// terminated keeps the earlier of its kill times.
    private mutating func terminateLiving(now: Instant, into actions: inout [CoordinatorAction]) {
        let killAt = now + policy.killAfter
        for rank in ranks.indices where ranks[rank].isAlive {
            switch ranks[rank].teardown {
            case .none:
                setTerminated(rank, killAt: killAt)
                actions.append(.signal(rank: rank, SignalNumber.terminate))
            case .terminated(let earlier) where killAt < earlier:
                setTerminated(rank, killAt: killAt)
            case .terminated, .killed:
                break
            }
        }
    }

    private mutating func setTerminated(_ rank: Int, killAt: Instant) {
        ranks[rank].teardown = .terminated(killAt: killAt)
        considerKill(at: killAt)
    }

    private mutating func considerKill(at killAt: Instant) {
        if earliestKillAt.map({ killAt < $0 }) ?? true { earliestKillAt = killAt }
    }

    private mutating func killLiving(into actions: inout [CoordinatorAction]) {
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].teardown != .killed {
            ranks[rank].teardown = .killed
            actions.append(.signal(rank: rank, SignalNumber.kill))
        }
    }

    // MARK: - The current round

    /// The round in flight: the stop's, or the checkpoint's while training.
    private var currentRound: Round? {
        get {
            switch phase {
            case .running(let round): return round
            case .stopping(let stop): return stop.round
            default: return nil
            }
        }
        set {
            guard let newValue else { return }
            switch phase {
            case .running(.some): phase = .running(checkpoint: newValue)
            case .stopping(var stop):
                stop.round = newValue
                phase = .stopping(stop)
            default: break
            }
        }
    }

    private mutating func addProblem(_ problem: String) {
        guard var round = currentRound else { return }
        round.problems.append(problem)
        currentRound = round
    }
}

/// Seconds for messages: "30" rather than "30.0", "0.5" kept.
func format(_ seconds: Double) -> String {
    Int(exactly: seconds).map(String.init) ?? String(seconds)
}
