import GracefulProtocol

/// The coordinator's decisions, as a state machine with no system calls: which step to stop or
/// checkpoint at, when to commit, when to escalate, when to restart, when the run is over and with
/// which exit code.
///
/// Feed it events with the current time; perform the returned actions in order. It never blocks,
/// never reads a clock itself and never traps on any value an event carries, so every decision can
/// be tested with a fake clock.
///
/// Guarantees (`CoordinatorPropertyTests` checks each after every event of random runs):
/// - `.finish` comes exactly once, only once every rank of the current attempt has ended, and
///   nothing is returned after it;
/// - no `.signal` and no `.send` goes to a rank that has ended;
/// - when a stop starts, every living rank gets `stop` (it said hello) or SIGTERM (it did not);
///   a quit (SIGQUIT, SIGABRT) also sends SIGTERM to every living rank at once;
/// - `.commit` is asked for only when every rank of the gang said hello before the round and
///   confirmed the round's step in this round (with the path of its first confirmation), before the
///   round's grace expired; at most once per round. A confirmation after the grace is ignored;
/// - a rank that has not ended `grace` seconds after a stop request gets SIGTERM, and SIGKILL
///   `killAfter` seconds after its SIGTERM; a checkpoint round never signals anybody;
/// - stop signals (and quits) count only when at least `signalDebounce` passed since the previous
///   one received, counted or not: a storm is one stop; the second counted one sends SIGTERM to every
///   rank not yet signalled, the third (or a quit during a stop) SIGKILL;
/// - a restart (`.launch`) happens only after `.gangGone` answered `.awaitGangExit`, at most
///   `maxRestarts` times, and never once a stop trigger (signal, quit, control file) arrived in
///   any phase: a stop during a failed gang's teardown or backoff ends the run with 1;
/// - the exit code: 1 when a rank failed (non-zero, or a signal) while no stop was pending and no
///   restart was left or allowed; otherwise 0 when no stop was requested (every rank exited 0), or
///   when the stop's commit was written; else 128+N when signal N forced the stop (a counted second
///   or third signal, or a quit); else 0 when no rank said hello and every rank exited 0, or on
///   SIGTERM after it had started running (it wrote output, or the stop came
///   `StopPolicy.plainStartupTime` or more after the launch); else 2.
///
/// A member of a multi-node job (`clusterMember`, `CoordinatorClusterPropertyTests`) keeps these,
/// except that the leader chooses each round's step (`.tellLeader(.position)`, answered by
/// `.stepChosen`) and writes the commit (`.commit` is answered by `.commitWritten`, or by
/// `.roundFailedElsewhere` or `.nodeFailed`, after which no commit is waited for); the leader
/// decides restarts: a rank failure while no stop is pending is told to the leader
/// (`.tellLeader(.rankFailed)`), the gang is cleared (`.awaitGangExit`), and the leader's verdict is
/// waited for: `.nodeFailed` ends the run with 1, `.restartJob` is answered by
/// `.tellLeader(.cleared)` once the gang is gone, and `.relaunch` of that restart then `.launch`es
/// it. `.restartJob` while training tears the ranks down the same way. The first problem of a round
/// found on this node is told to the leader (`.tellLeader(.roundFailed)`); `.nodeFailed` tears the
/// ranks down: exit 1 while no stop is pending, else the stop's exit code, in which its commit
/// counts only when the leader's `.commitWritten` came first; `.escalate` is a counted signal,
/// whatever the debounce.
public struct Coordinator: Sendable {
    public let policy: StopPolicy
    /// A node of a multi-node job: the leader chooses each round's step and commits; this node
    /// reports its ranks' part (`CoordinatorAction.tellLeader`, `.commit`).
    public let isClusterMember: Bool
    /// What failed on another node, when that is why this node's ranks were torn down.
    public private(set) var failedElsewhere: String?
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
    /// The first stop trigger of the run, whatever the phase it arrived in.
    public private(set) var stopTrigger: Trigger?
    /// When that trigger arrived.
    public private(set) var stopRequestedAt: Instant?
    private var nextRoundID = 1
    /// When the current attempt's ranks were spawned.
    private var launchedAt: Instant?
    private var attemptFailure: Failure?
    /// The step of the last abandoned checkpoint round: ranks may still confirm it, harmlessly.
    private var abandonedStep: Int?
    private var nextCheckpointAt: Instant?
    /// A periodic round was skipped and said so: the next skips are silent until a round starts.
    private var reportedSkip = false
    /// When the previous stop signal arrived, counted or not: the debounce window slides with it.
    private var lastStopSignalAt: Instant?
    // Kept so that no event costs a walk over every rank (a stop at 1024 ranks is some 3000 events).
    private var livingCount: Int
    /// No later than the earliest SIGKILL due to a rank still in `.terminated`.
    private var earliestKillAt: Instant?
    /// Every rank below it has answered the round's request, or is not asked (ended, no protocol).
    private var positionCursor = 0
    /// Every rank below it has confirmed the round's step, or does not speak the protocol.
    private var confirmationCursor = 0
    /// Ranks already warned about a confirmation that does not count, since the latest round began:
    /// one warning each, so a rank flooding its channel with them cannot flood graceful's own output.
    private var warnedConfirmation: Set<Int> = []
    /// A member of a multi-node job: the restart the leader asked for, while this node clears for it.
    private var jobRestart: Int?
    /// A member of a multi-node job: the failed gang is gone (`.gangGone`) and waits for the leader.
    private var gangCleared = false

