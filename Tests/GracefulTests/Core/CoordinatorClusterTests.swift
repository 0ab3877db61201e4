import GracefulProtocol
import Testing

@testable import Graceful

/// A member of a multi-node job (`Coordinator(clusterMember: true)`): the leader chooses each round's
/// step and commits; the node reports its ranks' part. Events and a fake clock; no process involved.
@Suite struct CoordinatorClusterTests {
    let policy = StopPolicy(grace: 30, killAfter: 10, alignTimeout: 2, maxRestarts: 3)
    let t0 = Instant.seconds(100)

    func member(ranks: Int = 2, speaking: [Int]? = nil) -> Coordinator {
        var coordinator = Coordinator(rankCount: ranks, policy: policy, clusterMember: true)
        _ = coordinator.handle(.launched, now: t0)
        for rank in speaking ?? Array(0..<ranks) { _ = coordinator.handle(.hello(rank: rank), now: t0) }
        return coordinator
    }

    func sends(_ actions: [CoordinatorAction]) -> [Int: CoordinatorMessage] {
        var result: [Int: CoordinatorMessage] = [:]
        for case .send(let rank, let message) in actions { result[rank] = message }
        return result
    }

    func signals(_ actions: [CoordinatorAction]) -> [Int: Int32] {
        var result: [Int: Int32] = [:]
        for case .signal(let rank, let signal) in actions { result[rank] = signal }
        return result
    }

    func told(_ actions: [CoordinatorAction]) -> [NodeReport] {
        actions.compactMap { if case .tellLeader(let report) = $0 { report } else { nil } }
    }

    func finish(_ actions: [CoordinatorAction]) -> Int32? {
        actions.compactMap { if case .finish(let code) = $0 { code } else { nil } }.first
    }

    /// Ends every living rank with `status`; the last one's actions.
    func endAll(_ machine: inout Coordinator, _ status: Graceful.ExitStatus = .exited(0), now: Instant) -> [CoordinatorAction] {
        var last: [CoordinatorAction] = []
        for rank in machine.ranks.indices where machine.ranks[rank].isAlive { last = machine.handle(.exited(rank: rank, status), now: now) }
        return last
    }

