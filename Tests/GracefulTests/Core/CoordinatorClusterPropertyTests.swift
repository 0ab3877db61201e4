import Foundation
import GracefulProtocol
import Testing

@testable import Graceful

/// Random walks of a member of a multi-node job (`Coordinator(clusterMember: true)`): the same model
/// of ranks and process layer as `CoordinatorPropertyTests`, plus a model leader that answers
/// `.tellLeader(.position)` with `.stepChosen` (at once, late, before the node finished aligning, or
/// never), `.commit` with `.commitWritten`, `.roundFailedElsewhere` or `.nodeFailed`, and sends
/// random `.nodeFailed`, `.roundFailedElsewhere`, `.escalate` and stray steps.
///
/// Checked after every event, besides every single-node guarantee that still holds (`.finish`
/// exactly once after every rank ended, then nothing; no signal and no message to an ended rank; a
/// stop reaches every living rank; a commit only when every rank said hello before the round and
/// confirmed the round's step in it, with its first confirmation's path, before the grace, once):
/// - a member restarts only as the leader says: `.awaitGangExit` only once a failed attempt's ranks
///   all ended and no stop forbids a restart; `.tellLeader(.cleared)` only for the restart the leader
///   asked for, once the gang is gone, once; `.launch` only on the leader's `.relaunch` of that restart;
/// - `.tellLeader(.position)` once per round, for the round in flight, before its step, with the
///   furthest usable position its speaking ranks answered, once every living one answered or the
///   alignment deadline passed;
/// - every `stopAt` carries the leader's step for its round, and so does every `checkpointAt` but
///   the one that releases ranks of an abandoned round; a step the leader chose for the round in
///   flight reaches every living rank that speaks;
/// - `.tellLeader(.roundFailed)` names the round in flight, and comes as soon as the first problem
///   of the stop is found on this node (unless it is the leader's news, or the grace, which the
///   leader times itself); `.tellLeader(.rankFailed)` comes exactly when a rank fails while no stop
///   is pending;
/// - told that the round failed elsewhere, or that a node failed, the node waits for no commit;
/// - after `.nodeFailed`, or a rank failure while training, every living rank has had SIGTERM.
///
/// The exit code of a member (`Coordinator.finishIfDone`), first match:
///
/// | the run                                                                 | exit    |
/// |-------------------------------------------------------------------------|---------|
/// | a rank failed, or `.nodeFailed` or `.restartJob` came, while no stop was pending, and no relaunch followed | 1 |
/// | no stop (every rank exited 0)                                           | 0       |
/// | the stop's `.commit` was answered by `.commitWritten` (the leader wrote it) | 0    |
/// | a counted second or third signal, a quit, or the leader's `.escalate`   | 128+N   |
/// | no rank said hello and every rank ended cleanly (0, or SIGTERM once running) | 0  |
/// | otherwise (`.nodeFailed` or `.roundFailedElsewhere` during a stop included) | 2   |
///
/// So `.nodeFailed` during a stop does not make the exit 1: the stop was asked for, and it ends as a
/// stop that could not commit (2), unless the leader's commit was written first (0).
@Suite struct CoordinatorClusterPropertyTests {
    @Test func clusterMemberWalksKeepEveryGuarantee() {
        let seeds = propertySeeds(defaultRuns: 3000)
        var seen: Set<String> = []
        for seed in seeds {
            var walk = Walk(seed: seed, cluster: true)
            do {
                try walk.run()
            } catch {
                Issue.record("\(error.message)\nreplay with GRACEFUL_PROPERTY_SEED=\(seed)\n\(walk.trace.suffix(60).joined(separator: "\n"))")
                return
            }
            seen.formUnion(walk.seen)
        }
        // The walks reach what the guarantees are about, or they would pass without checking it.
        let milestones: Set = [
            "told position", "step taken", "step taken while aligning", "commit", "stop committed", "commit voided",
            "rank failure told", "exit 0", "exit 1", "exit 2", "exit 128+N", "node failed while training", "node failed while stopping",
            "restart asked", "cleared told", "relaunched", "verdict: no restart",
        ]
        if seeds.count >= 500 { #expect(milestones.subtracting(seen).isEmpty, "never reached: \(milestones.subtracting(seen).sorted())") }
    }
}

extension CoordinatorEvent {
    /// The trigger of `.trigger` and `.escalate`.
    var stopTrigger: Trigger? {
        switch self {
        case .trigger(let trigger), .escalate(let trigger): return trigger
        default: return nil
        }
    }
}

extension Walk {
    // MARK: The model leader's inputs

    /// The leader's stop (once per job, as it sends it once), then its escalations.
    mutating func leaderStopStep() throws(Violation) {
        // A leader that restarts the job sends no stop until the relaunch.
        if restartAsked != nil { return }
        if !leaderStopped {
            leaderStopped = true
            try send(.trigger(randomTrigger()))
        } else {
            try send(.escalate(random.pick([.signal(SignalNumber.terminate), .signal(SignalNumber.interrupt), .quit(SignalNumber.quit)])))
        }
    }

