import Foundation
import GracefulProtocol
import Testing

@testable import Graceful

/// Random walks of joins, messages, commit outcomes and ticks through the leader of a multi-node
/// job, against a model of what it must say, checking every guarantee documented on `ClusterLeader`
/// after every input, and that a round in flight always has a deadline.
///
/// `GRACEFUL_PROPERTY_RUNS` sets the number of walks; `GRACEFUL_PROPERTY_SEED` replays one walk (the
/// seed a failure prints).
@Suite struct ClusterLeaderPropertyTests {
    @Test func randomWalksKeepEveryGuarantee() {
        let seeds = propertySeeds(defaultRuns: 1500)
        var seen: Set<String> = []
        for seed in seeds {
            var walk = LeaderWalk(seed: seed)
            do {
                try walk.run()
            } catch {
                Issue.record("\(error.message)\nreplay with GRACEFUL_PROPERTY_SEED=\(seed)\n\(walk.trace.suffix(60).joined(separator: "\n"))")
                return
            }
            seen.formUnion(walk.seen)
        }
        // The walks reach what the guarantees are about, or they would pass without checking it.
        if seeds.count >= 500 { #expect(Set(LeaderWalk.milestones).subtracting(seen).isEmpty, "never reached: \(Set(LeaderWalk.milestones).subtracting(seen).sorted())") }
    }
}

/// What the leader is fed: what a node's coordinator says, what the links see, the commit's outcome.
enum LeaderInput: CustomStringConvertible {
    case join(ClusterJoin)
    case lost(node: Int)
    case message(ClusterNodeMessage, from: Int)
    case commitWritten(round: Int)
    case commitFailed(round: Int)
    case tick

    var description: String {
        switch self {
        case .join(let join): return "join node \(join.node)/\(join.nodeCount) -n \(join.localRanks) \(join.command) \(join.commit.map { "\($0)" } ?? "-") \(join.host)"
        case .lost(let node): return "lost node \(node)"
        case .message(let message, let node): return "node \(node): \(message)"
        case .commitWritten(let round): return "commit of round \(round) written"
        case .commitFailed(let round): return "commit of round \(round) failed"
        case .tick: return "tick"
        }
    }
}

/// One random job: the leader, and a model of what it must do, input by input.
struct LeaderWalk {
    var random: SeededGenerator
    let nodeCount: Int
    let localRanks: Int
    let policy: ClusterLeader.Policy
    let command = ["python", "train.py"]
    let leaderJoin: ClusterJoin
    let record: String?
    var leader: ClusterLeader
    var now = Instant.seconds(1000)
    let header: String
    /// Every input and what the leader said, formatted only when a walk fails (formatting is slow).
    var log: [(now: Instant, input: LeaderInput, actions: [ClusterLeader.Action])] = []

    var trace: [String] {
        [header] + log.flatMap { entry in
            ["\(entry.now) \(entry.input)"] + entry.actions.compactMap { action in
                if case .report = action { return nil }
                return "  -> \(action)"
            }
        }
    }

    // The model.
    enum Stage: Equatable { case gathering, running, restarting, aborted }
    var stage = Stage.gathering
    let rendezvousDeadline: Instant
    var joins: [Int: ClusterJoin]
    var living: Set<Int> = []
    /// Nodes that said they finished (not lost).
    var finished: Set<Int> = []
    var jobFailed = false
    var stopTrigger: Trigger?
    var stopSignals: [Int: Int] = [:]
    /// When the next periodic checkpoint round is due (none once one is running).
    var periodicDue: Instant?
    var lastRoundID = 0
    var round: Round?
    /// The rounds whose commit was asked for.
    var commitsAsked: Set<Int> = []
    /// The round whose commit the leader asked for and nobody answered yet.
    var pendingCommit: Int?
    var launches = 0
    /// Restarts started; during one, its deadline, its earliest relaunch and the nodes ready for it.
    var restarts = 0
    var restartDeadline = Instant.seconds(0)
    var relaunchAt = Instant.seconds(0)
    var ready: Set<Int> = []
    /// The job's last commit: what a node joining again must not be ahead of, and what a relaunch resumes.
    var leaderCommit: ClusterJoin.Commit?
    var currentRecord: String?
    /// The milestones this walk reached.
    var seen: Set<String> = []
    static let milestones = [
        "launch", "launch of one node", "refused: disagreement", "refused: timeout", "left before launch", "stop", "checkpoint",
        "periodic", "superseded", "step", "step at the alignment deadline", "commit", "committed", "commit failed",
        "round failed by a node", "grace expired", "ended before confirming", "escalation", "first signal again",
        "node failed", "every node ended", "restart", "cleared", "rejoin", "rejoin refused", "relaunch", "lost during restart",
        "restart abandoned: stop", "restart abandoned: timeout", "restart abandoned: node ended", "stop after a node finished",
    ]

    enum Kind { case stop, checkpoint }
    struct Round {
        let id: Int
        let kind: Kind
        let trigger: String
        let startedAt: Instant
        var positions: [Int: Int?] = [:]
        var decided = false
        var step: Int?
        var confirmations: [Int: (step: Int, paths: [CheckpointPath?])] = [:]
        var failed = false
        var commitAsked = false
    }

    /// What one input must make the leader do, besides its reports.
    struct Expected {
        var commands: [Int: [ClusterCommand]] = [:]
        var commit: ClusterLeader.Action?
        /// The exact line of an abort, or words it must contain.
        var abortLine: String?
        var abortNaming: [String]?
        /// Who caused a job failure: every `nodeFailed` line names it.
        var failedNode: Int?
        /// The join just received is refused on its connection.
        var refuseJoin = false

