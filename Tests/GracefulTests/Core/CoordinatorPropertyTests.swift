import Foundation
import GracefulProtocol
import Testing

@testable import Graceful

/// Random walks of events through the coordinator, against a model of the process layer, checking
/// every guarantee documented on `Coordinator` after every step.
///
/// `GRACEFUL_PROPERTY_RUNS` sets the number of walks; `GRACEFUL_PROPERTY_SEED` replays one walk (the
/// seed a failure prints).
@Suite struct CoordinatorPropertyTests {
    @Test func randomWalksKeepEveryGuarantee() {
        let seeds = propertySeeds(defaultRuns: 3000)
        for seed in seeds {
            var walk = Walk(seed: seed)
            do {
                try walk.run()
            } catch {
                Issue.record("\(error.message)\nreplay with GRACEFUL_PROPERTY_SEED=\(seed)\n\(walk.trace.suffix(60).joined(separator: "\n"))")
                return
            }
        }
    }
}

struct Violation: Error {
    let message: String
}

/// One random run: the coordinator, and a faithful model of ranks and of the process layer around it.
/// In cluster-member mode (`CoordinatorClusterPropertyTests`) the model also plays the leader.
struct Walk {
    var random: SeededGenerator
    let policy: StopPolicy
    let rankCount: Int
    /// A member of a multi-node job: stops and checkpoints come from the leader, which chooses each
    /// round's step and commits.
    let cluster: Bool
    var machine: Coordinator
    var now = Instant.seconds(1000)
    var header = ""
    /// Every event and the coordinator's actions, formatted only when a walk fails (formatting is slow).
    var log: [(now: Instant, event: CoordinatorEvent, actions: [CoordinatorAction])] = []

    var trace: [String] {
        [header] + log.flatMap { entry in
            ["\(entry.now) \(entry.event)"] + entry.actions.compactMap { action in
                if case .report = action { return nil }
                return "  -> \(action)"
            }
        }
    }

    // The process layer.
    var alive: [Bool]
    var exits: [Graceful.ExitStatus?]
    var saidHello: [Bool]
    var wroteOutput: [Bool]
    var launchedAt = Instant.seconds(1000)
    /// How a signalled rank is about to end; delivered at a random later step.
    var pendingDeath: [Graceful.ExitStatus?]
    var pendingCommits: [(step: Int, kind: RoundKind, round: Int?)] = []
    var pendingGangGone = false
    var pendingLaunched = false
    var gangGoneGiven = false
    var pathCounter = 0

    // What the guarantees are checked against.
    enum RoundKind { case stop, checkpoint }
    struct Round {
        var id: Int?
        var kind: RoundKind
        var startedAt: Instant
        var helloBefore: [Bool]
        var step: Int??
        var confirmations: [[(step: Int, path: CheckpointPath)]]
        var commitAsked = false
        /// Cluster mode: the first usable answer of each rank that speaks, while the round aligns.
        var positions: [Int: Int?] = [:]
        /// Cluster mode: the node told the leader its furthest position.
        var toldPosition = false
    }
    var round: Round?
    var triggerReceived = false
    var attemptFailed = false
    var helloBeforeStop: [Bool]?
    /// Per rank, whether it had started running when the stop was requested.
    var startedBeforeStop: [Bool]?
    var lastStopSignalAt: Instant?
    var forcedBy: Int32?
    /// The stop was started by the control file and no stop signal has counted since: the first one
    /// is the same request and forces nothing.
    var awaitingFirstSignal = false
    var stopCommitted = false
    var launches = 0
    var finished = false

    // Cluster mode: the event being handled, and the model leader.
    var event: CoordinatorEvent = .tick
    var runningBefore = true
    var roundBefore: Int?
    /// Ranks that got SIGTERM or SIGKILL in this attempt.
    var signalled: [Bool]
    /// The steps the leader chose, by round: every `stopAt`/`checkpointAt` must carry its round's.
    var chosenSteps: [Int: Int?] = [:]
    /// The leader's answers not delivered yet: a step, or a failure of the round.
    var pendingSteps: [(round: Int, step: Int?, fails: Bool)] = []
    /// Rounds the leader already answered (or will): one step per round.
    var leaderAnswered: Set<Int> = []
    /// Rounds whose pending commit the node was told failed (elsewhere, or the node failed).
    var voidedRounds: Set<Int> = []
    /// The leader's stop command came (once per job).
    var leaderStopped = false
    /// Cluster mode: the rounds this node told the leader failed.
    var toldFailed: Set<Int> = []
    /// Cluster mode: restarts the model leader started; the one this node was asked to clear for; whether
    /// it said it cleared; whether the leader gave up restarting (`.nodeFailed`).
    var leaderRestarts = 0
    var restartAsked: Int?
    var clearedTold = false
    var leaderGaveUp = false
    /// Cluster mode: the milestones this walk reached.
    var seen: Set<String> = []

