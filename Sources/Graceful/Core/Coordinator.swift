import GracefulProtocol

/// The coordinator's decisions, as a state machine with no system calls: which stop step, when to
/// commit, when to escalate, when the run is over and with which exit code.
///
/// Feed it events with the current time; perform the returned actions in order. It never blocks and
/// never reads a clock itself, so every decision can be tested with a fake clock.
///
/// Guarantees:
/// - it asks for a commit only when every rank speaking the protocol confirmed the same step (the
///   stop step) and every other rank stopped cleanly, and at most once per run;
/// - every rank that has not ended `grace` seconds after a stop request gets SIGTERM, and SIGKILL
///   `killAfter` seconds after that; nothing is ever signalled after it ended;
/// - `.finish` comes exactly once, after every rank ended.
public struct Coordinator: Sendable {
    /// The state of a stop in progress.
    public struct Stop: Equatable, Sendable {
        public enum StopStep: Equatable, Sendable {
            /// Collecting positions until every rank answered or `deadline`.
            case aligning(deadline: Instant)
            /// The stop step; `nil` means "each rank's next boundary".
            case decided(Int?)
        }

        public let id: Int
        public let trigger: Trigger
        public let requestedAt: Instant
        public internal(set) var stopStep: StopStep
        public internal(set) var commitRequested = false
        public internal(set) var committedStep: Int?
        /// Why nothing can be committed, first reason first.
        public internal(set) var problems: [String] = []
        /// Stop signals received after the one that started the stop (1: SIGTERM now, 2: SIGKILL now).
        public internal(set) var hurry = 0
        /// The last signal that forced the teardown, for the exit code 128+N.
        public internal(set) var forcedBy: Int32?
        public internal(set) var graceExpired = false
    }

    /// The first rank that failed while no stop was pending.
    public struct Failure: Equatable, Sendable {
        public let rank: Int
        public let status: ExitStatus
    }

    public enum Phase: Equatable, Sendable {
        case running
        case stopping(Stop)
        case failing(Failure)
        case finished(exitCode: Int32)
    }

    public let policy: StopPolicy
    public private(set) var ranks: [RankRecord]
    public private(set) var phase: Phase = .running
    /// The first rank that failed while no stop was pending; kept after the run finished.
    public private(set) var firstFailure: Failure?
    private var nextStopID = 1

    public init(rankCount: Int, policy: StopPolicy) {
        precondition(rankCount > 0, "a run has at least one rank")
        self.policy = policy
        self.ranks = Array(repeating: RankRecord(), count: rankCount)
    }

    /// The earliest moment at which `.tick` may change something, or `nil` when only events can.
    public var nextDeadline: Instant? {
        var earliest: Instant?
        func consider(_ instant: Instant) {
            if earliest.map({ instant < $0 }) ?? true { earliest = instant }
        }
        if case .stopping(let stop) = phase {
            if case .aligning(let deadline) = stop.stopStep { consider(deadline) }
            if !stop.graceExpired { consider(stop.requestedAt + policy.grace) }
        }
        for rank in ranks where rank.isAlive {
            if case .terminated(let killAt) = rank.teardown { consider(killAt) }
        }
        return earliest
    }

    /// Applies one event at time `now` and returns what to do, in order.
    public mutating func handle(_ event: CoordinatorEvent, now: Instant) -> [CoordinatorAction] {
        if case .finished = phase { return [] }
        var actions: [CoordinatorAction] = []
        switch event {
        case .hello(let rank):
            // A hello after the stop request is too late: the rank was already told to stop as a
            // plain process.
            if case .running = phase, ranks[rank].isAlive { ranks[rank].speaksProtocol = true }
        case .position(let rank, let id, let step):
            receivePosition(rank: rank, id: id, step: step, now: now, into: &actions)
        case .checkpointed(let rank, let step, let path):
            receiveConfirmation(rank: rank, step: step, path: path, into: &actions)
        case .exited(let rank, let status):
            rankExited(rank: rank, status: status, now: now, into: &actions)
        case .trigger(let trigger):
            receiveTrigger(trigger, now: now, into: &actions)
        case .commitWritten:
            commitWritten(into: &actions)
        case .commitFailed(let reason):
            updateStop { stop in
                stop.problems.append("writing the commit record failed: \(reason)")
                actions.append(.report("error: writing the commit record failed: \(reason); the previous record is untouched"))
            }
        case .tick:
            break
        }
        checkDeadlines(now: now, into: &actions)
        finishIfDone(into: &actions)
        return actions
    }

    // MARK: - Events

    private mutating func receiveTrigger(_ trigger: Trigger, now: Instant, into actions: inout [CoordinatorAction]) {
        switch phase {
        case .running:
            startStop(trigger, now: now, into: &actions)
        case .stopping(var stop):
            guard case .signal(let signal) = trigger else { return }
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
        case .failing:
            guard case .signal = trigger else { return }
            actions.append(.report("\(trigger): sending SIGKILL to the ranks still running"))
            killLiving(into: &actions)
        case .finished:
            break
        }
    }