        mutating func toEach(_ nodes: some Sequence<Int>, _ command: ClusterCommand) {
            for node in nodes.sorted() { commands[node, default: []].append(command) }
        }
    }

    var ended: Bool { stage == .aborted || stage == .running && living.isEmpty }

    var world: ClusterWorld { ClusterWorld(runID: "run-b", nodeCount: nodeCount, localRanks: localRanks, restart: restarts) }

    init(seed: UInt64) {
        random = SeededGenerator(seed: seed)
        nodeCount = Int.random(in: 1...4, using: &random)
        localRanks = Int.random(in: 1...3, using: &random)
        policy = ClusterLeader.Policy(
            grace: random.pick([1, 2, 5]), alignTimeout: random.pick([0.2, 0.5, 1]),
            checkpointEvery: random.chance(0.4) ? random.pick([0.5, 2, 4]) : nil,
            rendezvousTimeout: random.pick([2, 5, 20]),
            maxRestarts: random.chance(0.5) ? 0 : Int.random(in: 1...3, using: &random), restartBackoff: random.pick([0, 0.1, 1]))
        let commit: ClusterJoin.Commit? = random.chance(0.5) ? .init(runID: "run-a", step: random.pick([0, 50, 100])) : nil
        leaderJoin = ClusterJoin(node: 0, nodeCount: nodeCount, localRanks: localRanks, command: command, commit: commit, host: "n0")
        record = commit.map { "{\"step\":\($0.step)}" }
        leader = ClusterLeader(leader: leaderJoin, runID: "run-b", record: record, policy: policy, now: now)
        joins = [0: leaderJoin]
        leaderCommit = commit
        currentRecord = record
        // A job of one node has nobody to wait for: it launches at once.
        rendezvousDeadline = nodeCount == 1 ? now : now + policy.rendezvousTimeout
        header = "\(nodeCount) node(s) of \(localRanks) rank(s), \(policy), leader's commit \(commit.map { "\($0)" } ?? "none")"
    }

    mutating func run() throws(Violation) {
        for _ in 0..<Int.random(in: 0...150, using: &random) { try randomStep() }
        var steps = 0
        while !ended {
            steps += 1
            guard steps < 500 else { throw Violation(message: "liveness: the job did not end") }
            try drainStep()
        }
        // Over: whatever comes, the leader says nothing but reports.
        for input in [LeaderInput.tick, .message(.trigger(.signal(SignalNumber.interrupt)), from: 0), .lost(node: nodeCount - 1),
                      .message(.checkpointRequest("SIGUSR2"), from: 0), .commitWritten(round: lastRoundID)] {
            now = now + 100
            try send(input)
        }
    }

    // MARK: Inputs

    mutating func randomStep() throws(Violation) {
        if random.chance(0.4) { now = now + random.pick([0, 0.01, 0.1, 0.3]) }
        switch stage {
        case .gathering:
            let choice = Int.random(in: 0..<100, using: &random)
            let waiting = (1..<max(1, nodeCount)).filter { joins[$0] == nil }
            switch choice {
            case 0..<55:
                guard let node = waiting.randomElement(using: &random) else { return try send(.tick) }
                try send(.join(random.chance(0.05) ? inconsistentJoin(node) : consistentJoin(node)))
            case 55..<60:
                try send(.join(inconsistentJoin(random.pick(Array(0..<nodeCount)))))
            case 60..<70:
                try send(.lost(node: Int.random(in: 0..<nodeCount, using: &random)))
            case 70..<95:
                now = now + random.pick([0.05, 0.2, 0.5])
                try send(.tick)
            default:
                now = max(now, leader.nextDeadline ?? now)
                try send(.tick)
            }
        case .aborted:
            try send(random.chance(0.5) ? .tick : .join(consistentJoin(max(0, nodeCount - 1))))
        case .running:
            try runningStep()
        case .restarting:
            try restartingStep()
        }
    }

    /// During a restart: nodes clear, lost ones join again (or impostors try), and anything else.
    mutating func restartingStep() throws(Violation) {
        let anyNode = Int.random(in: 0..<nodeCount, using: &random)
        let node = living.randomElement(using: &random) ?? anyNode
        let absent = (0..<nodeCount).filter { !living.contains($0) && !ready.contains($0) }
        switch Int.random(in: 0..<100, using: &random) {
        case 0..<30:
            try send(.message(.cleared(restart: random.chance(0.9) ? restarts : restarts + random.pick([-1, 1])), from: node))
        case 30..<45:
            guard let missing = absent.randomElement(using: &random) else { return try send(.tick) }
            try send(.join(random.chance(0.15) ? inconsistentJoin(missing) : consistentJoin(missing)))
        case 45..<50:
            try send(.join(consistentJoin(anyNode)))
        case 50..<55:
            try send(.lost(node: anyNode))
        case 55..<60:
            try send(.message(.trigger(randomTrigger()), from: node))
        case 60..<63:
            try send(.message(.finished(exitCode: random.pick([0, 1, 137])), from: node))
        case 63..<75:
            now = now + random.pick([0.05, 0.3, 1, policy.rendezvousTimeout / 2])
            try send(.tick)
        case 75..<80:
            if let deadline = leader.nextDeadline, deadline > now { now = deadline }
            try send(.tick)
        case 80..<88:
            if let pending = pendingCommit {
                try send(random.chance(0.85) ? .commitWritten(round: pending) : .commitFailed(round: pending))
            } else {
                try send(.message(.checkpointRequest("SIGUSR2"), from: node))
            }
        default:
            try send(.message(random.pick([.ping, .rankFailed("rank 0 failed"), .position(round: lastRoundID, furthest: 3),
                                           .roundFailed(round: lastRoundID, "late")]), from: node))
        }
    }

