import GracefulProtocol
import Testing

@testable import Graceful

/// The stop/commit/escalation decisions, driven by events and a fake clock; no process involved.
@Suite struct CoordinatorTests {
    let policy = StopPolicy(grace: 30, killAfter: 10, alignTimeout: 2)
    let t0 = Instant.seconds(100)

    func coordinator(ranks: Int, speaking: [Int]) -> Coordinator {
        var coordinator = Coordinator(rankCount: ranks, policy: policy)
        for rank in speaking { _ = coordinator.handle(.hello(rank: rank), now: t0) }
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

    func commits(_ actions: [CoordinatorAction]) -> [Int] {
        actions.compactMap { if case .commit(let step, _, _) = $0 { return step } else { return nil } }
    }

    func finish(_ actions: [CoordinatorAction]) -> Int32? {
        actions.compactMap { if case .finish(let code) = $0 { return code } else { return nil } }.first
    }

    /// Runs a clean stop on four ranks at positions `positions` and returns the chosen step.
    func stopStep(positions: [Int?]) -> Int?? {
        var machine = coordinator(ranks: positions.count, speaking: Array(positions.indices))
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        var decided: Int??
        for (rank, position) in positions.enumerated() {
            let actions = machine.handle(.position(rank: rank, id: 1, step: position), now: t0)
            for case .send(_, .stopAt(_, let step)) in actions { decided = .some(step) }
        }
        return decided
    }

    @Test func stopStepIsOneBeyondTheFurthestRank() {
        #expect(stopStep(positions: [41, 41, 40, 41]) == .some(42))
        #expect(stopStep(positions: [7, 9, 8, 9]) == .some(10))
        #expect(stopStep(positions: [nil, 3, nil, 2]) == .some(4))
        #expect(stopStep(positions: [nil, nil]) == .some(nil))
    }

    /// The doorbell is rung once per request, before any of its messages, and never for ranks that
    /// do not speak the protocol.
    @Test func everyRequestRingsTheDoorbellBeforeItsMessages() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        let checkpoint = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        #expect(checkpoint.filter { $0 == .ring(id: 1) }.count == 1)
        #expect(checkpoint.firstIndex(of: .ring(id: 1))! < checkpoint.firstIndex { if case .send = $0 { true } else { false } }!)
        let stop = machine.handle(.trigger(.controlFile), now: t0)
        #expect(stop.first { if case .ring = $0 { true } else { false } } == .ring(id: 2))
        #expect(stop.firstIndex(of: .ring(id: 2))! < stop.firstIndex { if case .send = $0 { true } else { false } }!)

        var plain = coordinator(ranks: 2, speaking: [])
        #expect(!plain.handle(.trigger(.controlFile), now: t0).contains { if case .ring = $0 { true } else { false } })
    }