    private mutating func startStop(_ trigger: Trigger, now: Instant, into actions: inout [CoordinatorAction]) {
        let id = nextStopID
        nextStopID += 1
        let stop = Stop(
            id: id, trigger: trigger, requestedAt: now,
            stopStep: .aligning(deadline: now + policy.alignTimeout))
        phase = .stopping(stop)
        let speaking = ranks.indices.filter { ranks[$0].isAlive && ranks[$0].speaksProtocol }
        let plain = ranks.indices.filter { ranks[$0].isAlive && !ranks[$0].speaksProtocol }
        var line = "stop requested (\(trigger))"
        if !speaking.isEmpty { line += "; asking \(speaking.count) rank(s) for their position" }
        if !plain.isEmpty { line += "; SIGTERM to \(plain.count) rank(s) that do not speak the protocol" }
        actions.append(.report(line + "; grace \(format(policy.grace))s"))
        for rank in speaking {
            actions.append(.send(rank: rank, .stop(id: id, trigger: trigger.description)))
        }
        for rank in plain {
            // A plain rank's deadline is the grace period itself: SIGTERM now, SIGKILL when it ends.
            ranks[rank].teardown = .terminated(killAt: now + policy.grace)
            actions.append(.signal(rank: rank, SignalNumber.terminate))
        }
        if speaking.isEmpty { decideStopStep(into: &actions) }
    }

    private mutating func receivePosition(
        rank: Int, id: Int, step: Int?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard case .stopping(let stop) = phase, stop.id == id, ranks[rank].speaksProtocol,
              case .aligning = stop.stopStep, ranks[rank].position == nil
        else { return }
        ranks[rank].position = .some(step)
        let waiting = ranks.contains { $0.isAlive && $0.speaksProtocol && $0.position == nil }
        if !waiting { decideStopStep(into: &actions) }
    }

    private mutating func receiveConfirmation(
        rank: Int, step: Int, path: String?, into actions: inout [CoordinatorAction]
    ) {
        guard case .stopping(var stop) = phase, case .decided(let stopStep) = stop.stopStep,
              ranks[rank].speaksProtocol
        else {
            actions.append(.report("warning: rank \(rank) confirmed step \(step) while no stop step was set; ignored"))
            return
        }
        if let earlier = ranks[rank].confirmation {
            actions.append(.report("warning: rank \(rank) confirmed again (step \(step), first step \(earlier.step)); ignored"))
            return
        }
        if let expected = stopStep, step != expected {
            let problem = step > expected
                ? "rank \(rank) passed the stop step \(expected): it checkpointed step \(step)"
                : "rank \(rank) checkpointed step \(step), before the stop step \(expected)"
            ranks[rank].note = step > expected ? "passed stop step \(expected)" : "stopped early"
            stop.problems.append(problem)
            phase = .stopping(stop)
            actions.append(.report("error: \(problem); nothing will be committed"))
            return
        }
        ranks[rank].confirmation = .init(step: step, path: path)
        requestCommitIfComplete(into: &actions)
    }

    private mutating func rankExited(
        rank: Int, status: ExitStatus, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard ranks[rank].isAlive else { return }
        ranks[rank].exit = status
        switch phase {
        case .running:
            guard !status.isSuccess else { return }
            let failure = Failure(rank: rank, status: status)
            firstFailure = failure
            phase = .failing(failure)
            let living = ranks.indices.filter { ranks[$0].isAlive }
            if living.isEmpty {
                actions.append(.report("rank \(rank) failed (\(status))"))
            } else {
                actions.append(.report("rank \(rank) failed (\(status)); stopping the other \(living.count) rank(s) with SIGTERM"))
                terminateLiving(now: now, into: &actions)
            }
        case .stopping(var stop):
            if ranks[rank].speaksProtocol {
                // A rank that confirmed, or whose wrong confirmation was already reported, changes nothing.
                guard ranks[rank].confirmation == nil, ranks[rank].note == nil else { return }
                let problem = "rank \(rank) ended (\(status)) before confirming a checkpoint"
                ranks[rank].note = "ended before confirming"
                stop.problems.append(problem)
                phase = .stopping(stop)
                actions.append(.report("error: \(problem); stopping the others"))
                // Its peers are probably blocked in a collective with it: waiting for grace serves nothing.
                terminateLiving(now: now, into: &actions)
            } else {
                // Ending on the SIGTERM this stop sent is how a plain process stops (systemd's view too).
                guard !(status.isSuccess || status == .signaled(SignalNumber.terminate)) else {
                    requestCommitIfComplete(into: &actions)
                    return
                }
                let problem = "rank \(rank) (no protocol) ended with \(status)"
                ranks[rank].note = "did not stop cleanly"
                stop.problems.append(problem)
                phase = .stopping(stop)
                actions.append(.report("error: \(problem)"))
            }
        case .failing, .finished:
            break
        }
    }