    mutating func runningStep() throws(Violation) {
        let anyNode = Int.random(in: 0..<nodeCount, using: &random)
        let node = living.randomElement(using: &random) ?? anyNode
        let roundID = round?.id ?? lastRoundID
        let choice = Int.random(in: 0..<100, using: &random)
        switch choice {
        case 0..<12:
            now = now + random.pick([0.05, 0.1, 0.3, 1, policy.grace])
            try send(.tick)
        case 12..<18:
            if let deadline = leader.nextDeadline, deadline > now { now = deadline }
            try send(.tick)
        case 18..<45:
            try cooperate(node)
        case 45..<50:
            let furthest: Int? = random.chance(0.2) ? nil : random.pick([0, 7, 1000, maximumMessageInteger - 1, maximumMessageInteger, Int.max])
            try send(.message(.position(round: roundID + random.pick([0, 0, 0, -1, 1]), furthest: furthest), from: random.chance(0.9) ? node : anyNode))
        case 50..<56:
            let decided = round?.step ?? 11
            let step = random.chance(0.6) ? decided : random.pick([0, decided + 1, max(0, decided - 1), maximumMessageInteger])
            let count = random.chance(0.85) ? localRanks : random.pick([0, localRanks + 1, max(0, localRanks - 1)])
            try send(.message(.confirmed(round: roundID + random.pick([0, 0, 0, -1, 1]), step: step, paths: paths(node, step: step, count: count)),
                              from: random.chance(0.9) ? node : anyNode))
        case 56..<63:
            try send(.message(.trigger(randomTrigger()), from: random.chance(0.9) ? node : anyNode))
        case 63..<67:
            try send(.message(.checkpointRequest(random.pick(["SIGUSR2", "control"])), from: node))
        case 67..<71:
            try send(.message(.roundFailed(round: roundID + random.pick([0, 0, 1]), "a rank ended"), from: node))
        case 71..<73:
            try send(.message(.rankFailed("rank \(node * localRanks) failed"), from: node))
        case 73..<75:
            try send(.lost(node: anyNode))
        case 75..<79:
            try send(.message(.finished(exitCode: random.pick([0, 1, 2, 143])), from: node))
        case 79..<90:
            if let pending = pendingCommit {
                try send(random.chance(0.85) ? .commitWritten(round: pending) : .commitFailed(round: pending))
            } else if random.chance(0.2) {
                try send(.commitWritten(round: roundID))
            }
        case 90..<94:
            try send(.join(consistentJoin(node)))
        default:
            try send(.message(.ping, from: node))
        }
    }

    /// What a well-behaved node does next in the round in flight: its position, then its confirmation.
    mutating func cooperate(_ node: Int) throws(Violation) {
        guard let current = round else {
            if random.chance(0.5) { try send(.message(.checkpointRequest("SIGUSR2"), from: node)) }
            return
        }
        if !current.decided, current.positions[node] == nil {
            let base = 100 * current.id
            try send(.message(.position(round: current.id, furthest: random.chance(0.2) ? nil : base + Int.random(in: 0...2, using: &random)), from: node))
        } else if current.decided, current.confirmations[node] == nil {
            let step = current.step ?? 100 * current.id + 3
            try send(.message(.confirmed(round: current.id, step: step, paths: paths(node, step: step, count: localRanks)), from: node))
        } else {
            try send(.message(.ping, from: node))
        }
    }

    mutating func drainStep() throws(Violation) {
        switch stage {
        case .gathering:
            now = max(now, leader.nextDeadline ?? now)
            try send(.tick)
        case .aborted:
            break
        case .restarting:
            let absent = (0..<nodeCount).filter { !living.contains($0) && !ready.contains($0) }
            if let node = living.subtracting(ready).randomElement(using: &random), random.chance(0.7) {
                try send(.message(.cleared(restart: restarts), from: node))
            } else if let node = absent.randomElement(using: &random), random.chance(0.7) {
                try send(.join(consistentJoin(node)))
            } else {
                now = max(now, leader.nextDeadline ?? now)
                try send(.tick)
            }
        case .running:
            if let pending = pendingCommit {
                try send(random.chance(0.8) ? .commitWritten(round: pending) : .commitFailed(round: pending))
            } else if random.chance(0.3), let node = living.randomElement(using: &random) {
                try cooperate(node)
            } else if let node = living.randomElement(using: &random) {
                try send(.message(.finished(exitCode: random.pick([0, 2, 130])), from: node))
            }
        }
    }

    mutating func paths(_ node: Int, step: Int, count: Int) -> [CheckpointPath?] {
        (0..<count).map { rank in random.chance(0.1) ? nil : CheckpointPath("n\(node)r\(rank)s\(step)") }
    }

    mutating func randomTrigger() -> Trigger {
        random.pick([.controlFile, .signal(SignalNumber.terminate), .signal(SignalNumber.interrupt), .signal(SignalNumber.user1),
                     .quit(SignalNumber.quit), .quit(SignalNumber.abort)])
    }