    /// A stop whose step the leader chose: 12, ranks at 5 and 7.
    func stopAtTwelve() -> Coordinator {
        var machine = member()
        _ = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 5), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 7), now: t0)
        _ = machine.handle(.stepChosen(round: 1, step: 12), now: t0 + 1)
        return machine
    }

    @Test func aStopTellsTheLeaderTheFurthestPositionAndTakesItsStep() {
        var machine = member()
        let stop = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(sends(stop) == [0: .stop(id: 1, trigger: "SIGTERM"), 1: .stop(id: 1, trigger: "SIGTERM")])
        #expect(told(stop).isEmpty)
        #expect(machine.handle(.position(rank: 0, id: 1, step: 5), now: t0).isEmpty)
        // The node chooses nothing: it tells the leader and waits.
        #expect(machine.handle(.position(rank: 1, id: 1, step: 7), now: t0) == [.tellLeader(.position(round: 1, furthest: 7))])
        guard case .stopping(let stopping) = machine.phase else { Issue.record("not stopping"); return }
        #expect(stopping.round.target == .awaitingLeader)
        #expect(machine.handle(.stepChosen(round: 2, step: 12), now: t0 + 1).isEmpty)
        let step = machine.handle(.stepChosen(round: 1, step: 12), now: t0 + 1)
        #expect(sends(step) == [0: .stopAt(id: 1, step: 12), 1: .stopAt(id: 1, step: 12)])
        #expect(step.contains(.report(.stepChosen(.stop, step: 12, lowest: 5, highest: 7))))
        #expect(machine.handle(.stepChosen(round: 1, step: 13), now: t0 + 1).isEmpty)
        // Its `.commit` says "this node's ranks confirmed"; the leader's answer comes as `.commitWritten`.
        #expect(!machine.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 2).contains { if case .commit = $0 { true } else { false } })
        let confirmed = machine.handle(.checkpointed(rank: 1, step: 12, path: "b"), now: t0 + 2)
        #expect(confirmed == [.commit(step: 12, paths: ["a", "b"], trigger: "SIGTERM")])
        #expect(finish(machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 3)) == nil)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0 + 3)) == nil, "the leader's answer decides the exit code")
        let written = machine.handle(.commitWritten, now: t0 + 4)
        #expect(written.contains(.report(.committed(step: 12))))
        #expect(finish(written) == 0)
        #expect(machine.lastCommittedStep == 12)
    }

    @Test func theCommittedStepReachesTheRanksStillRunning() {
        var machine = stopAtTwelve()
        _ = machine.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 2)
        _ = machine.handle(.checkpointed(rank: 1, step: 12, path: "b"), now: t0 + 2)
        #expect(sends(machine.handle(.commitWritten, now: t0 + 3)) == [0: .committed(step: 12), 1: .committed(step: 12)])
        #expect(finish(endAll(&machine, now: t0 + 4)) == 0)
    }

    @Test func theAlignmentDeadlineTellsTheLeaderWithoutTheSilentRank() {
        var machine = member()
        _ = machine.handle(.trigger(.controlFile), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 3), now: t0)
        #expect(told(machine.handle(.tick, now: t0 + 1.9)).isEmpty)
        #expect(told(machine.handle(.tick, now: t0 + 2)) == [.position(round: 1, furthest: 3)])
        #expect(told(machine.handle(.tick, now: t0 + 3)).isEmpty)
        let step = machine.handle(.stepChosen(round: 1, step: 4), now: t0 + 3)
        #expect(sends(step) == [0: .stopAt(id: 1, step: 4), 1: .stopAt(id: 1, step: 4)])
        #expect(step.contains(.report(.noAnswer(rank: 1, within: 2))))
        #expect(machine.ranks[1].note == .didNotAnswerInTime)
    }

    /// The leader's alignment deadline can pass before this node's (its reports cross the network):
    /// its step is the job's, taken while the node still aligns, or the round could only fail.
    @Test func aStepThatArrivesWhileTheNodeStillAlignsIsTaken() {
        var machine = member()
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 3), now: t0)
        let step = machine.handle(.stepChosen(round: 1, step: 9), now: t0 + 0.5)
        #expect(sends(step) == [0: .stopAt(id: 1, step: 9), 1: .stopAt(id: 1, step: 9)])
        #expect(machine.handle(.position(rank: 1, id: 1, step: 2), now: t0 + 0.6).isEmpty)
        #expect(told(machine.handle(.tick, now: t0 + 2)).isEmpty, "the leader chose already: nothing to tell")
        _ = machine.handle(.checkpointed(rank: 0, step: 9, path: "a"), now: t0 + 3)
        #expect(machine.handle(.checkpointed(rank: 1, step: 9, path: "b"), now: t0 + 3) == [.commit(step: 9, paths: ["a", "b"], trigger: "SIGINT")])
    }

    @Test func ranksThatNeverSaidHelloFailTheRoundForTheWholeJob() {
        var plain = member(speaking: [])
        let stop = plain.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(told(stop) == [.roundFailed(round: 1, .neverSaidHello(ranks: [0, 1])), .position(round: 1, furthest: nil)])
        #expect(signals(stop) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        // A plain gang that stops cleanly still ends 0, whatever happened elsewhere.
        _ = plain.handle(.roundFailedElsewhere(round: 1, "node 2: rank 4 ended before confirming"), now: t0 + 1)
        #expect(finish(endAll(&plain, now: t0 + 6)) == 0)

        var mixed = member(speaking: [1])
        #expect(told(mixed.handle(.trigger(.controlFile), now: t0)) == [.roundFailed(round: 1, .neverSaidHello(ranks: [0]))])
    }

    @Test func aLocalProblemIsToldToTheLeaderOnce() {
        var machine = stopAtTwelve()
        let passed = machine.handle(.checkpointed(rank: 1, step: 14, path: "b"), now: t0 + 2)
        #expect(told(passed) == [.roundFailed(round: 1, .wrongStep(rank: 1, kind: .stop, expected: 12, confirmed: 14))])
        let ended = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 2)
        #expect(told(ended).isEmpty)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0 + 3)) == ExitCode.notCommitted)
    }

    /// A rank that ended before the stop cannot save the stop step: the round cannot commit, and the
    /// leader hears it at once rather than at its deadline.
    @Test func aRankThatEndedBeforeTheStopFailsTheRoundAtOnce() {
        var machine = member(ranks: 3)
        _ = machine.handle(.exited(rank: 2, .exited(0)), now: t0)
        let stop = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0 + 1)
        let ended = [Problem.Ended(rank: 2, status: .exited(0))]
        #expect(stop.contains(.report(.stopProblem(.endedBeforeStop(ended)))))
        #expect(told(stop) == [.roundFailed(round: 1, .endedBeforeStop(ended))])
        // Once is enough.
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0 + 1)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0 + 1)
        _ = machine.handle(.stepChosen(round: 1, step: 5), now: t0 + 1)
        #expect(told(machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 2)).isEmpty)
    }

    @Test func aRoundFailedElsewhereCommitsNothingHereEither() {
        var machine = stopAtTwelve()
        _ = machine.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 2)
        _ = machine.handle(.checkpointed(rank: 1, step: 12, path: "b"), now: t0 + 2)
        let reason = "node 2 (h2) did not confirm within 30s"
        let failed = machine.handle(.roundFailedElsewhere(round: 1, reason), now: t0 + 3)
        #expect(failed == [.report(.stopProblem(.failedElsewhere(reason)))])
        // The commit this node waited for will not come; a stray answer changes nothing.
        #expect(machine.handle(.commitWritten, now: t0 + 3).isEmpty)
        #expect(machine.handle(.roundFailedElsewhere(round: 7, "another round"), now: t0 + 3).isEmpty)
        #expect(finish(endAll(&machine, now: t0 + 4)) == ExitCode.notCommitted)
        #expect(machine.lastCommittedStep == nil)
    }

    @Test func anotherNodesFailureTearsThisNodeDownWithoutARestart() {
        var machine = member()
        let reason = "node 1 (h1) is gone: sent nothing for 10s"
        let failed = machine.handle(.nodeFailed(reason), now: t0)
        #expect(failed.contains(.report(.nodeFailed(reason, stopping: 2))))
        #expect(signals(failed) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(machine.phase == .failing(nil, stopRequested: true))
        #expect(machine.failedElsewhere == reason)
        #expect(machine.handle(.nodeFailed("again"), now: t0).isEmpty)
        let last = endAll(&machine, .signaled(SignalNumber.terminate), now: t0 + 1)
        #expect(!last.contains(.awaitGangExit))
        #expect(finish(last) == ExitCode.rankFailed)
        #expect(machine.restarts == 0)
    }

    @Test func anotherNodesFailureKillsThoseThatDoNotEnd() {
        var machine = member()
        _ = machine.handle(.nodeFailed("node 3: rank 9 failed"), now: t0)
        #expect(machine.nextDeadline == t0 + 10)
        #expect(signals(machine.handle(.tick, now: t0 + 10)) == [0: SignalNumber.kill, 1: SignalNumber.kill])
    }

    /// During a stop, another node's failure ends the stop without its commit (2), not as a failure
    /// (1): the stop was asked for. A commit the leader wrote before it stands (0).
    @Test func anotherNodesFailureDuringAStopEndsItUncommitted() {
        var machine = stopAtTwelve()
        let reason = "node 1 (h1) is gone: reset"
        let failed = machine.handle(.nodeFailed(reason), now: t0 + 2)
        #expect(failed.contains(.report(.stopProblem(.failedElsewhere(reason)))))
        #expect(signals(failed) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(finish(endAll(&machine, .signaled(SignalNumber.terminate), now: t0 + 3)) == ExitCode.notCommitted)

        var pending = stopAtTwelve()
        _ = pending.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 2)
        _ = pending.handle(.checkpointed(rank: 1, step: 12, path: "b"), now: t0 + 2)
        _ = pending.handle(.nodeFailed("the leader (node 0) is gone: reset"), now: t0 + 3)
        #expect(pending.handle(.commitWritten, now: t0 + 3).isEmpty, "a commit the node was told failed")
        #expect(finish(endAll(&pending, now: t0 + 4)) == ExitCode.notCommitted)

        var committed = stopAtTwelve()
        _ = committed.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 2)
        _ = committed.handle(.checkpointed(rank: 1, step: 12, path: "b"), now: t0 + 2)
        _ = committed.handle(.commitWritten, now: t0 + 3)
        let late = committed.handle(.nodeFailed("node 1 (h1) is gone: reset"), now: t0 + 4)
        #expect(!late.contains { if case .report(.stopProblem) = $0 { true } else { false } })
        #expect(finish(endAll(&committed, now: t0 + 5)) == 0)
    }

    /// The leader decides: the gang is cleared meanwhile, and its verdict ends the run (no restart)...
    @Test func aRankFailureIsToldToTheLeaderWhoseVerdictDecides() {
        var machine = member()
        let failed = machine.handle(.exited(rank: 1, .exited(1)), now: t0)
        #expect(told(failed) == [.rankFailed(rank: 1, .exited(1))])
        #expect(signals(failed) == [0: SignalNumber.terminate])
        let last = machine.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0 + 1)
        #expect(last == [.awaitGangExit])
        #expect(told(machine.handle(.gangGone, now: t0 + 2)).isEmpty, "nothing to clear for before the leader's word")
        #expect(finish(machine.handle(.nodeFailed("node 0: rank 1 failed (exited(1))"), now: t0 + 3)) == ExitCode.rankFailed)

        // ... or a restart of the whole job: cleared, then relaunched only on the leader's word.
        var restarted = member()
        _ = restarted.handle(.exited(rank: 1, .exited(1)), now: t0)
        _ = restarted.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0 + 1)
        #expect(told(restarted.handle(.restartJob(restart: 1, maxRestarts: 2, "node 0: rank 1 failed"), now: t0 + 2)).isEmpty)
        #expect(told(restarted.handle(.gangGone, now: t0 + 3)) == [.cleared(restart: 1)])
        #expect(restarted.handle(.relaunch(restart: 2), now: t0 + 4).isEmpty)
        #expect(restarted.handle(.relaunch(restart: 1), now: t0 + 4) == [.launch(restart: 1)])
        #expect(restarted.restarts == 1 && restarted.phase == .running(checkpoint: nil))

        // Another node's failure restarts a node whose ranks are training: they are torn down first.
        var healthy = member()
        let asked = healthy.handle(.restartJob(restart: 1, maxRestarts: 1, "node 1 (h1) is gone: reset"), now: t0)
        #expect(signals(asked) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        _ = healthy.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0 + 1)
        #expect(healthy.handle(.exited(rank: 1, .signaled(SignalNumber.terminate)), now: t0 + 1) == [.awaitGangExit])
        #expect(told(healthy.handle(.gangGone, now: t0 + 2)) == [.cleared(restart: 1)])

        // During a stop a rank's end is the stop's business: the round fails, the job does not.
        var stopping = stopAtTwelve()
        let ended = stopping.handle(.exited(rank: 1, .exited(1)), now: t0 + 2)
        #expect(told(ended) == [.roundFailed(round: 1, .endedBeforeConfirming(rank: 1, .exited(1)))])
    }

    /// The leader counted the repeated signal: it escalates here at once, whatever the debounce, and
    /// is never taken for the first signal after a stop by the control file.
    @Test func anEscalationCountsWithoutDebounce() {
        var machine = member()
        _ = machine.handle(.trigger(.controlFile), now: t0)
        let term = machine.handle(.escalate(.signal(SignalNumber.terminate)), now: t0 + 0.01)
        #expect(term.contains(.report(.escalated(.signal(SignalNumber.terminate), .terminate(killAfter: 10)))))
        #expect(signals(term) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        let kill = machine.handle(.escalate(.signal(SignalNumber.interrupt)), now: t0 + 0.02)
        #expect(signals(kill) == [0: SignalNumber.kill, 1: SignalNumber.kill])
        #expect(finish(endAll(&machine, .signaled(SignalNumber.kill), now: t0 + 0.03)) == 128 + SignalNumber.interrupt)

        var quit = member()
        _ = quit.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(signals(quit.handle(.escalate(.quit(SignalNumber.quit)), now: t0 + 0.01)) == [0: SignalNumber.kill, 1: SignalNumber.kill])
    }

    @Test func aCheckpointRoundCommitsThroughTheLeaderAndTrainingGoesOn() {
        var machine = member()
        let request = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        #expect(sends(request) == [0: .checkpoint(id: 1, trigger: "SIGUSR2"), 1: .checkpoint(id: 1, trigger: "SIGUSR2")])
        _ = machine.handle(.position(rank: 0, id: 1, step: 3), now: t0)
        #expect(told(machine.handle(.position(rank: 1, id: 1, step: 2), now: t0)) == [.position(round: 1, furthest: 3)])
        #expect(sends(machine.handle(.stepChosen(round: 1, step: 6), now: t0 + 1)) == [0: .checkpointAt(id: 1, step: 6), 1: .checkpointAt(id: 1, step: 6)])
        _ = machine.handle(.checkpointed(rank: 0, step: 6, path: "a"), now: t0 + 2)
        #expect(machine.handle(.checkpointed(rank: 1, step: 6, path: "b"), now: t0 + 2) == [.commit(step: 6, paths: ["a", "b"], trigger: "SIGUSR2")])
        // Its own grace passes while the leader commits (its deadline is later): the node waits for it.
        #expect(machine.nextDeadline == nil)
        #expect(machine.handle(.tick, now: t0 + 31).isEmpty)
        #expect(sends(machine.handle(.commitWritten, now: t0 + 31)) == [0: .committed(step: 6), 1: .committed(step: 6)])
        #expect(machine.phase == .running(checkpoint: nil))
        #expect(machine.lastCommittedStep == 6)
        #expect(machine.currentRoundID == nil)
    }

    @Test func aCheckpointRoundFailedElsewhereReleasesTheRanksWaitingForTheStep() {
        var machine = member()
        _ = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 3), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 2), now: t0)
        let failed = machine.handle(.roundFailedElsewhere(round: 1, "node 2: rank 4 ended"), now: t0 + 1)
        #expect(failed.contains(.report(.checkpointAbandoned(.failedElsewhere("node 2: rank 4 ended")))))
        #expect(sends(failed) == [0: .checkpointAt(id: 1, step: 4), 1: .checkpointAt(id: 1, step: 4)])
        #expect(told(failed).isEmpty, "the leader knows")
        #expect(machine.phase == .running(checkpoint: nil))
        // Their late confirmations are harmless.
        #expect(machine.handle(.checkpointed(rank: 0, step: 4, path: "a"), now: t0 + 2).isEmpty)
    }

    @Test func aLeaderThatNeverAnswersCostsTheRoundNotTheRun() {
        var checkpoint = member()
        _ = checkpoint.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        _ = checkpoint.handle(.position(rank: 0, id: 1, step: 3), now: t0)
        _ = checkpoint.handle(.position(rank: 1, id: 1, step: 3), now: t0)
        #expect(checkpoint.nextDeadline == t0 + 30)
        let abandoned = checkpoint.handle(.tick, now: t0 + 30)
        #expect(told(abandoned) == [.roundFailed(round: 1, .notConfirmedInTime(ranks: [0, 1], grace: 30))])
        #expect(sends(abandoned) == [0: .checkpointAt(id: 1, step: 4), 1: .checkpointAt(id: 1, step: 4)])
        #expect(signals(abandoned).isEmpty)
        #expect(checkpoint.phase == .running(checkpoint: nil))

        var stop = member()
        _ = stop.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        _ = stop.handle(.position(rank: 0, id: 1, step: 3), now: t0)
        _ = stop.handle(.position(rank: 1, id: 1, step: 3), now: t0)
        #expect(signals(stop.handle(.tick, now: t0 + 30)) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(finish(endAll(&stop, .signaled(SignalNumber.terminate), now: t0 + 31)) == ExitCode.notCommitted)
    }
}
