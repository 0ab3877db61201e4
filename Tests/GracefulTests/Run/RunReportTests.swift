import Testing

@testable import Graceful

@Suite struct RunReportTests {
    static let failure = Coordinator.Failure(rank: 1, status: .exited(3))

    @Test func aFailedRunShowsTheFirstFailuresTailThenEveryAttemptThenTheExitLine() {
        let attempts = [
            Coordinator.Attempt(restart: 0, failure: Self.failure, ranks: [RankRecord(), RankRecord()]),
            Coordinator.Attempt(restart: 1, failure: Self.failure, ranks: [RankRecord(), RankRecord()]),
        ]
        let report = RunReport(
            attempts: attempts, maximumAttempts: 3, failure: (Self.failure, ["loading", "Traceback: boom"]), pids: [100, 101],
            runDirectory: "/r", exitCode: ExitCode.rankFailed)
        let lines = report.lines
        #expect(lines[0] == "rank 1 failed first (exit code 3); last lines of /r/rank_1.log:")
        #expect(lines[1] == "  | loading")
        #expect(lines[2] == "  | Traceback: boom")
        #expect(lines.filter { $0.hasPrefix("attempt ") }.count == 2)
        #expect(lines.contains { $0.hasPrefix("attempt 2 (of at most 3): rank 1 failed first") })
        // Only the latest attempt's ranks are still known by pid.
        #expect(lines.contains { $0.contains("100") })
        #expect(lines.last == "exit 1: a rank failed")
    }

    @Test func anEmptyLogIsSaidInTheFailureLineItself() {
        let report = RunReport(
            attempts: [Coordinator.Attempt(restart: 0, failure: Self.failure, ranks: [RankRecord(), RankRecord()])],
            maximumAttempts: 1, failure: (Self.failure, []), pids: [1, 2], runDirectory: "/r", exitCode: ExitCode.rankFailed)
        #expect(report.lines[0] == "rank 1 failed first (exit code 3); /r/rank_1.log is empty")
        #expect(!report.lines.contains { $0.hasSuffix(":") && $0.contains("last lines") })
    }

    @Test func droppedConsoleLinesAreCountedBeforeTheExitLine() {
        let report = RunReport(
            attempts: [Coordinator.Attempt(restart: 0, failure: nil, ranks: [RankRecord()])], maximumAttempts: 1, failure: nil,
            pids: [7], runDirectory: "/r", exitCode: 0, droppedConsoleLines: 1234)
        let lines = report.lines
        #expect(lines[lines.count - 2].hasPrefix("1234 line(s) of rank output were dropped from the console"))
        #expect(lines.last == "exit 0")
        #expect(!lines.contains { $0.contains("failed first") })
    }

    @Test func aForcedExitNamesTheSignal() {
        #expect(RunReport.describe(130) == "exit 130: forced by SIGINT; nothing committed")
        #expect(RunReport.describe(131) == "exit 131: forced by SIGQUIT; nothing committed")
    }
}