    mutating func consistentJoin(_ node: Int) -> ClusterJoin {
        var commit: ClusterJoin.Commit?
        if let own = leaderCommit, random.chance(0.6) {
            commit = random.chance(0.5) ? own : .init(runID: random.pick(["run-a", "run-old"]), step: own.step - Int.random(in: 1...10, using: &random))
        }
        return ClusterJoin(node: node, nodeCount: nodeCount, localRanks: localRanks, command: command, commit: commit, host: "n\(node)")
    }

    mutating func inconsistentJoin(_ node: Int) -> ClusterJoin {
        var join = consistentJoin(node)
        switch Int.random(in: 0..<6, using: &random) {
        case 0: join.nodeCount = nodeCount + random.pick([1, 3])
        case 1:
            join.node = nodeCount + Int.random(in: 0...2, using: &random)
            join.host = "n\(join.node)"
        case 2:
            join.node = random.pick(Array(joins.keys))
            join.host = "impostor"
        case 3: join.localRanks = localRanks + 1
        case 4: join.command = command + ["--other"]
        default:
            if let own = leaderCommit {
                join.commit = random.chance(0.5) ? .init(runID: own.runID, step: own.step + 1) : .init(runID: "run-z", step: own.step)
            } else {
                join.commit = .init(runID: "run-a", step: 3)
            }
        }
        return join
    }

    // MARK: The model: what the leader must do

    /// The rendezvous' rule: the same node count, rank count and command, an unclaimed rank of the
    /// job, and a commit that is the leader's or older.
    func disagrees(_ join: ClusterJoin, claims: Bool = true) -> Bool {
        if join.nodeCount != nodeCount || !(0..<nodeCount).contains(join.node) || claims && joins[join.node] != nil { return true }
        if join.localRanks != localRanks || join.command != command { return true }
        guard let commit = join.commit else { return false }
        guard let own = leaderCommit else { return true }
        return !(commit == own || commit.step < own.step)
    }

    func alignDeadline(_ round: Round) -> Instant { round.startedAt + policy.alignTimeout + ClusterLeader.Policy.networkMargin }
    func graceDeadline(_ round: Round) -> Instant { round.startedAt + policy.grace + ClusterLeader.Policy.networkMargin }

    /// Updates the model for `input` and says what the leader must do.
    mutating func expectation(_ input: LeaderInput) -> Expected {
        var expected = Expected()
        switch (stage, input) {
        case (.gathering, .join(let join)):
            if disagrees(join) {
                seen.insert("refused: disagreement")
                expected.abortNaming = [join.host, "\(join.node)"]
                expected.toEach(joins.keys.filter { $0 != 0 }, .refused(""))
                stage = .aborted
            } else {
                joins[join.node] = join
                if joins.count == nodeCount { launch(&expected) }
            }
        case (.gathering, .lost(let node)):
            if node != 0, joins.removeValue(forKey: node) != nil { seen.insert("left before launch") }
        case (.gathering, .tick):
            guard now >= rendezvousDeadline else { break }
            if joins.count == nodeCount {
                launch(&expected)
            } else {
                seen.insert("refused: timeout")
                let missing = (0..<nodeCount).filter { joins[$0] == nil }.map(String.init).joined(separator: ", ")
                expected.abortLine = "node(s) \(missing) did not join within \(format(policy.rendezvousTimeout))s (--rdzv-timeout)"
                expected.toEach(joins.keys.filter { $0 != 0 }, .refused(""))
                stage = .aborted
            }
        case (.running, .lost(let node)):
            if living.remove(node) != nil { failJob(origin: node, &expected) }
        case (.running, .join):
            expected.refuseJoin = true
        case (.restarting, _):
            restartingExpectation(input, &expected)
        case (.running, .message(let message, let node)):
            // The leader's own node, finished, may still ask for the others' stop.
            let leadersOperator = if case .trigger = message { node == 0 && finished.contains(0) && !living.isEmpty } else { false }
            guard living.contains(node) || leadersOperator else { break }
            receive(message, from: node, &expected)
        case (.running, .commitWritten(let id)):
            if pendingCommit == id { pendingCommit = nil }
            guard let current = round, current.id == id, current.commitAsked else { break }
            seen.insert("committed")
            recordCommit(current)
            expected.toEach(living, .committed(round: id, record: "record \(id)"))
            pendingCommit = nil
            endRound()
        case (.running, .commitFailed(let id)):
            if pendingCommit == id { pendingCommit = nil }
            guard var current = round, current.id == id, current.commitAsked else { break }
            pendingCommit = nil
            current.commitAsked = false
            current.failed = true
            round = current
            seen.insert("commit failed")
            failRound(origin: nil, &expected)
        case (.running, .tick):
            guard !living.isEmpty else { break }
            if let current = round {
                if !current.decided, now >= alignDeadline(current) {
                    seen.insert("step at the alignment deadline")
                    decide(&expected)
                } else if current.decided, !current.failed, !current.commitAsked, now >= graceDeadline(current) {
                    round?.failed = true
                    seen.insert("grace expired")
                    failRound(origin: nil, &expected)
                }
            } else if canCheckpoint, let due = periodicDue, now >= due {
                seen.insert("periodic")
                periodicDue = nil
                startRound(.checkpoint, trigger: "periodic", &expected)
            }
        case (.gathering, _), (.aborted, _):
            break
        }
        return expected
    }

    var canCheckpoint: Bool { stopTrigger == nil && !jobFailed && finished.isEmpty }

    mutating func recordCommit(_ round: Round) {
        currentRecord = "record \(round.id)"
        if let step = round.confirmations.values.first?.step { leaderCommit = .init(runID: "run-b", step: step) }
    }

