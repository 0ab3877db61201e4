/// The lines printed when a run ends: the first failure with the tail of its log, one table per
/// attempt, what the console lost and the exit line. Pure, so it is tested without processes.
struct RunReport {
    var attempts: [Coordinator.Attempt]
    /// 1 + `--max-restarts`.
    var maximumAttempts: Int
    /// The failure that ended the run, with the last lines of that rank's log (latest attempt).
    var failure: (failure: Coordinator.Failure, tail: [String])?
    /// The pids of the latest attempt's ranks.
    var pids: [Int32]
    var runDirectory: String
    var exitCode: Int32
    /// Rank lines the console dropped (it did not keep up); the logs have them.
    var droppedConsoleLines = 0
    /// Where each rank's log is, when not `<run dir>/rank_N.log` (msrun's `worker_N.log`).
    var rankLogPaths: [String]?
    /// The global rank of local rank 0 (a node of a multi-node job); 0 on one node.
    var firstRank = 0

    private func logPath(_ rank: Int) -> String {
        rankLogPaths?[rank] ?? "\(runDirectory)/rank_\(firstRank + rank).log"
    }

    var lines: [String] {
        var lines: [String] = []
        if let (failure, tail) = failure, exitCode == ExitCode.rankFailed {
            if tail.isEmpty {
                lines.append("rank \(firstRank + failure.rank) failed first (\(failure.status)); \(logPath(failure.rank)) is empty")
            } else {
                lines.append("rank \(firstRank + failure.rank) failed first (\(failure.status)); last lines of \(logPath(failure.rank)):")
                lines += tail.map { "  | \($0)" }
            }
        }
        for (index, attempt) in attempts.enumerated() {
            var title = attempts.count > 1 ? "attempt \(attempt.restart + 1) (of at most \(maximumAttempts))" : "summary"
            if let failure = attempt.failure { title += ": rank \(firstRank + failure.rank) failed first (\(failure.status))" }
            lines.append(title + ":")
            let attemptPIDs = index == attempts.count - 1 ? pids : []
            lines += RunSummary.table(ranks: attempt.ranks, pids: attemptPIDs, firstRank: firstRank).map { "  " + $0 }
        }
        if droppedConsoleLines > 0 {
            lines.append("\(droppedConsoleLines) line(s) of rank output were dropped from the console (it did not keep up); \(rankLogPaths == nil ? "\(runDirectory)/rank_N.log has" : "the worker logs have") them all")
        }
        lines.append(Self.describe(exitCode))
        return lines
    }

    static func describe(_ code: Int32) -> String {
        switch code {
        case ExitCode.success: return "exit 0"
        case ExitCode.rankFailed: return "exit 1: a rank failed"
        case ExitCode.notCommitted: return "exit 2: the stop did not commit a consistent checkpoint; the previous record is untouched"
        case 129...192: return "exit \(code): forced by \(SignalNumber.name(code - 128)); nothing committed"
        default: return "exit \(code)"
        }
    }
}
