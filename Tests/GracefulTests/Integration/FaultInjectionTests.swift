import Foundation
import Glibc
import Testing

/// Faults injected into real runs: ranks that crash before, during or after their checkpoint, ranks
/// that crash again during a restart, a coordinator killed with SIGKILL, bad input of every kind, and a
/// randomized soak. After every run the invariant is checked: the commit record is absent or names
/// one step for which every rank's checkpoint exists with that step inside, and no process of the job
/// is left.
@Suite(.serialized) struct FaultInjectionTests {
    static let soakRank = Launched.packageRoot + "/Tests/fixtures/soak_rank.py"
    static let fastRestarts = ["--grace", "3", "--kill-after", "1", "--restart-backoff", "0.02"]

    /// What is wrong with the directory's commit record and processes, or nil.
    static func invariantViolation(in directory: String, ranks: Int, job: String = "soak_rank") -> String? {
        let left = waitUntilNoProcess(workingIn: directory)
        if !left.isEmpty { return "processes left: \(left)" }
        let recordPath = directory + "/graceful_run/\(job)/last_checkpoint.json"
        guard let data = FileManager.default.contents(atPath: recordPath) else { return nil }
        guard let record = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let step = record["step"] as? Int, let entries = record["ranks"] as? [[String: Any]]
        else { return "unreadable record: \(String(decoding: data, as: UTF8.self))" }
        guard entries.count == ranks else { return "record lists \(entries.count) ranks" }
        for entry in entries {
            guard let path = entry["path"] as? String else { return "a rank without a path" }
            guard let checkpoint = FileManager.default.contents(atPath: directory + "/" + path),
                  let saved = try? JSONSerialization.jsonObject(with: checkpoint) as? [String: Any]
            else { return "checkpoint \(path) missing or torn" }
            guard saved["step"] as? Int == step else { return "checkpoint \(path) does not hold step \(step)" }
        }
        return nil
    }

    func launch(
        ranks: Int, in directory: TemporaryDirectory, options: [String] = [], environment: [String: String] = [:]
    ) throws -> Launched {
        var environment = environment
        environment["MARKER"] = directory.path
        return try Launched(
            [Launched.graceful, "run", "-n", String(ranks)] + Self.fastRestarts + options + ["--", "python3", Self.soakRank],
            in: directory.path, environment: environment)
    }

    func record(_ directory: TemporaryDirectory) -> String? { directory.read(directory.run("last_checkpoint.json")) }

    /// A previous commit of step 5 by `ranks` ranks, with real checkpoints, to see that it survives.
    func seedCommit(_ directory: TemporaryDirectory, ranks: Int) throws -> String {
        let run = try launch(ranks: ranks, in: directory, environment: ["STEP_TIME": "0.01"])
        try run.waitFor("]: ready", count: ranks)
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        return try #require(record(directory))
    }

    // MARK: Crashes around the checkpoint of a stop