    @Test func stopStepIsDecidedOnlyWhenEveryRankAnswered() {
        var machine = coordinator(ranks: 3, speaking: [0, 1, 2])
        let request = machine.handle(.trigger(.controlFile), now: t0)
        #expect(sends(request) == [
            0: .stop(id: 1, trigger: "control-file"), 1: .stop(id: 1, trigger: "control-file"),
            2: .stop(id: 1, trigger: "control-file"),
        ])
        #expect(sends(machine.handle(.position(rank: 0, id: 1, step: 5), now: t0)).isEmpty)
        #expect(sends(machine.handle(.position(rank: 1, id: 1, step: 6), now: t0)).isEmpty)
        #expect(sends(machine.handle(.position(rank: 2, id: 1, step: 5), now: t0)) == [
            0: .stopAt(id: 1, step: 7), 1: .stopAt(id: 1, step: 7), 2: .stopAt(id: 1, step: 7),
        ])
    }

    @Test func alignTimeoutDecidesWithoutTheSilentRank() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 12), now: t0)
        #expect(machine.nextDeadline == t0 + 2)
        #expect(sends(machine.handle(.tick, now: t0 + 1.9)).isEmpty)
        let late = machine.handle(.tick, now: t0 + 2)
        #expect(sends(late) == [0: .stopAt(id: 1, step: 13), 1: .stopAt(id: 1, step: 13)])
        #expect(machine.ranks[1].note == .didNotAnswerInTime)
    }

    @Test func commitsOnlyWhenEveryRankConfirmedTheStopStep() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        #expect(commits(machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0 + 1)).isEmpty)
        let last = machine.handle(.checkpointed(rank: 1, step: 5, path: "b"), now: t0 + 1)
        #expect(last.contains(.commit(step: 5, paths: ["a", "b"], trigger: "SIGINT")))
        let written = machine.handle(.commitWritten, now: t0 + 1)
        #expect(sends(written) == [0: .committed(step: 5), 1: .committed(step: 5)])
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 2)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0 + 2)) == 0)
        #expect(machine.phase == .finished(exitCode: 0))
    }

    @Test func aRankPastTheStopStepPreventsTheCommitAndIsReported() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        let passed = machine.handle(.checkpointed(rank: 1, step: 7, path: "b"), now: t0)
        #expect(passed.contains(.report(.stopProblem(.wrongStep(rank: 1, kind: .stop, expected: 5, confirmed: 7)))))
        #expect("\(Report.stopProblem(.wrongStep(rank: 1, kind: .stop, expected: 5, confirmed: 7)))"
            == "error: rank 1 passed the stop step 5: it checkpointed step 7; nothing will be committed")
        #expect(commits(machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0)).isEmpty)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0)) == ExitCode.notCommitted)
        #expect(machine.ranks[1].note == .passedStopStep(5))
    }

    @Test func duplicateAndUnsolicitedConfirmationsAreIgnored() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        let early = machine.handle(.checkpointed(rank: 0, step: 3, path: "x"), now: t0)
        #expect(early.contains(.report(.unsolicitedConfirmation(rank: 0, step: 3))))
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0)
        let again = machine.handle(.checkpointed(rank: 0, step: 5, path: "a2"), now: t0)
        #expect(commits(again).isEmpty)
        #expect(machine.ranks[0].confirmation?.path == "a")
    }

    @Test func graceExpiryTerminatesThenKillsAndCommitsNothing() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0 + 1)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 1)
        // The deadlines before the grace's end only say who is still waited for.
        #expect(machine.nextDeadline == t0 + StopPolicy.progressInterval)
        #expect(signals(machine.handle(.tick, now: t0 + 29.9)).isEmpty)
        #expect(machine.nextDeadline == t0 + 30)
        #expect(signals(machine.handle(.tick, now: t0 + 30)) == [1: SignalNumber.terminate])
        #expect(machine.ranks[1].note == .noConfirmationBeforeDeadline)
        #expect(machine.nextDeadline == t0 + 40)
        #expect(signals(machine.handle(.tick, now: t0 + 39)).isEmpty)
        #expect(signals(machine.handle(.tick, now: t0 + 40)) == [1: SignalNumber.kill])
        #expect(signals(machine.handle(.tick, now: t0 + 50)).isEmpty)
        let end = machine.handle(.exited(rank: 1, .signaled(SignalNumber.kill)), now: t0 + 40)
        #expect(finish(end) == ExitCode.notCommitted)
        #expect(commits(end).isEmpty)
    }

    @Test func secondSignalTerminatesNowAndThirdKills() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        let second = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0 + 1)
        #expect(signals(second) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(machine.nextDeadline == t0 + 2)
        #expect(signals(machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0 + 1.1)).isEmpty, "within the debounce")
        let third = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0 + 1.5)
        #expect(signals(third) == [0: SignalNumber.kill, 1: SignalNumber.kill])
        _ = machine.handle(.exited(rank: 0, .signaled(SignalNumber.kill)), now: t0 + 2)
        let end = machine.handle(.exited(rank: 1, .signaled(SignalNumber.kill)), now: t0 + 2)
        #expect(finish(end) == 128 + SignalNumber.interrupt)
    }

    @Test func controlFileTwiceDoesNotEscalate() {
        var machine = coordinator(ranks: 1, speaking: [0])
        _ = machine.handle(.trigger(.controlFile), now: t0)
        #expect(machine.handle(.trigger(.controlFile), now: t0 + 1).isEmpty)
    }

    @Test func aFailedRankStopsTheOthersAndTheRunFails() {
        var machine = coordinator(ranks: 3, speaking: [0, 1, 2])
        let failed = machine.handle(.exited(rank: 1, .exited(3)), now: t0)
        #expect(signals(failed) == [0: SignalNumber.terminate, 2: SignalNumber.terminate])
        #expect(machine.firstFailure == Coordinator.Failure(rank: 1, status: .exited(3)))
        #expect(signals(machine.handle(.tick, now: t0 + 10)) == [0: SignalNumber.kill, 2: SignalNumber.kill])
        _ = machine.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0 + 10)
        let end = machine.handle(.exited(rank: 2, .signaled(SignalNumber.kill)), now: t0 + 10)
        #expect(finish(end) == ExitCode.rankFailed)
        #expect(machine.firstFailure?.rank == 1)
    }

    @Test func aRankEndingBeforeConfirmingStopsTheOthersAtOnce() {
        var machine = coordinator(ranks: 3, speaking: [0, 1, 2])
        _ = machine.handle(.trigger(.signal(SignalNumber.user1)), now: t0)
        let crash = machine.handle(.exited(rank: 2, .signaled(11)), now: t0 + 1)
        #expect(signals(crash) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 1)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0 + 1)) == ExitCode.notCommitted)
    }

    @Test func plainRanksGetSigtermAndStopCleanlyWithoutACommit() {
        var machine = coordinator(ranks: 2, speaking: [])
        _ = machine.handle(.output(rank: 1), now: t0)
        let request = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(signals(request) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(sends(request).isEmpty)
        #expect(machine.nextDeadline == t0 + StopPolicy.progressInterval)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 1)
        let end = machine.handle(.exited(rank: 1, .signaled(SignalNumber.terminate)), now: t0 + 1)
        #expect(commits(end).isEmpty)
        #expect(finish(end) == 0)
    }

    /// A plain rank ended by the stop's SIGTERM before it wrote anything or ran
    /// `StopPolicy.plainStartupTime` never got past its start-up: the stop was not clean.
    @Test func aPlainRankStoppedBeforeItStartedFailsTheStop() {
        var early = Coordinator(rankCount: 2, policy: policy)
        _ = early.handle(.launched, now: t0)
        _ = early.handle(.output(rank: 0), now: t0 + 1)
        _ = early.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0 + 2)
        _ = early.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0 + 2.1)
        let end = early.handle(.exited(rank: 1, .signaled(SignalNumber.terminate)), now: t0 + 2.1)
        #expect(finish(end) == ExitCode.notCommitted)
        #expect(early.ranks.map(\.note) == [nil, .stoppedBeforeStarting])
        #expect(end.contains(.report(.stopProblem(.stoppedBeforeStarting(rank: 1)))))

        var late = Coordinator(rankCount: 1, policy: policy)
        _ = late.handle(.launched, now: t0)
        _ = late.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0 + StopPolicy.plainStartupTime)
        #expect(finish(late.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0 + 6)) == 0)
    }

    @Test func plainRankIsKilledWhenTheGraceEnds() {
        var machine = coordinator(ranks: 1, speaking: [])
        _ = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(signals(machine.handle(.tick, now: t0 + 30)) == [0: SignalNumber.kill])
    }

    @Test func aGangWithARankThatNeverSaidHelloCommitsNothing() {
        var machine = coordinator(ranks: 2, speaking: [0])
        let request = machine.handle(.trigger(.controlFile), now: t0)
        #expect(signals(request) == [1: SignalNumber.terminate])
        _ = machine.handle(.position(rank: 0, id: 1, step: 9), now: t0)
        var actions = machine.handle(.checkpointed(rank: 0, step: 10, path: "r0"), now: t0)
        actions += machine.handle(.exited(rank: 1, .exited(0)), now: t0)
        actions += machine.handle(.exited(rank: 0, .exited(0)), now: t0)
        #expect(commits(actions).isEmpty)
        #expect(finish(actions) == ExitCode.notCommitted)
    }

    @Test func noCheckpointRoundWhileARankHasNotSaidHello() {
        var machine = coordinator(ranks: 2, speaking: [0])
        let skipped = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        #expect(sends(skipped).isEmpty && machine.phase == .running(checkpoint: nil))
    }

    @Test func aFailedCommitWriteEndsWithoutACommit() {
        var machine = coordinator(ranks: 1, speaking: [0])
        _ = machine.handle(.trigger(.controlFile), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 1), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 2, path: "p"), now: t0)
        #expect(finish(machine.handle(.exited(rank: 0, .exited(0)), now: t0)) == nil)
        let failed = machine.handle(.commitFailed("disk full"), now: t0)
        #expect(finish(failed) == ExitCode.notCommitted)
    }

    @Test func helloAfterTheStopRequestDoesNotMakeARankSpeak() {
        var machine = coordinator(ranks: 1, speaking: [])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.hello(rank: 0), now: t0)
        #expect(machine.ranks[0].speaksProtocol == false)
    }

    @Test func normalEndFinishesOnceWithZero() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        #expect(finish(machine.handle(.exited(rank: 0, .exited(0)), now: t0)) == nil)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0)) == 0)
        #expect(machine.handle(.tick, now: t0 + 100).isEmpty)
        #expect(machine.nextDeadline == nil)
    }

    @Test func nothingIsSignalledAfterItEnded() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0)
        let later = machine.handle(.tick, now: t0 + 1000)
        #expect(signals(later)[0] == nil)
    }

    @Test func aSignalStormIsOneRequest() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        var actions: [CoordinatorAction] = []
        for index in 0..<100 {
            actions += machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0 + Double(index) * 0.001)
        }
        #expect(signals(actions).isEmpty)
        #expect(actions.filter { if case .send(_, .stop) = $0 { return true } else { return false } }.count == 2)
    }

    // MARK: Restarts

    func failAndClear(_ machine: inout Coordinator, at now: Instant) -> [CoordinatorAction] {
        var actions = machine.handle(.exited(rank: 1, .exited(9)), now: now)
        actions += machine.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: now)
        return actions
    }

    @Test func aFailedGangIsClearedThenRelaunchedAfterAGrowingBackoff() {
        let policy = StopPolicy(maxRestarts: 2, restartBackoff: 1)
        var machine = Coordinator(rankCount: 2, policy: policy, resumedStep: 40)
        _ = machine.handle(.launched, now: t0)
        let failed = failAndClear(&machine, at: t0)
        #expect(failed.contains(.awaitGangExit))
        #expect(finish(failed) == nil)
        #expect(machine.phase == .restarting(resumeAt: nil))
        #expect(machine.handle(.tick, now: t0 + 100).isEmpty, "no relaunch before the gang is gone")
        _ = machine.handle(.gangGone, now: t0 + 1)
        #expect(machine.nextDeadline == t0 + 2)
        #expect(!machine.handle(.tick, now: t0 + 1.9).contains(.launch(restart: 1)))
        #expect(machine.handle(.tick, now: t0 + 2).contains(.launch(restart: 1)))
        #expect(machine.ranks.allSatisfy { $0.isAlive && !$0.speaksProtocol })
        _ = machine.handle(.launched, now: t0 + 2)
        _ = failAndClear(&machine, at: t0 + 3)
        _ = machine.handle(.gangGone, now: t0 + 3)
        #expect(machine.nextDeadline == t0 + 5, "the second wait doubles")
        #expect(machine.handle(.tick, now: t0 + 5).contains(.launch(restart: 2)))
        _ = machine.handle(.launched, now: t0 + 5)
        let last = failAndClear(&machine, at: t0 + 6)
        #expect(finish(last) == ExitCode.rankFailed)
        #expect(machine.attempts.count == 3)
        #expect(machine.attempts.map { $0.failure?.rank } == [1, 1, 1])
        #expect(machine.attempts.map(\.restart) == [0, 1, 2])
    }

    @Test func backoffIsCapped() {
        let policy = StopPolicy(restartBackoff: 5)
        #expect((1...6).map { policy.backoff(beforeRestart: $0) } == [5, 10, 20, 40, 60, 60])
        #expect(StopPolicy(restartBackoff: 100).backoff(beforeRestart: 3) == 100)
    }

    @Test func aStopIsNeverAnsweredWithARestart() {
        var machine = Coordinator(rankCount: 2, policy: StopPolicy(maxRestarts: 5))
        _ = machine.handle(.hello(rank: 0), now: t0)
        _ = machine.handle(.hello(rank: 1), now: t0)
        _ = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        _ = machine.handle(.exited(rank: 0, .exited(1)), now: t0)
        let end = machine.handle(.exited(rank: 1, .exited(1)), now: t0)
        #expect(!end.contains(.awaitGangExit))
        #expect(finish(end) == ExitCode.notCommitted)
    }

    @Test func aStopDuringTheTeardownOrTheBackoffCancelsTheRestart() {
        var tearing = Coordinator(rankCount: 2, policy: StopPolicy(maxRestarts: 5))
        _ = tearing.handle(.exited(rank: 1, .exited(9)), now: t0)
        _ = tearing.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        let end = tearing.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0)
        #expect(finish(end) == ExitCode.rankFailed && !end.contains(.awaitGangExit))

        var waiting = Coordinator(rankCount: 2, policy: StopPolicy(maxRestarts: 5))
        _ = failAndClear(&waiting, at: t0)
        _ = waiting.handle(.gangGone, now: t0)
        #expect(finish(waiting.handle(.trigger(.controlFile), now: t0 + 0.5)) == ExitCode.rankFailed)
        #expect(!waiting.handle(.tick, now: t0 + 100).contains(.launch(restart: 1)))
    }

    // MARK: Checkpoints without stopping

    func checkpointRound(_ machine: inout Coordinator, at now: Instant) -> [CoordinatorAction] {
        var actions = machine.handle(.position(rank: 0, id: 1, step: 10), now: now)
        actions += machine.handle(.position(rank: 1, id: 1, step: 11), now: now)
        return actions
    }

    @Test func periodicCheckpointsCommitAndTrainingGoesOn() {
        var machine = Coordinator(rankCount: 2, policy: StopPolicy(checkpointEvery: 60))
        _ = machine.handle(.hello(rank: 0), now: t0)
        _ = machine.handle(.hello(rank: 1), now: t0)
        _ = machine.handle(.launched, now: t0)
        #expect(machine.nextDeadline == t0 + 60)
        #expect(sends(machine.handle(.tick, now: t0 + 59)).isEmpty)
        #expect(sends(machine.handle(.tick, now: t0 + 60)) == [
            0: .checkpoint(id: 1, trigger: "periodic"), 1: .checkpoint(id: 1, trigger: "periodic"),
        ])
        #expect(sends(checkpointRound(&machine, at: t0 + 60)) == [
            0: .checkpointAt(id: 1, step: 12), 1: .checkpointAt(id: 1, step: 12),
        ])
        _ = machine.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 61)
        let done = machine.handle(.checkpointed(rank: 1, step: 12, path: "b"), now: t0 + 61)
        #expect(done.contains(.commit(step: 12, paths: ["a", "b"], trigger: "periodic")))
        let written = machine.handle(.commitWritten, now: t0 + 61)
        #expect(sends(written) == [0: .committed(step: 12), 1: .committed(step: 12)])
        #expect(machine.lastCommittedStep == 12)
        #expect(machine.phase == .running(checkpoint: nil))
        #expect(machine.nextDeadline == t0 + 121, "the next round is measured from the end of this one")
    }

    @Test func aCheckpointRoundThatTimesOutSignalsNobody() {
        var machine = Coordinator(rankCount: 2, policy: StopPolicy(grace: 30))
        _ = machine.handle(.hello(rank: 0), now: t0)
        _ = machine.handle(.hello(rank: 1), now: t0)
        _ = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        _ = checkpointRound(&machine, at: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 12, path: "a"), now: t0 + 1)
        let late = machine.handle(.tick, now: t0 + 30)
        #expect(signals(late).isEmpty && commits(late).isEmpty)
        #expect(late.contains(.report(.checkpointAbandoned(.notConfirmedInTime(ranks: [1], grace: 30)))))
        #expect("\(Report.checkpointAbandoned(.notConfirmedInTime(ranks: [1], grace: 30)))"
            == "warning: checkpoint round abandoned: rank(s) 1 did not confirm within 30s; the previous record stays, training goes on")
        #expect(machine.phase == .running(checkpoint: nil))
    }

    @Test func aCheckpointPastItsStepAbandonsTheRound() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        _ = checkpointRound(&machine, at: t0)
        let passed = machine.handle(.checkpointed(rank: 1, step: 14, path: "b"), now: t0)
        #expect(commits(passed).isEmpty && machine.phase == .running(checkpoint: nil))
    }

    @Test func aStopSupersedesACheckpointRoundAndIgnoresItsLateConfirmations() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        _ = checkpointRound(&machine, at: t0)
        _ = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0 + 1)
        _ = machine.handle(.position(rank: 0, id: 2, step: 13), now: t0 + 1)
        _ = machine.handle(.position(rank: 1, id: 2, step: 13), now: t0 + 1)
        let late = machine.handle(.checkpointed(rank: 0, step: 12, path: "old"), now: t0 + 1)
        #expect(late.isEmpty, "a late checkpoint of the superseded round is neither an error nor a confirmation")
        _ = machine.handle(.checkpointed(rank: 0, step: 14, path: "a"), now: t0 + 2)
        let done = machine.handle(.checkpointed(rank: 1, step: 14, path: "b"), now: t0 + 2)
        #expect(done.contains(.commit(step: 14, paths: ["a", "b"], trigger: "SIGTERM")))
    }

    @Test func aSecondCheckpointRequestDuringARoundIsIgnored() {
        var machine = coordinator(ranks: 1, speaking: [0])
        _ = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        #expect(sends(machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)).isEmpty)
    }

    @Test func anAbandonedRoundStillReleasesTheRanksWaitingForItsStep() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.requestCheckpoint("SIGUSR2"), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 149), now: t0)
        let ended = machine.handle(.exited(rank: 0, .exited(0)), now: t0)
        #expect(sends(ended) == [1: .checkpointAt(id: 1, step: 150)])
        #expect(machine.phase == .running(checkpoint: nil))
        #expect(machine.handle(.checkpointed(rank: 1, step: 150, path: "b"), now: t0).isEmpty)
    }

    // MARK: Defects the property test found, and the newer rules

    @Test func aControlFileStopDuringAFailedGangsTeardownForbidsTheRestart() {
        var machine = Coordinator(rankCount: 2, policy: StopPolicy(maxRestarts: 5))
        _ = machine.handle(.exited(rank: 1, .exited(9)), now: t0)
        let stop = machine.handle(.trigger(.controlFile), now: t0)
        #expect(stop.contains(.report(.restartForbidden(.controlFile))))
        #expect(machine.stopTrigger == .controlFile)
        let end = machine.handle(.exited(rank: 0, .signaled(SignalNumber.terminate)), now: t0)
        #expect(finish(end) == ExitCode.rankFailed && !end.contains(.awaitGangExit))
    }

    @Test func aLongSignalStormIsOneStopAndAPauseThenEscalates() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        var actions: [CoordinatorAction] = []
        for index in 0..<100 {
            actions += machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0 + Double(index) * 0.017)
        }
        #expect(signals(actions).isEmpty, "each signal came within the debounce of the previous one")
        let deliberate = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0 + 99 * 0.017 + 0.25)
        #expect(signals(deliberate) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(machine.stopTrigger == .signal(SignalNumber.terminate))
    }

    @Test func theLargestPositionIsSetAsideInsteadOfOverflowing() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.controlFile), now: t0)
        let huge = machine.handle(.position(rank: 0, id: 1, step: Int.max), now: t0)
        #expect(huge.contains(.report(.stopProblem(.unusablePosition(rank: 0, step: Int.max)))))
        #expect(machine.ranks[0].position == .unusable(Int.max))
        let decided = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        #expect(sends(decided) == [0: .stopAt(id: 1, step: 5), 1: .stopAt(id: 1, step: 5)])
        _ = machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0)
        #expect(commits(machine.handle(.checkpointed(rank: 1, step: 5, path: "b"), now: t0)).isEmpty)
    }

    @Test func aConfirmationAfterTheGraceIsNotCommitted() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0 + 1)
        _ = machine.handle(.tick, now: t0 + 30)
        let late = machine.handle(.checkpointed(rank: 1, step: 5, path: "b"), now: t0 + 31)
        #expect(commits(late).isEmpty)
        #expect(late.contains(.report(.lateConfirmation(rank: 1, step: 5, grace: 30))))
        #expect(machine.ranks[1].note == .confirmedAfterDeadline)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 31)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0 + 31)) == ExitCode.notCommitted)
    }

    @Test func aRankThatEndedBeforeTheStopIsNamedAtTheStop() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.exited(rank: 1, .exited(0)), now: t0)
        let stop = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        let ended = Problem.endedBeforeStop([.init(rank: 1, status: .exited(0))])
        #expect(stop.contains(.report(.stopProblem(ended))))
        #expect("\(Report.stopProblem(ended))".contains("rank 1 (exit code 0) ended before the stop"))
        #expect(machine.ranks[1].note == .endedBeforeStop)
    }

    @Test func aLongGraceSaysEveryFewSecondsWhoIsStillWaitedFor() {
        var machine = Coordinator(rankCount: 2, policy: StopPolicy(grace: 30))
        _ = machine.handle(.hello(rank: 0), now: t0)
        _ = machine.handle(.hello(rank: 1), now: t0)
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0 + 1)
        #expect(machine.nextDeadline == t0 + StopPolicy.progressInterval)
        let first = machine.handle(.tick, now: t0 + StopPolicy.progressInterval)
        #expect(first.contains(.report(.waiting(ranks: [1], step: 5, graceLeft: 25))), "\(first)")
        #expect("\(Report.waiting(ranks: [1], step: 5, graceLeft: 25))" == "waiting for rank(s) 1 to confirm step 5 or end (25s of grace left)")
        // Nothing in between; again one interval later.
        #expect(!machine.handle(.tick, now: t0 + 6).contains { if case .report(.waiting) = $0 { true } else { false } })
        #expect(machine.handle(.tick, now: t0 + 10).contains { if case .report(.waiting) = $0 { true } else { false } })
    }

    /// A stop during start-up: one rank said hello, the others had not. Nothing can be committed,
    /// and once a plain rank ended on its SIGTERM the one that said hello is probably blocked in a
    /// collective with it: it gets SIGTERM at once rather than the whole grace.
    @Test func aMixedGangStopTerminatesTheProtocolRanksOnceAPlainOneEnded() {
        var machine = coordinator(ranks: 2, speaking: [0])
        let stop = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        #expect(signals(stop) == [1: SignalNumber.terminate])
        let ended = machine.handle(.exited(rank: 1, .signaled(SignalNumber.terminate)), now: t0 + 0.1)
        #expect(signals(ended) == [0: SignalNumber.terminate])
    }

    @Test func aSkippedPeriodicCheckpointIsReportedOnce() {
        var machine = Coordinator(rankCount: 2, policy: StopPolicy(checkpointEvery: 0.1))
        _ = machine.handle(.launched, now: t0)
        var skips = 0
        for index in 1...20 {
            for case .report(.checkpointSkipped) in machine.handle(.tick, now: t0 + Double(index) * 0.1) { skips += 1 }
        }
        #expect(skips == 1)
        // Still silent when the set of ranks missing changes; said again only after a round started.
        _ = machine.handle(.hello(rank: 0), now: t0 + 2.01)
        #expect(!machine.handle(.tick, now: t0 + 2.2).contains { if case .report(.checkpointSkipped) = $0 { true } else { false } })
        _ = machine.handle(.hello(rank: 1), now: t0 + 2.21)
        #expect(machine.handle(.tick, now: t0 + 2.4).contains(.report(.checkpointRequested(trigger: "periodic", asking: 2))))
        _ = machine.handle(.exited(rank: 1, .exited(0)), now: t0 + 2.41)
        let after = machine.handle(.tick, now: t0 + 2.6)
        #expect(after.contains(.report(.checkpointSkipped(trigger: "periodic", absent: [1], periodic: true))), "\(after)")
    }

    @Test func aQuitTerminatesEveryRankAtOnceYetAFastCommitStillWins() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        let quit = machine.handle(.trigger(.quit(SignalNumber.quit)), now: t0)
        #expect(sends(quit) == [0: .stop(id: 1, trigger: "SIGQUIT"), 1: .stop(id: 1, trigger: "SIGQUIT")])
        #expect(signals(quit) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(machine.nextDeadline == t0 + 2, "the alignment timeout; SIGKILL follows at killAfter")
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0)
        #expect(commits(machine.handle(.checkpointed(rank: 1, step: 5, path: "b"), now: t0)) == [5])
        _ = machine.handle(.commitWritten, now: t0)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0)) == 0)

        var slow = coordinator(ranks: 1, speaking: [0])
        _ = slow.handle(.trigger(.quit(SignalNumber.abort)), now: t0)
        #expect(signals(slow.handle(.tick, now: t0 + 10)) == [0: SignalNumber.kill])
        #expect(finish(slow.handle(.exited(rank: 0, .signaled(SignalNumber.kill)), now: t0 + 10)) == 128 + SignalNumber.abort)
    }

    @Test func aQuitDuringAStopKillsAtOnce() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        #expect(signals(machine.handle(.trigger(.quit(SignalNumber.quit)), now: t0 + 0.1)).isEmpty, "within the debounce")
        let quit = machine.handle(.trigger(.quit(SignalNumber.quit)), now: t0 + 0.5)
        #expect(signals(quit) == [0: SignalNumber.kill, 1: SignalNumber.kill])
    }

    @Test func theGraceExpiryTellsWhatReallyHappens() {
        var machine = coordinator(ranks: 2, speaking: [0])
        _ = machine.handle(.trigger(.controlFile), now: t0)
        let expiry = machine.handle(.tick, now: t0 + 30)
        #expect(signals(expiry) == [0: SignalNumber.terminate, 1: SignalNumber.kill])
        let report = Report.graceExpired(.init(grace: 30, killAfter: 10, terminated: [0], killedNow: [1], killedLater: []))
        #expect(expiry.contains(.report(report)))
        #expect("\(report)" == "grace of 30s expired; rank(s) 0, 1 still running: SIGTERM now, SIGKILL in 10s to rank(s) 0; SIGKILL now to rank(s) 1, which had SIGTERM at the stop")
    }

    @Test func theChosenStepSaysWhereTheRanksWere() {
        #expect("\(Report.stepChosen(.stop, step: 503, lowest: 502, highest: 502))" == "stop step 503 (every rank was at step 502)")
        #expect("\(Report.stepChosen(.checkpoint, step: 503, lowest: 500, highest: 502))" == "checkpoint step 503 (ranks were at steps 500 to 502)")
    }
}