    /// What the leader must do during a restart.
    mutating func restartingExpectation(_ input: LeaderInput, _ expected: inout Expected) {
        switch input {
        case .join(let join):
            if disagrees(join, claims: false) || living.contains(join.node) || ready.contains(join.node) {
                seen.insert("rejoin refused")
                expected.refuseJoin = true
                return
            }
            seen.insert("rejoin")
            joins[join.node] = join
            ready.insert(join.node)
            relaunchIfReady(&expected)
        case .lost(let node):
            let wasLiving = living.remove(node) != nil
            if ready.remove(node) != nil || wasLiving { seen.insert("lost during restart") }
        case .message(let message, let node):
            guard living.contains(node) else { return }
            switch message {
            case .cleared(let restart) where restart == restarts:
                if ready.insert(node).inserted { seen.insert("cleared") }
                relaunchIfReady(&expected)
            case .trigger(let trigger):
                stopTrigger = trigger
                if trigger.signalNumber != nil { stopSignals[node] = 1 }
                seen.insert("restart abandoned: stop")
                abandonRestart(&expected)
            case .finished:
                living.remove(node)
                ready.remove(node)
                finished.insert(node)
                seen.insert("restart abandoned: node ended")
                abandonRestart(&expected)
            default:
                break
            }
        case .commitWritten(let id):
            if pendingCommit == id { pendingCommit = nil }
            guard let current = round, current.id == id, current.commitAsked else { return }
            recordCommit(current)
            round = nil
        case .commitFailed(let id):
            if pendingCommit == id { pendingCommit = nil }
            if round?.id == id { round = nil }
        case .tick:
            if ready.count == nodeCount {
                relaunchIfReady(&expected)
            } else if now >= restartDeadline {
                seen.insert("restart abandoned: timeout")
                abandonRestart(&expected)
            }
        }
    }

    mutating func startRestart(_ expected: inout Expected) {
        seen.insert("restart")
        restarts += 1
        if round?.commitAsked != true { round = nil }
        ready = []
        relaunchAt = now + StopPolicy(restartBackoff: policy.restartBackoff).backoff(beforeRestart: restarts)
        restartDeadline = now + policy.rendezvousTimeout
        stage = .restarting
        expected.toEach(living, .restart(restart: restarts, maxRestarts: policy.maxRestarts, reason: ""))
    }

    mutating func relaunchIfReady(_ expected: inout Expected) {
        guard ready.count == nodeCount, now >= relaunchAt else { return }
        seen.insert("relaunch")
        stage = .running
        living = Set(0..<nodeCount)
        ready = []
        round = nil
        jobFailed = false
        stopSignals = [:]
        periodicDue = policy.checkpointEvery.map { now + $0 }
        expected.toEach(0..<nodeCount, .launch(world, record: currentRecord))
    }

    mutating func abandonRestart(_ expected: inout Expected) {
        let rejoined = ready.subtracting(living)
        stage = .running
        jobFailed = true
        ready = []
        expected.toEach(living, .nodeFailed(""))
        expected.toEach(rejoined, .refused(""))
    }

    mutating func launch(_ expected: inout Expected) {
        seen.insert(nodeCount == 1 ? "launch of one node" : "launch")
        stage = .running
        living = Set(0..<nodeCount)
        periodicDue = policy.checkpointEvery.map { now + $0 }
        expected.toEach(0..<nodeCount, .launch(world, record: record))
    }

    mutating func receive(_ message: ClusterNodeMessage, from node: Int, _ expected: inout Expected) {
        switch message {
        case .join, .ping, .cleared:
            break
        case .trigger(let trigger):
            guard let first = stopTrigger else {
                stopTrigger = trigger
                if trigger.signalNumber != nil { stopSignals[node] = 1 }
                startRound(.stop, trigger: trigger.description, stop: trigger, &expected)
                return
            }
            guard trigger.signalNumber != nil else { return }
            let count = stopSignals[node, default: 0] + 1
            stopSignals[node] = count
            // A node's second signal insists; so does a quit during a stop that was no quit. A quit
            // reaching every node (one scheduler's) is one request, as a SIGTERM reaching every node is.
            if count >= 2 || trigger.isQuit && !first.isQuit {
                seen.insert("escalation")
                expected.toEach(living, .escalate(trigger))
            } else {
                seen.insert("first signal again")
            }
        case .checkpointRequest(let trigger):
            if round == nil, canCheckpoint { startRound(.checkpoint, trigger: trigger, &expected) }
        case .position(let id, let furthest):
            guard var current = round, current.id == id, !current.decided, current.positions[node] == nil else { return }
            current.positions[node] = .some(furthest)
            round = current
            if living.allSatisfy({ current.positions[$0] != nil }) { decide(&expected) }
        case .confirmed(let id, let step, let paths):
            guard var current = round, current.id == id, current.decided, current.confirmations[node] == nil,
                  !current.failed, !current.commitAsked, now < graceDeadline(current)
            else { return }
            if paths.count != localRanks || current.step.map({ $0 != step }) ?? false {
                round?.failed = true
                return failRound(origin: nil, &expected)
            }
            current.confirmations[node] = (step, paths)
            round = current
            guard current.confirmations.count == nodeCount else { return }
            guard Set(current.confirmations.values.map(\.step)).count == 1 else {
                round?.failed = true
                return failRound(origin: nil, &expected)
            }
            round?.commitAsked = true
            seen.insert("commit")
            pendingCommit = id
            let all = (0..<nodeCount).flatMap { current.confirmations[$0]!.paths }
            expected.commit = .commit(round: id, step: step, paths: all, trigger: current.trigger)
        case .roundFailed(let id, _):
            guard let current = round, current.id == id, !current.failed, !current.commitAsked else { return }
            round?.failed = true
            seen.insert("round failed by a node")
            failRound(origin: node, &expected)
        case .rankFailed:
            failJob(origin: node, &expected)
        case .finished:
            living.remove(node)
            finished.insert(node)
            if let current = round, !current.failed, !current.commitAsked, current.confirmations[node] == nil {
                round?.failed = true
                seen.insert("ended before confirming")
                failRound(origin: node, &expected)
            }
            if living.isEmpty {
                seen.insert("every node ended")
                round = nil
            }
        }
    }

