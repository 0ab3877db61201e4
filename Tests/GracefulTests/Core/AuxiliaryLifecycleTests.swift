import Glibc
import Testing

@testable import Graceful

/// The scheduler's lifecycle, driven by inputs and a fake clock; no process involved.
@Suite struct AuxiliaryLifecycleTests {
    let t0 = Instant.seconds(100)

    func lifecycle() -> AuxiliaryLifecycle {
        AuxiliaryLifecycle(name: "scheduler", logPath: "logs/scheduler.log", exitDeadline: 60, killAfter: 10)
    }

    @Test func exitingCleanlyAfterTheRanksIsNothingToReport() {
        var machine = lifecycle()
        #expect(machine.ranksEnded(now: t0) == [])
        #expect(machine.nextDeadline == t0 + 60)
        #expect(machine.tick(now: t0 + 59.9) == [])
        #expect(machine.exited(.exited(0), now: t0 + 59.9) == [])
        #expect(machine.hasEnded)
        #expect(machine.nextDeadline == nil)
        #expect(machine.exitCode(ranks: 0) == 0)
        #expect(machine.tick(now: t0 + 100) == [])
    }

    @Test func neverSignalledWhileTheRanksRun() {
        var machine = lifecycle()
        #expect(machine.tick(now: t0 + 1_000_000) == [])
        #expect(machine.interrupted(now: t0) == [])
        #expect(machine.nextDeadline == nil)
    }

    @Test func aSchedulerThatDoesNotExitGetsSigtermThenSigkill() {
        var machine = lifecycle()
        _ = machine.ranksEnded(now: t0)
        let term = machine.tick(now: t0 + 60)
        #expect(term.last == .signal(SIGTERM))
        #expect(machine.nextDeadline == t0 + 70)
        #expect(machine.tick(now: t0 + 69) == [])
        #expect(machine.tick(now: t0 + 70).last == .signal(SIGKILL))
        #expect(machine.nextDeadline == nil)
        #expect(machine.tick(now: t0 + 1000) == [])
        // Ending on the signals it was sent is not a failure of the job.
        _ = machine.exited(.signaled(SIGKILL), now: t0 + 70)
        #expect(machine.failure == nil)
        #expect(machine.exitCode(ranks: 0) == 0)
    }

    @Test func exitingNonZeroOnItsOwnFailsTheJobNamingItsLog() {
        var machine = lifecycle()
        _ = machine.ranksEnded(now: t0)
        let actions = machine.exited(.exited(3), now: t0 + 1)
        #expect(actions == [.report("the scheduler failed (exit code 3); see logs/scheduler.log")])
        #expect(machine.failure == "the scheduler failed (exit code 3); see logs/scheduler.log")
        #expect(machine.exitCode(ranks: 0) == ExitCode.rankFailed)
        // A code that already says the job did not succeed stands.
        #expect(machine.exitCode(ranks: ExitCode.notCommitted) == ExitCode.notCommitted)
        #expect(machine.exitCode(ranks: 130) == 130)
    }

    @Test func dyingBeforeTheRanksEndFailsTheJobToo() {
        var machine = lifecycle()
        #expect(machine.exited(.signaled(SIGSEGV), now: t0).count == 1)
        #expect(machine.failure?.contains("killed by SIGSEGV") == true)
        #expect(machine.ranksEnded(now: t0 + 5) == [])
        #expect(machine.nextDeadline == nil)
        #expect(machine.exitCode(ranks: 0) == ExitCode.rankFailed)
    }

    @Test func aStopSignalWhileWaitingForItKillsItAtOnce() {
        var machine = lifecycle()
        _ = machine.ranksEnded(now: t0)
        #expect(machine.interrupted(now: t0 + 1).last == .signal(SIGKILL))
        #expect(machine.interrupted(now: t0 + 2) == [])
        #expect(machine.tick(now: t0 + 100) == [])
        _ = machine.exited(.signaled(SIGKILL), now: t0 + 2)
        #expect(machine.exitCode(ranks: 0) == 0)
    }
}