    /// Something else the leader says: another node's failure, a round failed elsewhere, a step.
    mutating func leaderEventStep() throws(Violation) {
        let id = round?.id ?? 1
        switch Int.random(in: 0..<100, using: &random) {
        case 0..<12:
            try send(.nodeFailed("node 2 (h2): rank 5 failed (exited(1))"))
        case 12..<16:
            // Another node's failure restarts the job; or a stray relaunch, which nothing follows.
            if random.chance(0.7), !leaderStopped, !leaderGaveUp, restartAsked == nil {
                leaderRestarts += 1
                try send(.restartJob(restart: leaderRestarts, maxRestarts: 3, "node 2: rank 5 failed (exited(1))"))
            } else {
                try send(.relaunch(restart: leaderRestarts + random.pick([0, 1])))
            }
        case 12..<40:
            try send(.roundFailedElsewhere(round: id + random.pick([0, 0, 0, -1, 1]), "node 1: rank 2 ended before confirming"))
        case 40..<65:
            // A step for another round, or for this one before this node told its position: the
            // leader's alignment deadline passed first.
            let target = id + random.pick([0, 0, -1, 1])
            if target == id, leaderAnswered.contains(id) { return try deliverLeaderStep() }
            leaderAnswered.insert(target)
            try send(.stepChosen(round: target, step: random.pick([nil, 11, 1000])))
        default:
            try deliverLeaderStep()
        }
    }

    /// What a well-behaved rank does next: hello, then its position in the round in flight, then its
    /// confirmation of the round's step.
    mutating func cooperativeRankStep() throws(Violation) {
        guard let rank = living.randomElement(using: &random) else { return }
        if !saidHello[rank] {
            if running { try send(.hello(rank: rank)) }
            return
        }
        guard let current = round, let id = current.id, current.helloBefore[rank] else { return }
        if current.step == nil {
            if current.positions[rank] == nil { try send(.position(rank: rank, id: id, step: random.pick([nil, 10, 11, 12]))) }
        } else if current.confirmations[rank].isEmpty {
            pathCounter += 1
            try send(.checkpointed(rank: rank, step: current.step.flatMap { $0 } ?? 13, path: CheckpointPath("r\(rank)c\(pathCounter)")))
        }
    }

    mutating func deliverLeaderStep() throws(Violation) {
        guard !pendingSteps.isEmpty else { return }
        let next = pendingSteps.removeFirst()
        if next.fails {
            try send(.roundFailedElsewhere(round: next.round, "a rank answered position \(maximumMessageInteger), after which no step can follow"))
        } else {
            try send(.stepChosen(round: next.round, step: next.step))
        }
    }

    /// The leader's answer to this node's part of a commit: written, failed elsewhere, or the leader
    /// is gone.
    mutating func answerCommitAsLeader(_ commit: (step: Int, kind: RoundKind, round: Int?)) throws(Violation) {
        guard let id = commit.round else { return }
        if random.chance(0.75) {
            // The supervisor hands the leader's `committed` on only for the round it maps: the one in flight.
            guard machine.currentRoundID == id else { return }
            if commit.kind == .stop && !voidedRounds.contains(id) { stopCommitted = true }
            try send(.commitWritten)
        } else if random.chance(0.8) {
            try send(.roundFailedElsewhere(round: id, "node 1 checkpointed step 3, not the round's step 4"))
        } else {
            try send(.nodeFailed("the leader (node 0) is gone: reset"))
        }
    }

    /// The leader's answer to what this node waits for: the relaunch it cleared for, or its verdict
    /// on a failure (a restart of the job, or none).
    mutating func leaderVerdict() -> CoordinatorEvent? {
        if clearedTold, let restart = restartAsked { return .relaunch(restart: restart) }
        guard attemptFailed, restartAsked == nil, !leaderGaveUp else { return nil }
        let waiting = switch machine.phase {
        case .failing(_, stopRequested: false), .restarting(resumeAt: nil): true
        default: false
        }
        guard waiting else { return nil }
        if random.chance(0.6) {
            leaderRestarts += 1
            return .restartJob(restart: leaderRestarts, maxRestarts: 3, "node 0: rank 1 failed (exited(1))")
        }
        seen.insert("verdict: no restart")
        return .nodeFailed("node 1: rank 2 failed (exited(1))")
    }

    // MARK: Checks