    /// `restarts`: the restart this launch is (a member of a multi-node job that joined a restart).
    public init(rankCount: Int, policy: StopPolicy, resumedStep: Int? = nil, clusterMember: Bool = false, restarts: Int = 0) {
        precondition(rankCount > 0, "a run has at least one rank")
        self.policy = policy
        self.isClusterMember = clusterMember
        self.ranks = Array(repeating: RankRecord(), count: rankCount)
        self.livingCount = rankCount
        self.lastCommittedStep = resumedStep
        self.restarts = restarts
    }

    /// Until when processes the ranks left behind (a launcher's workers in a session of their own)
    /// may finish saving once every rank ended: the end of the stop's grace, as the ranks had; nil
    /// when no graceful stop was asked for (nothing to save for), or it was a quit (stop now).
    public var leftoversDeadline: Instant? {
        guard let stopRequestedAt, let stopTrigger else { return nil }
        if case .quit = stopTrigger { return nil }
        return stopRequestedAt + policy.grace
    }

    /// The id of the round in flight (a stop's, or a checkpoint's), if any.
    public var currentRoundID: Int? { currentRound?.id }

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
                if !awaitsLeadersCommit(round) { consider(round.requestedAt + policy.grace) }
            } else {
                consider(nextCheckpointAt)
            }
        case .stopping(let stop):
            if case .aligning(let deadline) = stop.round.target { consider(deadline) }
            if !stop.graceExpired {
                consider(stop.round.requestedAt + policy.grace)
                consider(stop.nextProgressAt)
            }
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
            launchedAt = now
            if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
        case .output(let rank):
            ranks[rank].wroteOutput = true
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
            switch phase {
            case .running(.some):
                actions.append(.report(.checkpointInProgress(trigger: trigger)))
            case .running(.none):
                startCheckpoint(trigger: trigger, periodic: false, now: now, into: &actions)
            case .stopping, .failing, .restarting, .finished:
                actions.append(.report(.checkpointRefused(trigger: trigger)))
            }
        case .gangGone:
            if case .restarting(.none) = phase, isClusterMember {
                gangCleared = true
                if let restart = jobRestart { tellCleared(restart, into: &actions) }
            } else if case .restarting(.none) = phase {
                let wait = policy.backoff(beforeRestart: restarts + 1)
                phase = .restarting(resumeAt: now + wait)
                actions.append(.report(.restartScheduled(
                    restart: restarts + 1, maxRestarts: policy.maxRestarts, after: wait, from: lastCommittedStep)))
            }
        case .commitWritten:
            commitWritten(now: now, into: &actions)
        case .commitFailed(let reason):
            commitFailed(reason, now: now, into: &actions)
        case .tick:
            break
        case .stepChosen(let id, let step):
            // Also while this node still aligns: the leader's deadline passed first (its reports cross
            // the network), and its step is the job's; this node's position would come too late.
            if var round = currentRound, round.id == id, round.target == .awaitingLeader || round.isAligning {
                round.target = .aligning(deadline: now)
                currentRound = round
                settle(step: step, now: now, into: &actions)
            }
        case .roundFailedElsewhere(let id, let reason):
            if let round = currentRound, round.id == id { failedElsewhere(round, reason, now: now, into: &actions) }
        case .nodeFailed(let reason):
            nodeFailed(reason, now: now, into: &actions)
        case .escalate(let trigger):
            receiveTrigger(trigger, forced: true, now: now, into: &actions)
        case .restartJob(let restart, let maxRestarts, let reason):
            restartJob(restart, of: maxRestarts, reason, now: now, into: &actions)
        case .relaunch(let restart):
            if isClusterMember, case .restarting(.none) = phase, gangCleared, jobRestart == restart {
                relaunch(as: restart, into: &actions)
            }
        }
        checkDeadlines(now: now, into: &actions)
        finishIfDone(now: now, into: &actions)
        return actions
    }

    // MARK: - Requests

    /// Whether a stop signal arriving now counts: only when the previous one, counted or not, is at
    /// least `signalDebounce` old, so a storm of any length is one request.
    private mutating func signalCounts(now: Instant) -> Bool {
        defer { lastStopSignalAt = now }
        guard let last = lastStopSignalAt else { return true }
        return now.seconds(since: last) >= policy.signalDebounce
    }

    /// `forced`: an escalation the leader of a multi-node job counted; it always counts.
    private mutating func receiveTrigger(
        _ trigger: Trigger, forced: Bool = false, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        if stopTrigger == nil { (stopTrigger, stopRequestedAt) = (trigger, now) }
        let counts = trigger.signalNumber != nil && (signalCounts(now: now) || forced)
        switch phase {
        case .running(let round):
            var superseded: Int?
            if case .decided(let step)? = round?.target { superseded = step }
            startStop(trigger, supersededStep: superseded, now: now, into: &actions)
        case .stopping(var stop):
            // The control file does not escalate: it cannot be told apart from the request itself.
            guard counts, let signal = trigger.signalNumber else { return }
            if stop.awaitingFirstSignal && !forced {
                stop.awaitingFirstSignal = false
                phase = .stopping(stop)
                // A scheduler's SIGTERM after the control file (or an operator's Ctrl+C after a
                // colleague's edit) is the first stop signal: the stop in progress is that request.
                if case .signal = trigger {
                    actions.append(.report(.alreadyStopping(trigger)))
                    return
                }
            }
            if case .quit = trigger { stop.hurry = max(stop.hurry, 1) }
            stop.hurry += 1
            stop.forcedBy = signal
            phase = .stopping(stop)
            if stop.hurry == 1 {
                actions.append(.report(.escalated(trigger, .terminate(killAfter: policy.killAfter))))
                terminateLiving(now: now, into: &actions)
            } else {
                actions.append(.report(.escalated(trigger, .kill)))
                killLiving(into: &actions)
            }
        case .failing(let failure, let stopRequested):
            if !stopRequested {
                actions.append(.report(.restartForbidden(trigger)))
                phase = .failing(failure, stopRequested: true)
            }
            // Every rank has had SIGTERM already: a counted repeat, or a quit, is the SIGKILL.
            let quits = if case .quit = trigger { true } else { false }
            if counts && (stopRequested || quits) {
                actions.append(.report(.killingFailedGang(trigger)))
                killLiving(into: &actions)
            }
        case .restarting:
            actions.append(.report(.restartCancelled(trigger)))
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
            ranks[rank].position = .notAnswered
            ranks[rank].confirmation = nil
        }
        positionCursor = 0
        confirmationCursor = 0
        warnedConfirmation = []
        return Round(id: id, kind: kind, trigger: trigger, requestedAt: now, target: .aligning(deadline: now + policy.alignTimeout))
    }

    private mutating func startStop(
        _ trigger: Trigger, supersededStep: Int?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        var stop = Stop(round: newRound(.stop, trigger: trigger.description, now: now), nextProgressAt: now + StopPolicy.progressInterval)
        stop.supersededStep = supersededStep
        stop.awaitingFirstSignal = trigger == .controlFile
        if case .quit(let signal) = trigger {
            stop.hurry = 1
            stop.forcedBy = signal
        }
        phase = .stopping(stop)
        let speaking = ranks.indices.filter { ranks[$0].isAlive && ranks[$0].speaksProtocol }
        let plain = ranks.indices.filter { ranks[$0].isAlive && !ranks[$0].speaksProtocol }
        let ranLongEnough = launchedAt.map { now.seconds(since: $0) >= StopPolicy.plainStartupTime } ?? false
        for rank in ranks.indices {
            ranks[rank].startedBeforeStop = ranks[rank].speaksProtocol || ranks[rank].wroteOutput || ranLongEnough
        }
        // The ring first: it reaches every rank at once, before anything else is written.
        if !speaking.isEmpty { actions.append(.ring(id: stop.round.id)) }
        actions.append(.report(.stopRequested(trigger, asking: speaking.count, terminating: plain.count, grace: policy.grace)))
        if !speaking.isEmpty && !plain.isEmpty {
            // A record must never name a step some rank did not save: a mixed gang cannot commit.
            actions.append(.report(.mixedGang(neverSaidHello: plain)))
        }
        if isClusterMember && !plain.isEmpty {
            actions.append(.tellLeader(.roundFailed(round: stop.round.id, .neverSaidHello(ranks: plain))))
        }
        if ranks.contains(where: \.speaksProtocol) {
            let ended = ranks.indices.compactMap { rank in
                ranks[rank].exit.map { Problem.Ended(rank: rank, status: $0) }
            }
            if !ended.isEmpty {
                for end in ended { ranks[end.rank].note = .endedBeforeStop }
                addProblem(.endedBeforeStop(ended))
                actions.append(.report(.stopProblem(.endedBeforeStop(ended))))
                // The round cannot commit anywhere: the leader fails it now rather than at its deadline
                // (it heard already when some rank never said hello).
                if isClusterMember && plain.isEmpty {
                    actions.append(.tellLeader(.roundFailed(round: stop.round.id, .endedBeforeStop(ended))))
                }
            }
        }
        for rank in speaking {
            actions.append(.send(rank: rank, .stop(id: stop.round.id, trigger: trigger.description)))
        }
        for rank in plain {
            // A plain rank's deadline is the grace period itself: SIGTERM now, SIGKILL when it ends.
            setTerminated(rank, killAt: now + policy.grace)
            actions.append(.signal(rank: rank, SignalNumber.terminate))
        }
        if case .quit = trigger {
            // Protocol ranks still got `stop`: one fast enough can confirm before the SIGTERM ends it.
            actions.append(.report(.escalated(trigger, .terminate(killAfter: policy.killAfter))))
            terminateLiving(now: now, into: &actions)
        }
        if speaking.isEmpty { decide(now: now, into: &actions) }
    }

    private mutating func startCheckpoint(
        trigger: String, periodic: Bool, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        let speaking = ranks.indices.filter { ranks[$0].isAlive && ranks[$0].speaksProtocol }
        let absent = ranks.indices.filter { !ranks[$0].isAlive || !ranks[$0].speaksProtocol }
        guard absent.isEmpty else {
            // Every rank must save the same step, or the record would name a step some rank lacks.
            if !periodic || !reportedSkip {
                actions.append(.report(.checkpointSkipped(trigger: trigger, absent: absent, periodic: periodic)))
            }
            if periodic { reportedSkip = true }
            if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
            return
        }
        reportedSkip = false
        let round = newRound(.checkpoint, trigger: trigger, now: now)
        phase = .running(checkpoint: round)
        actions.append(.ring(id: round.id))
        actions.append(.report(.checkpointRequested(trigger: trigger, asking: speaking.count)))
        for rank in speaking {
            actions.append(.send(rank: rank, .checkpoint(id: round.id, trigger: trigger)))
        }
    }

    // MARK: - Answers and confirmations

    private mutating func receivePosition(
        rank: Int, id: Int, step: Int?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard let round = currentRound, round.id == id, ranks[rank].speaksProtocol,
              case .aligning = round.target, ranks[rank].position == .notAnswered
        else { return }
        if let step {
            if step.addingReportingOverflow(1).overflow {
                // No stop step can follow it; the message layer refuses such steps before they get here.
                ranks[rank].position = .unusable(step)
                ranks[rank].note = .answeredUnusablePosition
                roundFailed(.unusablePosition(rank: rank, step: step), now: now, into: &actions)
            } else {
                ranks[rank].position = .step(step)
            }
        } else {
            ranks[rank].position = .noBoundary
        }
        if !isWaitingForPositions { decide(now: now, into: &actions) }
    }

    /// Whether some living rank that speaks the protocol has not answered yet; amortised O(1).
    private var isWaitingForPositions: Bool {
        mutating get {
            while positionCursor < ranks.count {
                let rank = ranks[positionCursor]
                if rank.isAlive && rank.speaksProtocol && rank.position == .notAnswered { return true }
                positionCursor += 1
            }
            return false
        }
    }

    /// The usable positions answered to the current request.
    private var answeredSteps: [Int] {
        ranks.compactMap { if case .step(let step) = $0.position { step } else { nil } }
    }

    /// T = 1 + the largest position answered; `nil` when no rank has passed a boundary. A member of a
    /// multi-node job tells the leader instead, which answers with the step for the whole job.
    private mutating func decide(now: Instant, into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, case .aligning = round.target else { return }
        // Positions that would overflow were set aside when they arrived.
        let furthest = answeredSteps.max()
        if isClusterMember {
            round.target = .awaitingLeader
            currentRound = round
            actions.append(.tellLeader(.position(round: round.id, furthest: furthest)))
            return
        }
        settle(step: furthest.map { $0 + 1 }, now: now, into: &actions)
    }

    /// Sends the round's step to every rank that speaks the protocol.
    private mutating func settle(step: Int?, now: Instant, into actions: inout [CoordinatorAction]) {
        guard var round = currentRound else { return }
        let answered = answeredSteps
        round.target = .decided(step)
        currentRound = round
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
            if ranks[rank].position == .notAnswered {
                ranks[rank].note = .didNotAnswerInTime
                actions.append(.report(.noAnswer(rank: rank, within: policy.alignTimeout)))
            }
            let message: CoordinatorMessage = round.kind == .stop
                ? .stopAt(id: round.id, step: step) : .checkpointAt(id: round.id, step: step)
            actions.append(.send(rank: rank, message))
        }
        if ranks.contains(where: \.speaksProtocol) {
            if let step, let low = answered.min(), let high = answered.max() {
                actions.append(.report(.stepChosen(round.kind, step: step, lowest: low, highest: high)))
            } else {
                actions.append(.report(.stepAtNextBoundary(round.kind)))
            }
        }
        requestCommitIfComplete(now: now, into: &actions)
    }

    private mutating func receiveConfirmation(
        rank: Int, step: Int, path: CheckpointPath?, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        if case .stopping(let stop) = phase, stop.supersededStep == step, stop.round.decidedStep != .some(step) {
            return // a checkpoint of the round this stop superseded, arriving late
        }
        if currentRound == nil, abandonedStep == step { return }
        guard let round = currentRound, case .decided(let expected) = round.target, ranks[rank].speaksProtocol else {
            warnOnce(rank, .unsolicitedConfirmation(rank: rank, step: step), into: &actions)
            return
        }
        if let earlier = ranks[rank].confirmation {
            warnOnce(rank, .repeatedConfirmation(rank: rank, step: step, first: earlier.step), into: &actions)
            return
        }
        if now >= round.requestedAt + policy.grace {
            // The deadline is part of the promise: what arrives after it can no longer be committed.
            ranks[rank].note = .confirmedAfterDeadline
            warnOnce(rank, .lateConfirmation(rank: rank, step: step, grace: policy.grace), into: &actions)
            return
        }
        ranks[rank].confirmation = .init(step: step, path: path)
        if let expected, step != expected {
            if round.kind == .stop {
                ranks[rank].note = step > expected ? .passedStopStep(expected) : .stoppedBeforeStopStep(expected)
            }
            roundFailed(.wrongStep(rank: rank, kind: round.kind, expected: expected, confirmed: step), now: now, into: &actions)
            return
        }
        requestCommitIfComplete(now: now, into: &actions)
    }

    private mutating func warnOnce(_ rank: Int, _ report: Report, into actions: inout [CoordinatorAction]) {
        if warnedConfirmation.insert(rank).inserted { actions.append(.report(report)) }
    }

    private mutating func requestCommitIfComplete(now: Instant, into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, case .decided = round.target, round.commit == .notRequested,
              round.problems.isEmpty, ranks.contains(where: \.speaksProtocol)
        else { return }
        while confirmationCursor < ranks.count {
            guard ranks[confirmationCursor].speaksProtocol, ranks[confirmationCursor].confirmation != nil else { return }
            confirmationCursor += 1
        }
        let steps = ranks.compactMap(\.confirmation?.step)
        guard let low = steps.min(), let high = steps.max() else { return }
        guard low == high else {
            roundFailed(.differentSteps(lowest: low, highest: high), now: now, into: &actions)
            return
        }
        round.commit = .pending(step: low)
        currentRound = round
        actions.append(.commit(step: low, paths: ranks.map { $0.confirmation?.path }, trigger: round.trigger))
    }

    private mutating func commitWritten(now: Instant, into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, case .pending(let step) = round.commit else { return }
        round.commit = .written(step: step)
        lastCommittedStep = step
        currentRound = round
        actions.append(.report(.committed(step: step)))
        for rank in ranks.indices where ranks[rank].isAlive && ranks[rank].speaksProtocol {
            actions.append(.send(rank: rank, .committed(step: step)))
        }
        if round.kind == .checkpoint { endCheckpoint(now: now) }
    }

    private mutating func commitFailed(_ reason: String, now: Instant, into actions: inout [CoordinatorAction]) {
        guard var round = currentRound, case .pending(let step) = round.commit else { return }
        round.commit = .failed(step: step)
        currentRound = round
        roundFailed(.commitFailed(reason), now: now, into: &actions)
    }

    /// A problem of the current round: a stop records it and will commit nothing; a checkpoint round
    /// is abandoned.
    private mutating func roundFailed(_ problem: Problem, now: Instant, into actions: inout [CoordinatorAction]) {
        guard let round = currentRound else { return }
        // The leader hears of the first problem only: one is enough to fail the round everywhere.
        if isClusterMember && round.problems.isEmpty { actions.append(.tellLeader(.roundFailed(round: round.id, problem))) }
        switch round.kind {
        case .stop:
            addProblem(problem)
            actions.append(.report(.stopProblem(problem)))
        case .checkpoint:
            abandonCheckpoint(problem, tellingLeader: false, now: now, into: &actions)
        }
    }

    /// The leader says round `round` failed elsewhere in the job: a stop records it (no commit can
    /// come), a checkpoint round is abandoned, and a commit this node waits for has failed.
    private mutating func failedElsewhere(_ round: Round, _ reason: String, now: Instant, into actions: inout [CoordinatorAction]) {
        let problem = Problem.failedElsewhere(reason)
        if case .pending(let step) = round.commit {
            var failed = round
            failed.commit = .failed(step: step)
            currentRound = failed
        }
        switch round.kind {
        case .stop:
            // Ranks that do not speak the protocol commit nothing anyway: their clean end stays clean.
            guard ranks.contains(where: \.speaksProtocol), round.committedStep == nil else { return }
            addProblem(problem)
            actions.append(.report(.stopProblem(problem)))
        case .checkpoint:
            abandonCheckpoint(problem, tellingLeader: false, now: now, into: &actions)
        }
    }

    /// The leader restarts the whole job: this node's ranks are torn down (or already are, after a
    /// failure here), and once they are gone the leader hears so.
    private mutating func restartJob(
        _ restart: Int, of maxRestarts: Int, _ reason: String, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard isClusterMember else { return }
        switch phase {
        case .running(let round):
            if let round { failedElsewhere(round, reason, now: now, into: &actions) }
            failedElsewhere = reason
            phase = .failing(nil, stopRequested: false)
            actions.append(.report(.jobRestarting(reason, restart: restart, maxRestarts: maxRestarts, stopping: livingCount)))
            terminateLiving(now: now, into: &actions)
        case .failing(let failure, _):
            phase = .failing(failure, stopRequested: false)
            actions.append(.report(.jobRestarting(reason, restart: restart, maxRestarts: maxRestarts, stopping: 0)))
        case .restarting(.none):
            actions.append(.report(.jobRestarting(reason, restart: restart, maxRestarts: maxRestarts, stopping: 0)))
            if gangCleared { tellCleared(restart, into: &actions) }
        case .stopping, .restarting(.some), .finished:
            // The leader restarts no job that is stopping: this is not its word.
            return
        }
        jobRestart = restart
    }

    private func tellCleared(_ restart: Int, into actions: inout [CoordinatorAction]) {
        actions.append(.report(.clearedForRestart(restart: restart)))
        actions.append(.tellLeader(.cleared(restart: restart)))
    }

    /// A new attempt: every rank is spawned again as restart `restart`.
    private mutating func relaunch(as restart: Int, into actions: inout [CoordinatorAction]) {
        endAttempt()
        restarts = restart
        ranks = Array(repeating: RankRecord(), count: ranks.count)
        livingCount = ranks.count
        earliestKillAt = nil
        phase = .running(checkpoint: nil)
        nextCheckpointAt = nil
        jobRestart = nil
        gangCleared = false
        failedElsewhere = nil
        actions.append(.launch(restart: restart))
    }

    /// Another node failed, or the leader gave up restarting: this node's ranks are torn down and
    /// the run fails.
    private mutating func nodeFailed(_ reason: String, now: Instant, into actions: inout [CoordinatorAction]) {
        switch phase {
        case .running(let round):
            if let round { failedElsewhere(round, reason, now: now, into: &actions) }
            failedElsewhere = reason
            phase = .failing(nil, stopRequested: true)
            actions.append(.report(.nodeFailed(reason, stopping: livingCount)))
            terminateLiving(now: now, into: &actions)
        case .stopping(let stop):
            failedElsewhere = reason
            failedElsewhere(stop.round, reason, now: now, into: &actions)
            actions.append(.report(.nodeFailed(reason, stopping: livingCount)))
            terminateLiving(now: now, into: &actions)
        case .failing(let failure, let stopRequested):
            // The leader's verdict on a failure: no restart.
            guard isClusterMember, !stopRequested else { return }
            if failure == nil { failedElsewhere = failedElsewhere ?? reason }
            jobRestart = nil
            phase = .failing(failure, stopRequested: true)
            actions.append(.report(.nodeFailed(reason, stopping: 0)))
        case .restarting(.none) where isClusterMember:
            // Cleared (or clearing) for a restart that will not come.
            if firstFailure == nil || jobRestart != nil { failedElsewhere = reason }
            actions.append(.report(.nodeFailed(reason, stopping: 0)))
            endAttempt()
            phase = .finished(exitCode: ExitCode.rankFailed)
            actions.append(.finish(exitCode: ExitCode.rankFailed))
        case .restarting, .finished:
            break
        }
    }

    private mutating func abandonCheckpoint(
        _ problem: Problem, tellingLeader: Bool = true, now: Instant, into actions: inout [CoordinatorAction]
    ) {
        guard case .running(.some(let round)) = phase else { return }
        actions.append(.report(.checkpointAbandoned(problem)))
        if isClusterMember && tellingLeader { actions.append(.tellLeader(.roundFailed(round: round.id, problem))) }
        if round.target == .awaitingLeader || round.isAligning {
            // Ranks that answered wait for the step at their next boundary: they must get one.
            let step = answeredSteps.max().map { $0 + 1 }
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
                // A member waits for the leader's verdict: a restart of the whole job, or none.
                phase = .failing(failure, stopRequested: false)
                actions.append(.report(.rankFailed(rank: rank, status, stopping: livingCount)))
                if isClusterMember { actions.append(.tellLeader(.rankFailed(rank: rank, status))) }
                terminateLiving(now: now, into: &actions)
                return
            }
            if round != nil, ranks[rank].speaksProtocol, ranks[rank].confirmation == nil {
                abandonCheckpoint(.endedBeforeConfirming(rank: rank, status), now: now, into: &actions)
            }
        case .stopping(let stop):
            if ranks[rank].speaksProtocol {
                // A rank that confirmed (rightly or not) or missed the grace already had its say.
                guard ranks[rank].confirmation == nil, !stop.graceExpired, stop.round.committedStep == nil else { return }
                ranks[rank].note = .endedBeforeConfirming
                roundFailed(.endedBeforeConfirming(rank: rank, status), now: now, into: &actions)
                // Its peers are probably blocked in a collective with it: waiting for grace serves nothing.
                terminateLiving(now: now, into: &actions)
            } else {
                // Ending on the SIGTERM a stop sent is how a plain process stops (systemd's view too),
                // once it was running: before that, it had nothing to save and saved nothing.
                if status == .signaled(SignalNumber.terminate) && !ranks[rank].startedBeforeStop {
                    ranks[rank].note = .stoppedBeforeStarting
                    roundFailed(.stoppedBeforeStarting(rank: rank), now: now, into: &actions)
                } else if !status.isSuccess && status != .signaled(SignalNumber.terminate) {
                    ranks[rank].note = .didNotStopCleanly
                    roundFailed(.didNotStopCleanly(rank: rank, status), now: now, into: &actions)
                }
                // A gang with a rank that never said hello commits nothing anyway, and the ranks that
                // did are probably blocked in a collective with the one that just ended.
                if ranks.contains(where: { $0.isAlive && $0.speaksProtocol }) { terminateLiving(now: now, into: &actions) }
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
                if case .aligning(let deadline) = round.target, now >= deadline { decide(now: now, into: &actions) }
                if case .running(.some(let current)) = phase, now >= current.requestedAt + policy.grace, !awaitsLeadersCommit(current) {
                    let missing = ranks.indices.filter {
                        ranks[$0].isAlive && ranks[$0].speaksProtocol && ranks[$0].confirmation == nil
                    }
                    abandonCheckpoint(.notConfirmedInTime(ranks: missing, grace: policy.grace), now: now, into: &actions)
                }
            } else if let due = nextCheckpointAt, now >= due {
                nextCheckpointAt = nil
                startCheckpoint(trigger: "periodic", periodic: true, now: now, into: &actions)
            }
        case .stopping(var stop):
            if case .aligning(let deadline) = stop.round.target, now >= deadline {
                decide(now: now, into: &actions)
                if case .stopping(let decided) = phase { stop = decided }
            }
            if !stop.graceExpired, now >= stop.round.requestedAt + policy.grace {
                stop.graceExpired = true
                phase = .stopping(stop)
                graceExpired(now: now, into: &actions)
            } else if !stop.graceExpired, now >= stop.nextProgressAt {
                stop.nextProgressAt = now + StopPolicy.progressInterval
                phase = .stopping(stop)
                let waiting = ranks.indices.filter { ranks[$0].isAlive && ranks[$0].confirmation == nil }
                if !waiting.isEmpty {
                    let left = policy.grace - now.seconds(since: stop.round.requestedAt)
                    actions.append(.report(.waiting(ranks: waiting, step: stop.round.decidedStep ?? nil, graceLeft: left)))
                }
            }
        case .restarting(.some(let resumeAt)) where now >= resumeAt:
            relaunch(as: restarts + 1, into: &actions)
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

    /// The stop's grace is over: nothing can be committed unless it already was asked for; ranks still
    /// running are hurried.
    private mutating func graceExpired(now: Instant, into actions: inout [CoordinatorAction]) {
        let late = ranks.indices.filter { ranks[$0].isAlive }
        let missing = late.filter { ranks[$0].speaksProtocol && ranks[$0].confirmation == nil }
        for rank in missing { ranks[rank].note = .noConfirmationBeforeDeadline }
        if case .stopping(let stop) = phase, stop.round.commit == .notRequested, !missing.isEmpty {
            addProblem(.notConfirmedInTime(ranks: missing, grace: policy.grace))
        }
        guard !late.isEmpty else { return }
        var terminated: [Int] = []
        var killedNow: [Int] = []
        var killedLater: [Int] = []
        for rank in late {
            switch ranks[rank].teardown {
            case .none: terminated.append(rank)
            case .terminated(let killAt) where killAt <= now: killedNow.append(rank)
            case .terminated: killedLater.append(rank)
            case .killed: break
            }
        }
        if !(terminated.isEmpty && killedNow.isEmpty && killedLater.isEmpty) {
            actions.append(.report(.graceExpired(.init(
                grace: policy.grace, killAfter: policy.killAfter,
                terminated: terminated, killedNow: killedNow, killedLater: killedLater))))
        }
        terminateLiving(now: now, into: &actions)
    }

    private mutating func finishIfDone(now: Instant, into actions: inout [CoordinatorAction]) {
        guard livingCount == 0 else { return }
        let code: Int32
        switch phase {
        case .running:
            code = 0
        case .failing(let failure, let stopRequested):
            if isClusterMember && !stopRequested {
                // The gang is cleared while the leader's verdict comes (it answers every failure).
                phase = .restarting(resumeAt: nil)
                actions.append(.awaitGangExit)
                return
            }
            if let failure, !stopRequested && restarts < policy.maxRestarts {
                phase = .restarting(resumeAt: nil)
                actions.append(.report(.clearingBeforeRestart(failure, restart: restarts + 1, maxRestarts: policy.maxRestarts)))
                actions.append(.awaitGangExit)
                return
            }
            if restarts > 0 {
                actions.append(.report(.givingUp(restarts: restarts, maxRestarts: policy.maxRestarts)))
            }
            code = ExitCode.rankFailed
        case .stopping(let stop):
            // A commit asked for is waiting on the disk: the exit code depends on it.
            if case .pending = stop.round.commit { return }
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

    /// A member whose ranks all confirmed a checkpoint waits for the leader's answer (its commit, or
    /// the round's failure), which the leader's own deadline bounds, rather than abandoning the round
    /// at its own grace while the leader commits it.
    private func awaitsLeadersCommit(_ round: Round) -> Bool {
        guard isClusterMember, case .pending = round.commit else { return false }
        return true
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
            case .failing, .restarting, .finished: return nil
            }
        }
        set {
            guard let newValue else { return }
            switch phase {
            case .running(.some): phase = .running(checkpoint: newValue)
            case .stopping(var stop):
                stop.round = newValue
                phase = .stopping(stop)
            case .running(.none), .failing, .restarting, .finished: break
            }
        }
    }

    private mutating func addProblem(_ problem: Problem) {
        guard var round = currentRound else { return }
        round.problems.append(problem)
        currentRound = round
    }
}
