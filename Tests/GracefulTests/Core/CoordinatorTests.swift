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
        #expect(machine.ranks[1].note == "did not answer in time")
    }

    @Test func commitsOnlyWhenEveryRankConfirmedTheStopStep() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        _ = machine.handle(.trigger(.signal(SignalNumber.interrupt)), now: t0)
        _ = machine.handle(.position(rank: 0, id: 1, step: 4), now: t0)
        _ = machine.handle(.position(rank: 1, id: 1, step: 4), now: t0)
        #expect(commits(machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0 + 1)).isEmpty)
        let last = machine.handle(.checkpointed(rank: 1, step: 5, path: "b"), now: t0 + 1)
        #expect(last.contains(.commit(step: 5, paths: ["a", "b"], trigger: .signal(SignalNumber.interrupt))))
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
        #expect(passed.contains(.report("error: rank 1 passed the stop step 5: it checkpointed step 7; nothing will be committed")))
        #expect(commits(machine.handle(.checkpointed(rank: 0, step: 5, path: "a"), now: t0)).isEmpty)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0)
        #expect(finish(machine.handle(.exited(rank: 1, .exited(0)), now: t0)) == ExitCode.notCommitted)
        #expect(machine.ranks[1].note == "passed stop step 5")
    }

    @Test func duplicateAndUnsolicitedConfirmationsAreIgnored() {
        var machine = coordinator(ranks: 2, speaking: [0, 1])
        let early = machine.handle(.checkpointed(rank: 0, step: 3, path: "x"), now: t0)
        #expect(early.contains(.report("warning: rank 0 confirmed step 3 while no stop step was set; ignored")))
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
        #expect(machine.nextDeadline == t0 + 30)
        #expect(signals(machine.handle(.tick, now: t0 + 29.9)).isEmpty)
        #expect(signals(machine.handle(.tick, now: t0 + 30)) == [1: SignalNumber.terminate])
        #expect(machine.ranks[1].note == "no confirmation before the deadline")
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
        let request = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(signals(request) == [0: SignalNumber.terminate, 1: SignalNumber.terminate])
        #expect(sends(request).isEmpty)
        #expect(machine.nextDeadline == t0 + 30)
        _ = machine.handle(.exited(rank: 0, .exited(0)), now: t0 + 1)
        let end = machine.handle(.exited(rank: 1, .signaled(SignalNumber.terminate)), now: t0 + 1)
        #expect(commits(end).isEmpty)
        #expect(finish(end) == 0)
    }

    @Test func plainRankIsKilledWhenTheGraceEnds() {
        var machine = coordinator(ranks: 1, speaking: [])
        _ = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0)
        #expect(signals(machine.handle(.tick, now: t0 + 30)) == [0: SignalNumber.kill])
    }

    @Test func mixedJobCommitsWithPathsOnlyForSpeakingRanks() {
        var machine = coordinator(ranks: 2, speaking: [0])
        let request = machine.handle(.trigger(.controlFile), now: t0)
        #expect(signals(request) == [1: SignalNumber.terminate])
        _ = machine.handle(.position(rank: 0, id: 1, step: 9), now: t0)
        _ = machine.handle(.checkpointed(rank: 0, step: 10, path: "r0"), now: t0)
        let exit = machine.handle(.exited(rank: 1, .exited(0)), now: t0)
        #expect(exit.contains(.commit(step: 10, paths: ["r0", nil], trigger: .controlFile)))
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
}