    mutating func startRound(_ kind: Kind, trigger: String, stop: Trigger? = nil, _ expected: inout Expected) {
        seen.insert(kind == .stop ? "stop" : "checkpoint")
        if round != nil { seen.insert("superseded") }
        lastRoundID += 1
        round = Round(id: lastRoundID, kind: kind, trigger: trigger, startedAt: now)
        if jobFailed { round?.failed = true }
        expected.toEach(living, stop.map { .stop(round: lastRoundID, $0) } ?? .checkpoint(round: lastRoundID, trigger: trigger))
        // A node that finished confirms nothing: the stop fails at once.
        if !finished.isEmpty, round?.failed == false {
            seen.insert("stop after a node finished")
            round?.failed = true
            failRound(origin: nil, &expected)
        }
    }

    /// One step for the whole job, 1 + the furthest position any node reported; none can follow the
    /// largest integer a message carries.
    mutating func decide(_ expected: inout Expected) {
        guard var current = round, !current.decided else { return }
        current.decided = true
        let furthest = current.positions.values.compactMap { $0 }.max()
        if let furthest, furthest >= maximumMessageInteger {
            let wasFailed = current.failed
            current.failed = true
            round = current
            if !wasFailed { failRound(origin: nil, &expected) }
            return
        }
        current.step = furthest.map { $0 + 1 }
        round = current
        seen.insert("step")
        expected.toEach(living, .step(round: current.id, step: current.step))
    }

    /// Every living node but the one that reported it hears that the round failed; a checkpoint
    /// round ends there.
    mutating func failRound(origin: Int?, _ expected: inout Expected) {
        guard let current = round else { return }
        expected.toEach(living.filter { $0 != origin }, .roundFailed(round: current.id, ""))
        if current.kind == .checkpoint { endRound() }
    }

    /// A lost node or a failed rank: a restart when one is left and nothing forbids it, else every
    /// living node (the failed rank's own too, which waits for this verdict) fails.
    mutating func failJob(origin: Int, _ expected: inout Expected) {
        if stopTrigger == nil, !jobFailed, finished.isEmpty, restarts < policy.maxRestarts { return startRestart(&expected) }
        seen.insert("node failed")
        jobFailed = true
        expected.failedNode = origin
        if let current = round, !current.failed, !current.commitAsked {
            round?.failed = true
            expected.toEach(living.filter { $0 != origin }, .roundFailed(round: current.id, ""))
        }
        expected.toEach(living, .nodeFailed(""))
    }

    mutating func endRound() {
        if round?.kind == .checkpoint, let every = policy.checkpointEvery { periodicDue = now + every }
        round = nil
    }

    // MARK: Feeding one input and checking every guarantee

    mutating func send(_ input: LeaderInput) throws(Violation) {
        log.append((now, input, []))
        let before = Before(stage: stage, living: living, round: round, stopTrigger: stopTrigger, jobFailed: jobFailed, ready: ready,
                            finished: finished)
        let expected = expectation(input)
        let actions: [ClusterLeader.Action]
        switch input {
        case .join(let join): actions = leader.joined(join, now: now)
        case .lost(let node): actions = leader.lost(node: node, reason: "reset", now: now)
        case .message(let message, let node): actions = leader.received(message, from: node, now: now)
        case .commitWritten(let round): actions = leader.commitWritten(round: round, record: "record \(round)", now: now)
        case .commitFailed(let round): actions = leader.commitFailed(round: round, reason: "disk full", now: now)
        case .tick: actions = leader.tick(now: now)
        }
        log[log.count - 1].actions = actions
        for case .report(let report) in actions { _ = report.description }
        try checkGuarantees(input, actions, before: before)
        try compare(actions, expected)
        try checkState()
    }

    /// The model's state before an input.
    struct Before {
        let stage: Stage
        let living: Set<Int>
        let round: Round?
        let stopTrigger: Trigger?
        let jobFailed: Bool
        let ready: Set<Int>
        let finished: Set<Int>
    }