    init(seed: UInt64, cluster: Bool = false) {
        random = SeededGenerator(seed: seed)
        self.cluster = cluster
        rankCount = Int.random(in: 1...4, using: &random)
        // A member's checkpoint rounds are the leader's (the supervisor clears the period).
        var checkpointEvery: Double?
        if !cluster, random.chance(0.3) { checkpointEvery = random.pick([0.2, 1, 3]) }
        policy = StopPolicy(
            grace: random.pick([0.5, 1, 2, 5]),
            killAfter: random.pick([0.1, 0.5, 1, 2]),
            alignTimeout: random.pick([0.1, 0.5, 1]),
            maxRestarts: Int.random(in: 0...2, using: &random),
            restartBackoff: random.pick([0.1, 0.5, 1]),
            checkpointEvery: checkpointEvery)
        machine = Coordinator(rankCount: rankCount, policy: policy, resumedStep: random.chance(0.3) ? 40 : nil, clusterMember: cluster)
        signalled = Array(repeating: false, count: rankCount)
        alive = Array(repeating: true, count: rankCount)
        exits = Array(repeating: nil, count: rankCount)
        saidHello = Array(repeating: false, count: rankCount)
        wroteOutput = Array(repeating: false, count: rankCount)
        pendingDeath = Array(repeating: nil, count: rankCount)
        header = "\(rankCount) rank(s), \(policy)\(cluster ? ", a member of a multi-node job" : "")"
    }

    mutating func run() throws(Violation) {
        try send(.launched)
        for _ in 0..<Int.random(in: 0...80, using: &random) where !finished {
            try randomStep()
        }
        var steps = 0
        while !finished {
            steps += 1
            guard steps < 2000 else { throw Violation(message: "liveness: the run did not finish") }
            try drainStep()
        }
        for event in [CoordinatorEvent.tick, .trigger(.signal(SignalNumber.interrupt)), .exited(rank: 0, .exited(0))] {
            now = now + 100
            let actions = machine.handle(event, now: now)
            try expect(actions.isEmpty, "actions after finish: \(actions)")
        }
    }

    // MARK: Steps

    var living: [Int] { (0..<rankCount).filter { alive[$0] } }

    /// Whether a trigger now starts a stop (rather than escalating one or cancelling a restart).
    var running: Bool { !triggerReceived && !attemptFailed }

    mutating func randomStep() throws(Violation) {
        if random.chance(0.3) { now = now + Double.random(in: 0...0.4, using: &random) }
        // A round through the leader takes more steps: ranks that do the right thing reach its commit.
        if cluster && random.chance(0.3) { return try cooperativeRankStep() }
        let choice = Int.random(in: 0..<100, using: &random)
        switch choice {
        case 0..<20:
            now = now + random.pick([0, 0.05, 0.2, 0.3, 1, policy.grace, StopPolicy.plainStartupTime])
            try send(.tick)
        case 20..<25:
            if let deadline = machine.nextDeadline, deadline > now { now = deadline }
            try send(.tick)
        case 25..<33:
            if let rank = living.filter({ !saidHello[$0] }).randomElement(using: &random) { try send(.hello(rank: rank)) }
        case 33..<45:
            if let rank = living.randomElement(using: &random) {
                let id = (round?.id ?? 1) + random.pick([0, 0, 0, -1, 1])
                let step: Int? = random.chance(0.2) ? nil : randomStepNumber(near: random.chance(0.5) ? 10 : 1000)
                try send(.position(rank: rank, id: id, step: step))
            }
        case 45..<60:
            if let rank = living.randomElement(using: &random) {
                let decided = round?.step.flatMap { $0 } ?? 11
                let step = random.chance(0.7) ? decided : randomStepNumber(near: decided)
                pathCounter += 1
                try send(.checkpointed(rank: rank, step: step, path: CheckpointPath("r\(rank)c\(pathCounter)")))
            }
        case 60..<65:
            if let rank = living.randomElement(using: &random) { try send(.exited(rank: rank, randomStatus())) }
        case 65..<73:
            if cluster {
                try leaderStopStep()
            } else if pendingCommits.allSatisfy({ $0.kind == .stop }) {
                try send(.trigger(randomTrigger()))
            }
        case 73..<77:
            try send(.requestCheckpoint("SIGUSR2"))
        case 77..<80:
            if let rank = living.filter({ !wroteOutput[$0] }).randomElement(using: &random) { try send(.output(rank: rank)) }
        case 80..<90:
            if let rank = (0..<rankCount).filter({ pendingDeath[$0] != nil }).randomElement(using: &random) {
                try send(.exited(rank: rank, pendingDeath[rank]!))
            }
        default:
            if cluster && random.chance(0.4) {
                try leaderEventStep()
            } else {
                try answerPending()
            }
        }
    }