    private mutating func commitWritten(into actions: inout [CoordinatorAction]) {
        guard case .stopping(var stop) = phase, stop.commitRequested, stop.committedStep == nil,
              case .decided = stop.stopStep
        else { return }
        let step = ranks.compactMap(\.confirmation?.step).first ?? 0
        stop.committedStep = step
        phase = .stopping(stop)
        actions.append(.report("committed step \(step)"))
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
            actions.append(.send(rank: rank, .committed(step: step)))
        }
    }

    // MARK: - Decisions

    /// T = 1 + the largest position answered; `nil` when no rank has passed a boundary.
    private mutating func decideStopStep(into actions: inout [CoordinatorAction]) {
        guard case .stopping(var stop) = phase, case .aligning = stop.stopStep else { return }
        let answered = ranks.compactMap { $0.position.flatMap { $0 } }
        let stopStep = answered.max().map { $0 + 1 }
        stop.stopStep = .decided(stopStep)
        phase = .stopping(stop)
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
            if ranks[rank].position == nil {
                ranks[rank].note = "did not answer in time"
                actions.append(.report("warning: rank \(rank) did not report its position within \(format(policy.alignTimeout))s"))
            }
            actions.append(.send(rank: rank, .stopAt(id: stop.id, step: stopStep)))
        }
        if ranks.contains(where: \.speaksProtocol) {
            if let stopStep, let low = answered.min(), let high = answered.max() {
                actions.append(.report("stop step \(stopStep) (ranks were at steps \(low)...\(high))"))
            } else {
                actions.append(.report("stop at each rank's next step boundary (no rank had reached one)"))
            }
        }
        requestCommitIfComplete(into: &actions)
    }

    private mutating func requestCommitIfComplete(into actions: inout [CoordinatorAction]) {
        guard case .stopping(var stop) = phase, case .decided = stop.stopStep,
              !stop.commitRequested, stop.problems.isEmpty,
              ranks.contains(where: \.speaksProtocol)
        else { return }
        var step: Int?
        for rank in ranks {
            if rank.speaksProtocol {
                guard let confirmation = rank.confirmation else { return }
                if let step, step != confirmation.step { return }
                step = confirmation.step
            } else {
                guard let exit = rank.exit, exit.isSuccess || exit == .signaled(SignalNumber.terminate) else { return }
            }
        }
        guard let step else { return }
        stop.commitRequested = true
        phase = .stopping(stop)
        actions.append(.commit(step: step, paths: ranks.map { $0.confirmation?.path }, trigger: stop.trigger))
    }

    private mutating func checkDeadlines(now: Instant, into actions: inout [CoordinatorAction]) {
        if case .stopping(var stop) = phase {
            if case .aligning(let deadline) = stop.stopStep, now >= deadline {
                decideStopStep(into: &actions)
                if case .stopping(let decided) = phase { stop = decided }
            }
            if !stop.graceExpired, now >= stop.requestedAt + policy.grace {
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
        }
        for rank in ranks.indices where ranks[rank].isAlive {
            if case .terminated(let killAt) = ranks[rank].teardown, now >= killAt {
                ranks[rank].teardown = .killed
                actions.append(.signal(rank: rank, SignalNumber.kill))
            }
        }
    }

    private mutating func finishIfDone(into actions: inout [CoordinatorAction]) {
        guard ranks.allSatisfy({ !$0.isAlive }) else { return }
        // A commit asked for is waiting on the disk: the exit code depends on it.
        if case .stopping(let stop) = phase, stop.commitRequested, stop.committedStep == nil, stop.problems.isEmpty {
            return
        }
        let code: Int32
        switch phase {
        case .running:
            code = 0
        case .failing:
            code = 1
        case .stopping(let stop):
            if stop.committedStep != nil {
                code = 0
            } else if let signal = stop.forcedBy {
                code = 128 + signal
            } else if stop.problems.isEmpty && !ranks.contains(where: \.speaksProtocol) {
                code = 0
            } else {
                code = 2
            }
        case .finished:
            return
        }
        phase = .finished(exitCode: code)
        actions.append(.finish(exitCode: code))
    }

    // MARK: - Teardown

    /// SIGTERM to every living rank not yet signalled; SIGKILL `killAfter` later. A rank already
    /// terminated keeps the earlier of its kill times.
    private mutating func terminateLiving(now: Instant, into actions: inout [CoordinatorAction]) {
        let killAt = now + policy.killAfter
        for rank in ranks.indices where ranks[rank].isAlive {
            switch ranks[rank].teardown {
            case .none:
                ranks[rank].teardown = .terminated(killAt: killAt)
                actions.append(.signal(rank: rank, SignalNumber.terminate))
            case .terminated(let earlier) where killAt < earlier:
                ranks[rank].teardown = .terminated(killAt: killAt)
            case .terminated, .killed:
                break
            }
        }
    }

    private mutating func killLiving(into actions: inout [CoordinatorAction]) {
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].teardown != .killed {
            ranks[rank].teardown = .killed
            actions.append(.signal(rank: rank, SignalNumber.kill))
        }
    }

    private mutating func updateStop(_ change: (inout Stop) -> Void) {
        guard case .stopping(var stop) = phase else { return }
        change(&stop)
        phase = .stopping(stop)
    }
}

/// Seconds for messages: "30" rather than "30.0", "0.5" kept.
func format(_ seconds: Double) -> String {
    Int(exactly: seconds).map(String.init) ?? String(seconds)
}