    @Test(arguments: ["before", "during"])
    func aRankCrashingBeforeItsCheckpointIsConfirmedLeavesTheRecordUntouched(_ when: String) throws {
        let directory = try TemporaryDirectory()
        let previous = try seedCommit(directory, ranks: 3)
        let run = try launch(ranks: 3, in: directory, environment: ["CRASH_RANK": "1", "CRASH_WHEN": when])
        try run.waitFor("]: ready", count: 3)
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 2, "\(run.output)")
        #expect(run.stderr.contains("rank 1 ended (exit code \(when == "before" ? 6 : 7)) before confirming"))
        #expect(record(directory) == previous)
        #expect(Self.invariantViolation(in: directory.path, ranks: 3) == nil)
    }

    @Test func aRankCrashingAfterConfirmingStillCommits() throws {
        let directory = try TemporaryDirectory()
        let run = try launch(ranks: 3, in: directory, environment: ["CRASH_RANK": "2", "CRASH_WHEN": "after"])
        try run.waitFor("]: ready", count: 3)
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stderr.contains("committed step"))
        #expect(Self.invariantViolation(in: directory.path, ranks: 3) == nil)
    }

    @Test func aReportedCheckpointThatDoesNotExistIsNotCommitted() throws {
        let directory = try TemporaryDirectory()
        let script = """
            import sys
            from graceful_exit import Rank
            rank = Rank()
            print("ready", flush=True)
            step = 0
            while not rank.should_stop(step := step + 1):
                pass
            rank.checkpointed(step, f"nowhere/rank{rank.rank}.json")
            """
        let run = try Launched([Launched.graceful, "run", "-n", "2", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 2, "\(run.output)")
        #expect(run.stderr.contains("checkpoint nowhere/rank0.json does not exist"))
        #expect(record(directory) == nil)
    }

    // MARK: Restarts

    @Test func aCrashedGangRestartsFromTheLastCommitAndFinishesLikeAnUninterruptedRun() throws {
        let reference = try TemporaryDirectory()
        let whole = try launch(ranks: 2, in: reference, environment: ["STEPS": "150", "STEP_TIME": "0"])
        #expect(try whole.waitForExit() == 0, "\(whole.output)")

        let directory = try TemporaryDirectory()
        let run = try launch(
            ranks: 2, in: directory, options: ["--max-restarts", "2", "--checkpoint-every", "0.1"],
            environment: ["STEPS": "150", "STEP_TIME": "0.005", "CRASH_RANK": "1", "CRASH_STEP": "120", "GRANDCHILD": "1"])
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stderr.contains("rank 1 failed (exit code 3); clearing the gang before restart 1 of 2"))
        #expect(run.stderr.contains("restart 1: launching 2 rank(s)"))
        let resumed = run.stdout.split(separator: "\n").filter { $0.contains("]: ready") && !$0.hasSuffix("from 1") }
        #expect(resumed.count == 2, "the restart did not resume from a commit:\n\(run.stdout)")
        for rank in 0..<2 {
            #expect(directory.read("final_rank\(rank).json") == reference.read("final_rank\(rank).json"))
        }
        #expect(run.stderr.contains("attempt 1 (of at most 3): rank 1 failed first (exit code 3)"))
        #expect(Self.invariantViolation(in: directory.path, ranks: 2) == nil)
    }

    @Test func aRankThatCrashesInEveryAttemptEndsTheRunWithEveryAttemptSummarized() throws {
        let directory = try TemporaryDirectory()
        let run = try launch(
            ranks: 2, in: directory, options: ["--max-restarts", "2"],
            environment: ["CRASH_RANK": "0", "CRASH_STEP": "3", "CRASH_ATTEMPTS": "100"])
        #expect(try run.waitForExit() == 1, "\(run.output)")
        for attempt in 1...3 {
            #expect(run.stderr.contains("attempt \(attempt) (of at most 3): rank 0 failed first (exit code 3)"))
        }
        #expect(run.stderr.contains("giving up after 2 restart(s)"))
        #expect(run.stderr.contains("  | rank 0 crashes at step 3"))
        #expect(Self.invariantViolation(in: directory.path, ranks: 2) == nil)
    }

    // MARK: The coordinator killed

    @Test func aCoordinatorKilledWithSigkillTakesItsRanksAndTheirChildrenAlong() throws {
        let directory = try TemporaryDirectory()
        let run = try launch(ranks: 3, in: directory, environment: ["GRANDCHILD": "1"])
        try run.waitFor("]: ready", count: 3)
        #expect(processesAlive(containing: directory.path).count == 3, "grandchildren did not start")
        run.signal(SIGKILL)
        #expect(try run.waitForExit() == 128 + SIGKILL)
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
        #expect(processesAlive(containing: directory.path).isEmpty)
    }

    /// The guard is replaced when it dies, so killing it first and the coordinator next still leaves
    /// nothing behind.
    @Test func aKilledGuardIsReplacedAndTheNextOneStillCleansUp() throws {
        let directory = try TemporaryDirectory()
        let run = try launch(ranks: 2, in: directory, environment: ["GRANDCHILD": "1"])
        try run.waitFor("]: ready", count: 2)
        let guardPID = try #require(Self.guardPID(of: run.pid), "no guard among graceful's children")
        kill(guardPID, SIGKILL)
        try run.waitFor("the guard process ended unexpectedly; started a new one")
        // The new guard calls setsid right after its fork: wait for it to have done so (bounded).
        var replacement: pid_t?
        for _ in 0..<500 where replacement == nil {
            replacement = Self.guardPID(of: run.pid)
            if replacement == nil { usleep(10_000) }
        }
        #expect(replacement != nil && replacement != guardPID, "the guard was not replaced")
        run.signal(SIGKILL)
        #expect(try run.waitForExit() == 128 + SIGKILL)
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
        #expect(processesAlive(containing: directory.path).isEmpty)
    }

    /// The child of `coordinator` that leads a session of its own: the guard.
    static func guardPID(of coordinator: pid_t) -> pid_t? {
        let children = (try? String(contentsOfFile: "/proc/\(coordinator)/task/\(coordinator)/children", encoding: .utf8)) ?? ""
        return children.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            .first { getsid($0) == $0 }
    }

    @Test func orphansOfARankAreReapedWhileTheRunGoesOn() throws {
        let directory = try TemporaryDirectory()
        let script = """
            import subprocess, time
            from graceful_exit import Rank
            rank = Rank()
            # sh exits at once; its sleep is orphaned, adopted by graceful (the subreaper), and ends.
            subprocess.run(["sh", "-c", "sleep 0.1 & exit 0"], check=True)
            time.sleep(0.5)
            print("orphan gone", flush=True)
            step = 0
            while not rank.should_stop(step := step + 1):
                time.sleep(0.01)
            """
        let run = try Launched([Launched.graceful, "run", "-n", "2", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("]: orphan gone", count: 2)
        let zombies = try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap(Int32.init).filter { pid in
            guard let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return false }
            let fields = String(decoding: stat, as: UTF8.self).split(separator: ")").last?.split(separator: " ") ?? []
            return fields.count > 2 && fields[0] == "Z" && fields[1] == Substring(String(run.pid))
        }
        #expect(zombies.isEmpty, "zombie children of the coordinator: \(zombies)")
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 2, "\(run.output)")
    }

    // MARK: Bad input

    @Test func garbageOnAChannelIsReportedOnceAndNeverConfirms() throws {
        let directory = try TemporaryDirectory()
        let script = """
            import os, socket
            from graceful_exit import Rank
            rank = Rank()
            if rank.rank == 1:
                channel = socket.socket(fileno=os.dup(3))
                for junk in [b"garbage\\n", b'{"type": "explode"}\\n', b"x" * 1_000_000 + b"\\n",
                             b'{"type": "checkpointed", "step": 999, "path": null}\\n', b"[]\\n"]:
                    channel.sendall(junk)
            print("ready", flush=True)
            step = 0
            while not rank.should_stop(step := step + 1):
                pass
            with open(f"ckpt{rank.rank}.json", "w") as f:
                f.write('{"step": %d}' % step)
            rank.checkpointed(step, f"ckpt{rank.rank}.json")
            rank.checkpointed(step, f"ckpt{rank.rank}.json")
            if rank.rank == 1:
                channel.sendall(b"no newline, ever " * 10_000)
            """
        let run = try Launched([Launched.graceful, "run", "-n", "2", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.count("warning: rank 1 wrote something that is not a protocol message") == 1)
        #expect(run.count("confirmed step 999 while no stop or checkpoint step was set") == 1)
        // One warning per rank and round: rank 1's junk confirmation may be read only once the stop's
        // round began (a megabyte of junk before it, read in bounded slices), and then it is that warning.
        #expect(run.count("warning: rank 0 confirmed again") == 1, "\(run.output)")
        #expect(run.count("warning: rank 1 confirmed again") <= 1, "\(run.output)")
        #expect(Self.invariantViolation(in: directory.path, ranks: 2) == nil)
    }

    @Test func controlFilesThatAreNotFilesAreWarnedAboutAndNeverStopTheRun() throws {
        let directory = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.file("ctl"), withIntermediateDirectories: true)
        let run = try launch(ranks: 1, in: directory, options: ["--control-file", "ctl/flag.json"])
        try run.waitFor("]: ready")
        let path = directory.file("ctl/flag.json")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try FileManager.default.moveItem(atPath: path, toPath: path + ".dir")
        try FileManager.default.moveItem(atPath: path + ".dir", toPath: path)
        try run.waitFor("control file ctl/flag.json: is a directory, not a regular file")
        try FileManager.default.removeItem(atPath: path)
        #expect(mkfifo(path + ".fifo", 0o644) == 0)
        #expect(rename(path + ".fifo", path) == 0)
        try run.waitFor("is a fifo, not a regular file")
        unlink(path)
        #expect(FileManager.default.createFile(atPath: directory.file("ctl/big"), contents: nil))
        let big = try #require(FileHandle(forWritingAtPath: directory.file("ctl/big")))
        try big.truncate(atOffset: 100_000_000)
        try big.close()
        #expect(rename(directory.file("ctl/big"), path) == 0)
        try run.waitFor("is larger than 1048576 bytes")
        #expect(!run.stderr.contains("stop requested"))
        try directory.replace("ctl/flag.json", with: "{\"GracefulExit\": 1}")
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stderr.contains("stop requested (control-file)"))
    }

    @Test func aRunDirectoryThatCannotBeCreatedLaunchesNothing() throws {
        let directory = try TemporaryDirectory()
        try directory.write("file", "not a directory")
        let run = try launch(ranks: 2, in: directory, options: ["--run-dir", "file/run"])
        #expect(try run.waitForExit() == 73)
        #expect(run.stderr.hasPrefix("error: run directory: ") && run.stderr.split(separator: "\n").count == 1)
        #expect(processes(workingIn: directory.path).isEmpty)
    }

    @Test func aSignalStormIsOneStop() throws {
        let directory = try TemporaryDirectory()
        let run = try launch(ranks: 3, in: directory)
        try run.waitFor("]: ready", count: 3)
        for _ in 0..<100 { run.signal(SIGTERM) }
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.count("stop requested") == 1 && !run.stderr.contains("again"))
        #expect(Self.invariantViolation(in: directory.path, ranks: 3) == nil)
    }

    // MARK: Checkpoints without stopping

    @Test func sigusr2CommitsACheckpointAndTrainingGoesOn() throws {
        let directory = try TemporaryDirectory()
        let run = try launch(ranks: 2, in: directory, environment: ["STEP_TIME": "0.005"])
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGUSR2)
        try run.waitFor("committed step")
        let first = try #require(record(directory))
        #expect(first.contains("\"trigger\": \"SIGUSR2\""))
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.count("committed step") == 2)
        #expect(record(directory) != first)
        #expect(Self.invariantViolation(in: directory.path, ranks: 2) == nil)
    }

    // MARK: Soak

    @Test func randomizedSoakKeepsTheInvariant() throws {
        let environment = ProcessInfo.processInfo.environment
        let runs = environment["GRACEFUL_SOAK_RUNS"].flatMap(Int.init) ?? 200
        let seed = environment["GRACEFUL_SOAK_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 0...UInt64.max)
        print("soak: \(runs) runs, GRACEFUL_SOAK_SEED=\(seed)")
        var random = SeededGenerator(seed: seed)
        var directory = try TemporaryDirectory()
        var outcomes: [Int32: Int] = [:]
        for run in 0..<runs {
            // Sequences of runs share a directory, so later runs resume from earlier commits.
            if run % 5 == 0 { directory = try TemporaryDirectory() }
            let ranks = 2
            var options = ["--max-restarts", String(Int.random(in: 0...1, using: &random))]
            if Bool.random(using: &random) { options += ["--checkpoint-every", "0.05"] }
            var rankEnvironment = ["STEPS": "150", "STEP_TIME": "0.002"]
            if Int.random(in: 0..<3, using: &random) == 0 {
                rankEnvironment["CRASH_RANK"] = String(Int.random(in: 0..<ranks, using: &random))
                rankEnvironment["CRASH_WHEN"] = ["train", "before", "during", "after"].randomElement(using: &random)!
                rankEnvironment["CRASH_STEP"] = String(Int.random(in: 1...60, using: &random))
            }
            let trigger = ["SIGINT", "SIGTERM", "SIGUSR1", "control-file", "SIGKILL", "none"].randomElement(using: &random)!
            let delay = UInt32.random(in: 0...150_000, using: &random)
            let scenario = "run \(run): \(options) \(rankEnvironment) trigger \(trigger) after \(delay / 1000) ms"
            try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}")
            let launched = try launch(ranks: ranks, in: directory, options: options, environment: rankEnvironment)
            do {
                try launched.waitFor("]: ready", count: ranks, timeout: 30)
            } catch {
                // A crash before every rank was ready ends the run early; the invariant still holds.
            }
            // A random moment of the run: the pause is the point of the test, not a synchronisation.
            usleep(delay)
            switch trigger {
            case "SIGINT": launched.signal(SIGINT)
            case "SIGTERM": launched.signal(SIGTERM)
            case "SIGUSR1": launched.signal(SIGUSR1)
            case "SIGKILL": launched.signal(SIGKILL)
            case "control-file": try directory.replace("graceful_exit.json", with: "{\"GracefulExit\": 1}")
            default: break
            }
            let code = try launched.waitForExit(timeout: 60)
            outcomes[code, default: 0] += 1
            let allowed: Set<Int32> = trigger == "SIGKILL" ? [0, 1, 2, 128 + SIGKILL] : [0, 1, 2]
            #expect(allowed.contains(code), "\(scenario): exit \(code)\n\(launched.output)")
            if let violation = Self.invariantViolation(in: directory.path, ranks: ranks) {
                Issue.record("\(scenario): \(violation)\n\(launched.output)")
                return
            }
        }
        print("soak: exit codes \(outcomes.sorted { $0.key < $1.key })")
    }
}