    mutating func drainStep() throws(Violation) {
        if try answerPending() { return }
        if let rank = (0..<rankCount).first(where: { pendingDeath[$0] != nil }) {
            try send(.exited(rank: rank, pendingDeath[rank]!))
        } else if running, let rank = living.first {
            if cluster && random.chance(0.2) {
                try send(.nodeFailed("node 1 (h1) is gone: reset"))
            } else if random.chance(0.5) {
                try send(.trigger(randomTrigger()))
            } else {
                try send(.exited(rank: rank, randomStatus()))
            }
        } else if let deadline = machine.nextDeadline {
            now = max(now, deadline)
            try send(.tick)
        } else {
            throw Violation(message: "liveness: ranks \(living) alive, nothing pending and no deadline in \(machine.phase)")
        }
    }

    /// Answers one thing the coordinator waits for; false when nothing is pending.
    @discardableResult
    mutating func answerPending() throws(Violation) -> Bool {
        if pendingLaunched {
            pendingLaunched = false
            try send(.launched)
        } else if !pendingCommits.isEmpty {
            let commit = pendingCommits.removeFirst()
            if cluster {
                try answerCommitAsLeader(commit)
            } else if random.chance(0.85) {
                if commit.kind == .stop { stopCommitted = true }
                try send(.commitWritten)
            } else {
                try send(.commitFailed("disk full"))
            }
        } else if pendingGangGone {
            pendingGangGone = false
            gangGoneGiven = true
            try send(.gangGone)
        } else if cluster, !pendingSteps.isEmpty {
            try deliverLeaderStep()
        } else if cluster, let verdict = leaderVerdict() {
            try send(verdict)
        } else {
            return false
        }
        return true
    }

    mutating func randomStepNumber(near center: Int) -> Int {
        random.pick([center, center &- 1, center &+ 1, center &+ 2, 0, -1, Int.max, Int.min, 9_007_199_254_740_991, Int.max - 1])
    }

    mutating func randomStatus() -> Graceful.ExitStatus {
        random.pick([.exited(0), .exited(0), .exited(1), .exited(3), .signaled(SignalNumber.kill), .signaled(11), .signaled(SignalNumber.terminate)])
    }

    mutating func randomTrigger() -> Trigger {
        random.pick([
            .controlFile, .signal(SignalNumber.interrupt), .signal(SignalNumber.terminate),
            .signal(SignalNumber.user1), .signal(SignalNumber.hangup), .quit(SignalNumber.quit), .quit(SignalNumber.abort),
        ])
    }

    // MARK: Feeding one event and checking every guarantee