    mutating func checkTellLeader(_ report: NodeReport) throws(Violation) {
        switch report {
        case .position(let id, let furthest):
            guard var current = round else { throw Violation(message: "a position for round \(id) outside any round") }
            if current.id == nil { current.id = id }
            try expect(current.id == id, "a position for round \(id) in round \(String(describing: current.id))")
            try expect(!current.toldPosition, "round \(id)'s position told twice")
            try expect(current.step == nil, "round \(id)'s position told after its step")
            let usable = current.positions.values.compactMap { $0 }.filter { !$0.addingReportingOverflow(1).overflow }
            try expect(furthest == usable.max(), "furthest \(String(describing: furthest)), but the ranks answered \(current.positions)")
            let waiting = (0..<rankCount).filter { alive[$0] && current.helloBefore[$0] && current.positions[$0] == nil }
            try expect(waiting.isEmpty || now >= current.startedAt + policy.alignTimeout,
                       "round \(id)'s position told while ranks \(waiting) may still answer")
            current.toldPosition = true
            round = current
            seen.insert("told position")
            guard leaderAnswered.insert(id).inserted, random.chance(0.85) else { return }
            if let furthest, furthest >= maximumMessageInteger {
                pendingSteps.append((id, nil, true))
            } else {
                let step = furthest.map { min($0 + 1 + random.pick([0, 0, 0, 3]), maximumMessageInteger) } ?? random.pick([nil, nil, 20])
                pendingSteps.append((id, step, false))
            }
        case .roundFailed(let id, _):
            toldFailed.insert(id)
            if round?.kind == .stop, round?.id == nil { round?.id = id }
            try expect(round?.id == id, "round \(id) failed, not the round in flight \(String(describing: round?.id))")
        case .rankFailed(let rank, let status):
            try expect(event == .exited(rank: rank, status) && !status.isSuccess && runningBefore,
                       "rank \(rank)'s failure told on \(event)")
        case .cleared(let restart):
            try expect(restartAsked == restart, "cleared for restart \(restart), asked for \(String(describing: restartAsked))")
            try expect(!clearedTold, "cleared for restart \(restart) twice")
            try expect(living.isEmpty && (gangGoneGiven || event == .gangGone), "cleared while the gang is not gone")
            clearedTold = true
            seen.insert("cleared told")
        }
    }

    func checkStepSent(_ message: CoordinatorMessage, among actions: [CoordinatorAction]) throws(Violation) {
        switch message {
        case .stopAt(let id, let step):
            try expect(chosenSteps[id] == .some(step), "stopAt(\(id), \(String(describing: step))), the leader chose \(String(describing: chosenSteps[id]))")
        case .checkpointAt(let id, let step):
            let releasing = actions.contains { if case .report(.checkpointAbandoned) = $0 { true } else { false } }
            try expect(releasing || chosenSteps[id] == .some(step),
                       "checkpointAt(\(id), \(String(describing: step))), the leader chose \(String(describing: chosenSteps[id]))")
        default:
            break
        }
    }

    /// Whether the coordinator's round in flight waits for the leader's commit.
    var machineCommitPending: Bool {
        let round: Coordinator.Round? = switch machine.phase {
        case .running(let round): round
        case .stopping(let stop): stop.round
        default: nil
        }
        if case .pending? = round?.commit { return true }
        return false
    }

    mutating func checkCluster(_ event: CoordinatorEvent, _ actions: [CoordinatorAction], acceptsStep: Bool, commitPendingBefore: Bool) throws(Violation) {
        if case .trigger = event { leaderStopped = true }
        if acceptsStep, case .stepChosen(let id, let step) = event, let current = round {
            seen.insert(current.toldPosition ? "step taken" : "step taken while aligning")
            for rank in living where current.helloBefore[rank] {
                let told = actions.contains { $0 == .send(rank: rank, .stopAt(id: id, step: step)) || $0 == .send(rank: rank, .checkpointAt(id: id, step: step)) }
                try expect(told, "the leader's step \(String(describing: step)) for round \(id) did not reach rank \(rank)")
            }
        }
        var failed = false
        if case .exited(let rank, let status) = event, !status.isSuccess, runningBefore {
            try expect(actions.contains(.tellLeader(.rankFailed(rank: rank, status))), "rank \(rank)'s failure was not told to the leader")
            seen.insert("rank failure told")
            failed = true
        }
        if case .nodeFailed = event {
            failed = true
            seen.insert(runningBefore ? "node failed while training" : "node failed while stopping")
        }
        if case .restartJob = event, runningBefore {
            failed = true
            seen.insert("restart asked")
        }
        for case .finish(let code) in actions { seen.insert(code > 128 ? "exit 128+N" : "exit \(code)") }
        if stopCommitted { seen.insert("stop committed") }
        // Told the round failed elsewhere, or that a node failed, the node waits for no commit.
        // A problem found here is the leader's to know at once, so the round fails everywhere without
        // waiting: the first one (after it, the leader knows), unless it is the leader's own news or
        // the grace, which the leader times itself.
        if case .stopping(let stop) = machine.phase, let first = stop.round.problems.first {
            switch first {
            case .failedElsewhere, .notConfirmedInTime: break
            default: try expect(toldFailed.contains(stop.round.id), "round \(stop.round.id)'s \(first) was not told to the leader")
            }
        }
        var voids = false
        switch event {
        case .nodeFailed: voids = true
        case .restartJob: voids = runningBefore
        case .roundFailedElsewhere(let id, _): voids = id == roundBefore
        default: break
        }
        if commitPendingBefore && voids {
            try expect(!machineCommitPending, "still waiting for the leader's commit after \(event)")
            seen.insert("commit voided")
        }
        if failed {
            for rank in living { try expect(signalled[rank], "rank \(rank) was not torn down after \(event)") }
        }
    }
}
