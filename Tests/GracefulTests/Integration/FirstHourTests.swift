import Foundation
import Glibc
import Testing

/// What trips a new user in the first hour: Ctrl+Z, a launch from another directory, a missing
/// checkpoint, a failed launch leaving files behind, PyTorch's own rank prefixes, odd run ids.
@Suite(.serialized) struct FirstHourTests {
    static let soakRank = Launched.packageRoot + "/Tests/fixtures/soak_rank.py"

    /// The state letter of /proc/<pid>/stat ("T" when stopped), nil when the process is gone.
    static func state(of pid: pid_t) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")")
        else { return nil }
        return text[text.index(close, offsetBy: 2)...].split(separator: " ").first.map(String.init)
    }

    /// The coordinator's children that are not its guard (which leads a session of its own).
    static func ranks(of coordinator: pid_t) -> [pid_t] {
        let children = (try? String(contentsOfFile: "/proc/\(coordinator)/task/\(coordinator)/children", encoding: .utf8)) ?? ""
        return children.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            .filter { getsid($0) != $0 }
    }

    /// Polls `condition` (bounded); the state of other processes has no event to wait on.
    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(10_000)
        }
        return false
    }

    /// Two soak ranks, stopped once by SIGTERM: a record and checkpoints to resume from.
    static func commitOnce(in directory: TemporaryDirectory) throws {
        let run = try Launched(
            [Launched.graceful, "run", "-n", "2", "--", "python3", soakRank], in: directory.path,
            environment: ["STEP_TIME": "0.01"])
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
    }

    @Test func ctrlZPausesEveryRankAndFgResumesTheJob() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "run", "-n", "2", "--", "python3", Self.soakRank], in: directory.path,
            environment: ["STEP_TIME": "0.01"])
        try run.waitFor("]: ready", count: 2)
        let ranks = Self.ranks(of: run.pid)
        #expect(ranks.count == 2)
        run.signal(SIGTSTP)
        #expect(Self.eventually { Self.state(of: run.pid) == "T" }, "graceful did not stop itself")
        #expect(ranks.allSatisfy { Self.state(of: $0) == "T" }, "a rank kept running: \(ranks.map { Self.state(of: $0) ?? "gone" })")
        run.signal(SIGCONT)
        #expect(Self.eventually { ranks.allSatisfy { Self.state(of: $0).map { $0 != "T" } ?? false } }, "the ranks were not resumed")
        try run.waitFor("resumed after")
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stderr.contains("committed step"))
    }

    @Test func aLaunchFromAnotherDirectoryHandsTheRanksAbsolutePathsToTheirCheckpoints() throws {
        let directory = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.file("elsewhere"), withIntermediateDirectories: true)
        try Self.commitOnce(in: directory)
        let record = try #require(directory.read("graceful_run/soak_rank/last_checkpoint.json"))
        #expect(record.contains("\"directory\": \"\(directory.path)\""), "\(record)")
        // Relative paths in the record; from elsewhere they resolve against the recorded directory.
        let second = try Launched(
            [Launched.graceful, "run", "-n", "2", "--run-dir", "../graceful_run/soak_rank", "--", "python3", Self.soakRank],
            in: directory.file("elsewhere"), environment: ["STEP_TIME": "0.01"])
        try second.waitFor("]: ready", count: 2)
        #expect(second.stdout.components(separatedBy: " from 1\n").count == 1, "a rank started from scratch:\n\(second.stdout)")
        second.signal(SIGTERM)
        #expect(try second.waitForExit() == 0, "\(second.output)")
        #expect(!second.stderr.contains("does not exist"))
    }

    @Test func aMissingCommittedCheckpointIsSaidBeforeAnyRankStarts() throws {
        let directory = try TemporaryDirectory()
        try Self.commitOnce(in: directory)
        try FileManager.default.removeItem(atPath: directory.file("ckpt/rank1"))
        let second = try Launched(
            [Launched.graceful, "run", "-n", "2", "--", "python3", Self.soakRank], in: directory.path,
            environment: ["STEP_TIME": "0.01"])
        _ = try second.waitForExit()
        let warning = second.stderr.split(separator: "\n").first { $0.contains("rank 1's committed checkpoint") }
        #expect(warning?.contains("does not exist") == true, "\(second.stderr)")
        #expect(second.stderr.range(of: "rank 1's committed checkpoint")!.lowerBound < second.stderr.range(of: "launching")!.lowerBound)
    }

    @Test func aCommandThatIsNotFoundLeavesNoRunDirectory() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched([Launched.graceful, "run", "-n", "2", "--", "no-such-command-anywhere"], in: directory.path)
        #expect(try run.waitForExit() == 127)
        #expect(!FileManager.default.fileExists(atPath: directory.file("graceful_run")))
    }

    /// PyTorch prefixes its tracebacks with `[rankN]:` itself: the console shows it once.
    @Test func aLineAlreadyPrefixedByTheRankIsNotPrefixedTwice() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "run", "-n", "2", "--", "sh", "-c", #"echo "[rank$RANK]: Traceback"; echo plain"#],
            in: directory.path)
        #expect(try run.waitForExit() == 0)
        #expect(run.stdout.contains("[rank1]: Traceback\n"))
        #expect(!run.stdout.contains("[rank1]: [rank1]:"))
        #expect(run.stdout.contains("[rank1]: plain\n"))
        #expect(directory.read("graceful_run/sh/rank_1.log")?.contains("[rank1]: Traceback\nplain\n") == true)
    }

    @Test func runIdsHaveSixteenHexDigits() throws {
        let directory = try TemporaryDirectory()
        for _ in 0..<5 {
            let run = try Launched([Launched.graceful, "run", "--", "true"], in: directory.path)
            #expect(try run.waitForExit() == 0)
            let line = try #require(run.stderr.split(separator: "\n").first { $0.hasPrefix("graceful: run ") })
            let id = line.dropFirst("graceful: run ".count).prefix { $0 != ":" }
            #expect(id.count == 16 && id.allSatisfy(\.isHexDigit), "\(id)")
        }
    }
}