    mutating func send(_ event: CoordinatorEvent) throws(Violation) {
        log.append((now, event, []))
        self.event = event
        runningBefore = running
        var acceptsStep = false
        let startsStop: Bool
        switch event {
        case .launched:
            launchedAt = now
            startsStop = false
        case .output(let rank):
            wroteOutput[rank] = true
            startsStop = false
        case .hello(let rank):
            saidHello[rank] = true
            startsStop = false
        case .exited(let rank, let status):
            alive[rank] = false
            exits[rank] = status
            pendingDeath[rank] = nil
            if !status.isSuccess && running { attemptFailed = true }
            startsStop = false
        case .checkpointed(let rank, let step, let path):
            if var current = round, current.step != nil {
                current.confirmations[rank].append((step, path!))
                round = current
            }
            startsStop = false
        case .trigger(let trigger), .escalate(let trigger):
            startsStop = running
            // The leader's escalation counts whatever the debounce, and is never the first signal.
            let escalation = if case .escalate = event { true } else { false }
            if let number = trigger.signalNumber {
                let counted = escalation || lastStopSignalAt.map { now.seconds(since: $0) >= policy.signalDebounce } ?? true
                lastStopSignalAt = now
                let quits = if case .quit = trigger { true } else { false }
                let absorbed = !startsStop && counted && !attemptFailed && awaitingFirstSignal && !quits && !escalation
                if !startsStop && counted && !attemptFailed && !escalation { awaitingFirstSignal = false }
                if (quits && startsStop || !startsStop && counted) && !attemptFailed && !absorbed { forcedBy = number }
            }
            if startsStop {
                awaitingFirstSignal = trigger == .controlFile
                helloBeforeStop = saidHello
                let ranLongEnough = now.seconds(since: launchedAt) >= StopPolicy.plainStartupTime
                startedBeforeStop = (0..<rankCount).map { saidHello[$0] || wroteOutput[$0] || ranLongEnough }
                round = Round(id: nil, kind: .stop, startedAt: now, helloBefore: saidHello, step: nil,
                              confirmations: Array(repeating: [], count: rankCount))
            }
            triggerReceived = true
        case .position(let rank, let id, let step):
            if cluster, var current = round, current.id == id, !current.toldPosition, current.step == nil,
               current.helloBefore[rank], current.positions[rank] == nil {
                current.positions[rank] = .some(step)
                round = current
            }
            startsStop = false
        case .nodeFailed:
            // Another node failed: while training, this node fails (1); during a stop, no commit can come.
            if running { attemptFailed = true }
            if let id = machine.currentRoundID { voidedRounds.insert(id) }
            restartAsked = nil
            leaderGaveUp = true
            startsStop = false
        case .restartJob(let restart, _, _):
            // The leader restarts the job: while training, this attempt fails (elsewhere).
            if running { attemptFailed = true }
            if attemptFailed && !triggerReceived {
                if let id = machine.currentRoundID { voidedRounds.insert(id) }
                restartAsked = restart
            }
            startsStop = false
        case .roundFailedElsewhere(let id, _):
            // Only the round in flight: the leader's rounds are mapped to this node's as they start.
            if machine.currentRoundID == id { voidedRounds.insert(id) }
            startsStop = false
        case .stepChosen(let id, let step):
            // Taken while the round waits for the leader, or still aligns (the leader's deadline passed
            // first); once, for the round in flight.
            acceptsStep = machine.currentRoundID == id && round?.id == id && round?.step == nil
            if acceptsStep { chosenSteps[id] = step }
            startsStop = false
        default:
            startsStop = false
        }
        let livingBefore = living
        let commitPendingBefore = cluster && machineCommitPending
        roundBefore = machine.currentRoundID
        let actions = machine.handle(event, now: now)
        log[log.count - 1].actions = actions
        for action in actions { _ = isReport(action) }
        if startsStop, case .quit = event.stopTrigger {
            for rank in livingBefore {
                let terminated = actions.contains { $0 == .signal(rank: rank, SignalNumber.terminate) || $0 == .signal(rank: rank, SignalNumber.kill) }
                try expect(terminated, "a quit did not send SIGTERM to rank \(rank)")
            }
        }
        if startsStop {
            for rank in livingBefore {
                let told = actions.contains { action in
                    switch action {
                    case .send(rank, .stop): return true
                    case .signal(rank, SignalNumber.terminate), .signal(rank, SignalNumber.kill): return true
                    default: return false
                    }
                }
                try expect(told, "the stop reached rank \(rank) neither as a message nor as SIGTERM")
            }
        }
        for action in actions {
            try expect(!finished, "\(action) after finish")
            try check(action, among: actions)
        }
        if cluster {
            try checkCluster(event, actions, acceptsStep: acceptsStep, commitPendingBefore: commitPendingBefore)
            // The leader answers at once half of the time (else later, or never).
            if !finished, !pendingCommits.isEmpty || !pendingSteps.isEmpty, random.chance(0.5) { try answerPending() }
        }
    }

    func isReport(_ action: CoordinatorAction) -> Bool {
        if case .report(let report) = action { _ = report.description }
        if case .report = action { return true }
        return false
    }