    /// The guarantees of `ClusterLeader`'s doc comment, one by one, from what was fed and said.
    mutating func checkGuarantees(_ input: LeaderInput, _ actions: [ClusterLeader.Action], before: Before) throws(Violation) {
        var launched: [Int] = []
        var refused: [Int] = []
        var restarted: [Int] = []
        var aborts: [String] = []
        var started: [Int: [Int]] = [:]
        var steps: [Int: Int?] = [:]
        var escalated: [Int] = []
        var nodeFailed: [Int] = []
        for action in actions {
            switch action {
            case .send(let node, .launch):
                launched.append(node)
            case .send(let node, .refused):
                refused.append(node)
            case .abort(let line):
                aborts.append(line)
            case .refuseJoin:
                guard case .join = input else { throw Violation(message: "a join refused on \(input)") }
                try expect(before.stage != .gathering, "a join refused on its own connection during the rendezvous")
            case .send(let node, .restart(let restart, _, _)):
                restarted.append(node)
                try expect(restart == restarts && restarts <= policy.maxRestarts, "restart \(restart) of at most \(policy.maxRestarts)")
            case .send(let node, let command):
                try expect(before.stage == .running || before.stage == .restarting, "\(command) to node \(node) before the launch")
                try expect(living.contains(node), "\(command) to node \(node), which is not running")
                switch command {
                case .stop(let id, _), .checkpoint(let id, _): started[id, default: []].append(node)
                case .step(let id, let step):
                    try expect(id == round?.id ?? before.round?.id, "a step for round \(id), not the round in flight")
                    try expect(steps.updateValue(step, forKey: node) == nil, "two steps for node \(node)")
                case .escalate: escalated.append(node)
                case .nodeFailed: nodeFailed.append(node)
                default: break
                }
            case .commit(let id, _, _, _):
                // `.commit` at most once per round, only when every node confirmed the round's step in
                // that round and no node reported a problem with it, before the round's deadline.
                guard let current = before.round, current.id == id else { throw Violation(message: "a commit of round \(id), not the round in flight") }
                try expect(commitsAsked.insert(id).inserted, "a second commit of round \(id)")
                try expect(!before.jobFailed, "a commit of round \(id) after a rank failed or a node was lost")
                try expect(!current.failed, "a commit of round \(id), which failed")
                try expect(now < graceDeadline(current), "a commit of round \(id) after its deadline")
                try expect(round?.confirmations.count == nodeCount, "a commit of round \(id) before every node confirmed")
            case .report:
                break
            }
        }
        // `.launch` to every node at once, only once every node joined and agreed; a relaunch only
        // once every node is ready for the restart (cleared, or joined again), after its backoff.
        if !launched.isEmpty {
            launches += 1
            try expect(launched == Array(0..<nodeCount), "launch to \(launched), not every node")
            if before.stage == .restarting {
                var ready = before.ready
                switch input {
                case .message(.cleared, let node): ready.insert(node)
                case .join(let join): ready.insert(join.node)
                default: break
                }
                try expect(ready == Set(0..<nodeCount), "a relaunch while only nodes \(ready.sorted()) are ready")
                try expect(now >= relaunchAt, "a relaunch before the restart's backoff")
                try expect(before.stopTrigger == nil, "a relaunch after a stop trigger")
            } else {
                try expect(launches == 1, "a second launch outside a restart")
                try expect(joins.count == nodeCount && joins.values.allSatisfy { !disagreesIgnoringClaim($0) },
                           "a launch before every node joined and agreed")
            }
        }
        // A restart: only on a failure while nothing forbids it, to every living node.
        if !restarted.isEmpty {
            switch input {
            case .lost, .message(.rankFailed, _): break
            default: throw Violation(message: "a restart on \(input)")
            }
            try expect(before.stage == .running && before.stopTrigger == nil && !before.jobFailed && before.finished.isEmpty,
                       "a restart after a stop trigger, a failure or a node's end")
            try expect(Set(restarted) == living && restarted.count == living.count, "the restart reached \(restarted), not every living node \(living.sorted())")
        }
        // An abandoned restart refuses the nodes that joined again.
        if aborts.isEmpty, before.stage == .restarting, !refused.isEmpty {
            try expect(Set(refused) == before.ready.subtracting(before.living), "refused \(refused), not the nodes that joined again")
        } else if !aborts.isEmpty || !refused.isEmpty {
            // Any disagreement refuses every joined node, before any launch, naming the node at fault.
            try expect(launches == 0, "refused after the launch")
            try expect(aborts.count == 1, "\(aborts.count) aborts")
            try expect(Set(refused) == Set(joins.keys.filter { $0 != 0 }) && refused.count == joins.count - 1,
                       "refused \(refused), not every joined node")
            if case .join(let join) = input { try expect(aborts[0].contains(join.host), "the refusal does not name \(join.host): \(aborts[0])") }
        }
        // At most one round in flight; every living node gets the same round's stop/checkpoint.
        for (id, nodes) in started {
            try expect(started.count == 1, "two rounds started at once")
            try expect(Set(nodes) == living && nodes.count == living.count, "round \(id) reached \(nodes), not every living node \(living.sorted())")
            if let previous = before.round {
                try expect(previous.kind == .checkpoint && round?.kind == .stop, "round \(id) started while round \(previous.id) was in flight")
            }
        }
        // ... then the same step.
        if !steps.isEmpty {
            try expect(Set(steps.keys) == living, "the step reached \(steps.keys.sorted()), not every living node \(living.sorted())")
            try expect(Set(steps.values.map { $0.map(String.init) ?? "nil" }).count == 1, "different steps \(steps)")
        }
        // The first trigger starts the one stop; later ones escalate only when a node repeats its signal.
        if !escalated.isEmpty {
            guard case .message(.trigger(let trigger), let node) = input, let first = before.stopTrigger else {
                throw Violation(message: "an escalation on \(input)")
            }
            try expect(trigger.signalNumber != nil, "the control file escalated")
            try expect(stopSignals[node, default: 0] >= 2 || trigger.isQuit && !first.isQuit,
                       "node \(node)'s first \(trigger) escalated a stop by \(first)")
            try expect(Set(escalated) == living, "the escalation reached \(escalated), not every living node")
        }
        // A lost node, a node whose rank failed, or a restart that cannot complete, makes every
        // living node get `nodeFailed`.
        if !nodeFailed.isEmpty {
            switch input {
            case .lost, .message(.rankFailed, _): break
            default: try expect(before.stage == .restarting, "nodeFailed on \(input)")
            }
            try expect(Set(nodeFailed) == living && nodeFailed.count == living.count, "nodeFailed reached \(nodeFailed), not every living node")
        }
    }