    mutating func check(_ action: CoordinatorAction, among actions: [CoordinatorAction]) throws(Violation) {
        switch action {
        case .ring, .report:
            break
        case .tellLeader(let report):
            try expect(cluster, "\(action) from a coordinator of one node")
            try checkTellLeader(report)
        case .send(let rank, let message):
            try expect(alive[rank], "a message to rank \(rank), which ended")
            switch message {
            case .stop(let id, _):
                if round?.kind == .stop, round?.id == nil { round?.id = id }
                try expect(round?.id == id, "stop \(id) though no stop was requested")
            case .checkpoint(let id, _):
                if round?.id != id {
                    round = Round(id: id, kind: .checkpoint, startedAt: now, helloBefore: saidHello, step: nil,
                                  confirmations: Array(repeating: [], count: rankCount))
                }
            case .stopAt(let id, let step), .checkpointAt(let id, let step):
                if cluster { try checkStepSent(message, among: actions) }
                if round?.id == id, round?.step == nil { round?.step = .some(step) }
            case .committed:
                break
            }
        case .signal(let rank, let signal):
            try expect(alive[rank], "signal \(signal) to rank \(rank), which ended")
            signalled[rank] = true
            if signal == SignalNumber.kill {
                pendingDeath[rank] = .signaled(SignalNumber.kill)
            } else if pendingDeath[rank] == nil, random.chance(0.5) {
                pendingDeath[rank] = random.pick([.signaled(signal), .exited(0), .exited(1)])
            }
        case .commit(let step, let paths, _):
            guard var current = round, let id = current.id else { throw Violation(message: "a commit outside any round") }
            try expect(!current.commitAsked, "a second commit in round \(id)")
            try expect(current.helloBefore.allSatisfy { $0 }, "a commit though some rank never said hello")
            try expect(now < current.startedAt + policy.grace, "a commit after the grace of round \(id) expired")
            // A round decided without a step ("each rank's next boundary") commits the step every rank confirmed.
            try expect(current.step == .some(.some(step)) || current.step == .some(nil),
                       "a commit of step \(step), not the round's step \(String(describing: current.step))")
            try expect(paths.count == rankCount, "a commit with \(paths.count) paths")
            for rank in 0..<rankCount {
                let first = current.confirmations[rank].first { $0.step == step }
                try expect(first != nil && paths[rank] == first?.path,
                           "rank \(rank)'s path \(String(describing: paths[rank])) is not its first confirmation of step \(step)")
            }
            current.commitAsked = true
            round = current
            pendingCommits.append((step, current.kind, id))
            seen.insert("commit")
        case .awaitGangExit:
            // A member clears a failed gang while the leader's verdict comes; no stop forbids it.
            if cluster { try expect(attemptFailed && !triggerReceived, "a member cleared its gang with no failure to restart from") }
            try expect(living.isEmpty, "the gang is cleared while ranks \(living) live")
            pendingGangGone = true
            gangGoneGiven = false
        case .launch(let restart):
            launches += 1
            if cluster {
                // Only the leader's relaunch of the restart this node cleared for.
                try expect(event == .relaunch(restart: restart) && clearedTold && restartAsked == restart,
                           "launch \(restart) on \(event), cleared: \(clearedTold), asked: \(String(describing: restartAsked))")
                restartAsked = nil
                clearedTold = false
                seen.insert("relaunched")
            } else {
                try expect(launches <= policy.maxRestarts, "launch \(launches) beyond --max-restarts \(policy.maxRestarts)")
                try expect(restart == launches, "launch numbered \(restart), expected \(launches)")
            }
            try expect(gangGoneGiven, "a launch before the old gang is gone")
            try expect(!triggerReceived, "a launch after a stop was requested")
            alive = Array(repeating: true, count: rankCount)
            exits = Array(repeating: nil, count: rankCount)
            saidHello = Array(repeating: false, count: rankCount)
            wroteOutput = Array(repeating: false, count: rankCount)
            pendingDeath = Array(repeating: nil, count: rankCount)
            signalled = Array(repeating: false, count: rankCount)
            attemptFailed = false
            gangGoneGiven = false
            round = nil
            pendingLaunched = true
        case .finish(let code):
            try expect(living.isEmpty, "finish while ranks \(living) live")
            let expected = expectedExitCode()
            try expect(code == expected, "exit code \(code), expected \(expected)")
            finished = true
        }
    }

    /// The documented exit-code table, from what was observed. A member of a multi-node job keeps it,
    /// with two differences (see `CoordinatorClusterPropertyTests`): `.nodeFailed` while training is a
    /// failed attempt (1, never restarted), and a stop's commit counts once the leader wrote it.
    func expectedExitCode() -> Int32 {
        if attemptFailed { return ExitCode.rankFailed }
        if !triggerReceived { return 0 }
        if stopCommitted { return 0 }
        if let forcedBy { return 128 + forcedBy }
        let plainGang = !(helloBeforeStop ?? []).contains(true)
        let clean = exits.indices.allSatisfy { rank in
            exits[rank] == .exited(0)
                || exits[rank] == .signaled(SignalNumber.terminate) && startedBeforeStop?[rank] == true
        }
        return plainGang && clean ? 0 : ExitCode.notCommitted
    }

    func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws(Violation) {
        if !condition { throw Violation(message: message()) }
    }
}