    /// The rendezvous rule for a join already accepted (its rank is its own).
    func disagreesIgnoringClaim(_ join: ClusterJoin) -> Bool {
        if join.node == 0 { return false }
        var others = self
        others.joins[join.node] = nil
        return others.disagrees(join)
    }

    /// The leader said exactly what the model expects, reports aside and reasons compared by who they name.
    func compare(_ actions: [ClusterLeader.Action], _ expected: Expected) throws(Violation) {
        var commands: [Int: [ClusterCommand]] = [:]
        var commits: [ClusterLeader.Action] = []
        var aborts: [String] = []
        var refusals: [String] = []
        var refusedJoin = false
        for action in actions {
            switch action {
            case .refuseJoin: refusedJoin = true
            case .send(let node, let command):
                var shape = command
                switch command {
                case .roundFailed(let id, _): shape = .roundFailed(round: id, "")
                case .restart(let restart, let maxRestarts, _): shape = .restart(restart: restart, maxRestarts: maxRestarts, reason: "")
                case .nodeFailed(let reason):
                    shape = .nodeFailed("")
                    if let origin = expected.failedNode {
                        try expect(reason.contains("node \(origin)"), "nodeFailed does not name node \(origin): \(reason)")
                    }
                case .refused(let reason):
                    shape = .refused("")
                    refusals.append(reason)
                default: break
                }
                commands[node, default: []].append(shape)
            case .commit: commits.append(action)
            case .abort(let line): aborts.append(line)
            case .report: break
            }
        }
        try expect(commands == expected.commands, "commands \(commands.sorted { $0.key < $1.key }), expected \(expected.commands.sorted { $0.key < $1.key })")
        try expect(commits == (expected.commit.map { [$0] } ?? []), "commits \(commits), expected \(String(describing: expected.commit))")
        if let line = expected.abortLine {
            try expect(aborts == [line], "abort \(aborts), expected \(line)")
        } else if let names = expected.abortNaming {
            try expect(aborts.count == 1 && names.allSatisfy { aborts[0].contains($0) }, "abort \(aborts) does not name \(names)")
        } else {
            try expect(aborts.isEmpty, "an unexpected abort \(aborts)")
        }
        try expect(refusedJoin == expected.refuseJoin, "join refused: \(refusedJoin), expected \(expected.refuseJoin)")
        if !aborts.isEmpty { try expect(refusals.allSatisfy { aborts.contains($0) }, "a refusal \(refusals) that is not the abort's line \(aborts)") }
    }

    func checkState() throws(Violation) {
        switch stage {
        case .gathering:
            try expect(leader.phase == .gathering(deadline: rendezvousDeadline), "phase \(leader.phase), expected gathering")
            try expect(leader.nextDeadline == rendezvousDeadline, "the rendezvous has no deadline")
        case .aborted:
            try expect(leader.phase == .aborted, "phase \(leader.phase), expected aborted")
        case .restarting:
            try expect(leader.phase == .restarting(restart: restarts, deadline: restartDeadline), "phase \(leader.phase), expected restart \(restarts)")
            try expect(leader.living == living && leader.ready == ready, "living \(leader.living.sorted()), ready \(leader.ready.sorted())")
            let due = ready.count == nodeCount ? relaunchAt : restartDeadline
            try expect(leader.nextDeadline == due, "the restart's deadline is \(String(describing: leader.nextDeadline)), expected \(due)")
        case .running:
            try expect(leader.restarts == restarts, "restarts \(leader.restarts), expected \(restarts)")
            try expect(leader.phase == .running, "phase \(leader.phase), expected running")
            try expect(leader.living == living, "living \(leader.living.sorted()), expected \(living.sorted())")
            try expect(leader.failed == jobFailed, "failed: \(leader.failed)")
            try expect(leader.stopTrigger == stopTrigger, "stop trigger \(String(describing: leader.stopTrigger))")
            try expect(leader.allEnded == living.isEmpty, "allEnded: \(leader.allEnded)")
            guard !living.isEmpty else { return }
            // Liveness: a round in flight always has a deadline, or completes.
            if let current = round {
                if !current.decided {
                    try expect(leader.nextDeadline == alignDeadline(current), "round \(current.id) waits for positions without its deadline (\(String(describing: leader.nextDeadline)))")
                } else if !current.failed && !current.commitAsked {
                    try expect(leader.nextDeadline == graceDeadline(current), "round \(current.id) waits for confirmations without its deadline (\(String(describing: leader.nextDeadline)))")
                }
            } else if canCheckpoint, policy.checkpointEvery != nil {
                try expect(leader.nextDeadline == periodicDue && periodicDue != nil,
                           "the next periodic checkpoint is due at \(String(describing: leader.nextDeadline)), expected \(String(describing: periodicDue))")
            }
        }
    }

    func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws(Violation) {
        if !condition { throw Violation(message: message()) }
    }
}

extension Trigger {
    var isQuit: Bool {
        if case .quit = self { return true }
        return false
    }
}
