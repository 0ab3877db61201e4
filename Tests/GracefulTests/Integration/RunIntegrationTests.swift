import Foundation
import Glibc
import Testing

/// `graceful run` end to end: the real binary, real Python ranks, real signals, files and pipes.
/// Serialized so a two-core machine is not asked to run several four-rank jobs at once.
@Suite(.serialized) struct RunIntegrationTests {
    let train = Launched.packageRoot + "/examples/python/train.py"
    let fixtures = Launched.packageRoot + "/Tests/fixtures"

    enum Stop: String, CaseIterable {
        case controlFile, sigterm, sigint
    }

    /// The committed step, after checking that every rank's checkpoint exists and holds that step.
    func committedStep(in directory: TemporaryDirectory, ranks: Int) throws -> Int {
        let text = try #require(directory.read(directory.run("last_checkpoint.json")), "no commit record")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let step = try #require(record["step"] as? Int)
        let entries = try #require(record["ranks"] as? [[String: Any]])
        #expect(entries.count == ranks)
        for entry in entries {
            let path = try #require(entry["path"] as? String)
            let checkpoint = try #require(directory.read(path), "missing checkpoint \(path)")
            let saved = try #require(try JSONSerialization.jsonObject(with: Data(checkpoint.utf8)) as? [String: Any])
            #expect(saved["step"] as? Int == step, "\(path) holds another step")
        }
        return step
    }

    /// No process names `directory` on its command line (grandchildren given it as a marker) or
    /// runs in it (every rank does).
    func expectNoLeftovers(_ directory: String) {
        #expect(processesAlive(containing: directory).isEmpty, "processes left behind")
        #expect(processes(workingIn: directory).isEmpty, "processes left behind")
    }

    @Test(arguments: Stop.allCases)
    func fourLockstepRanksStopAtOneCommittedStep(_ stop: Stop) throws {
        let directory = try TemporaryDirectory()
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        let run = try Launched(
            [Launched.graceful, "run", "-n", "4", "--", "python3", train, "--steps", "100000", "--step-time", "0.005",
             "--log-every", "50"],
            in: directory.path)
        try run.waitFor("[rank0]: step 50:")
        switch stop {
        case .controlFile: try directory.replace("graceful_exit.json", with: "{\"GracefulExit\": 1}\n")
        case .sigterm: run.signal(SIGTERM)
        case .sigint: run.signal(SIGINT)
        }
        #expect(try run.waitForExit() == 0, "\(run.output)")
        let step = try committedStep(in: directory, ranks: 4)
        #expect(step > 50)
        #expect(run.stderr.contains("committed step \(step)"))
        #expect(run.stdout.components(separatedBy: "stopped after step \(step) ").count - 1 == 4)
        if stop == .controlFile {
            #expect(directory.read("graceful_exit.json")?.contains("\"GracefulExit\": 0") == true)
        }
        expectNoLeftovers(directory.path)
    }

    @Test func interruptedAndResumedTrainingIsBitIdentical() throws {
        let arguments = ["--steps", "300", "--log-every", "10", "--dim", "8"]
        let reference = try TemporaryDirectory()
        let whole = try Launched(
            [Launched.graceful, "run", "-n", "4", "--", "python3", train] + arguments + ["--step-time", "0"],
            in: reference.path)
        #expect(try whole.waitForExit() == 0, "\(whole.output)")

        let directory = try TemporaryDirectory()
        let interruptAt = Int.random(in: 1...25) * 10
        let first = try Launched(
            [Launched.graceful, "run", "-n", "4", "--", "python3", train] + arguments + ["--step-time", "0.01"],
            in: directory.path)
        try first.waitFor("[rank0]: step \(interruptAt):")
        first.signal(SIGINT)
        #expect(try first.waitForExit() == 0, "\(first.output)")
        let step = try committedStep(in: directory, ranks: 4)
        #expect(step > interruptAt && step < 300)

        let second = try Launched(
            [Launched.graceful, "run", "-n", "4", "--", "python3", train] + arguments + ["--step-time", "0"],
            in: directory.path)
        #expect(try second.waitForExit() == 0, "\(second.output)")
        #expect(second.stderr.contains("resuming from committed step \(step)"))
        for rank in 0..<4 {
            let expected = try #require(reference.read("checkpoints/train/final_rank\(rank).json"))
            #expect(directory.read("checkpoints/train/final_rank\(rank).json") == expected, "rank \(rank) differs (stopped at \(step))")
        }
    }

    @Test func aRankThatNeverConfirmsIsKilledWithItsGrandchildrenAndTheRecordIsUntouched() throws {
        let directory = try TemporaryDirectory()
        let previous = """
            {"version": 1, "run_id": "old", "step": 7, "world_size": 3, "trigger": "SIGINT", "time": "",
             "ranks": [{"rank": 0, "path": null}, {"rank": 1, "path": null}, {"rank": 2, "path": null}]}

            """
        try directory.write("graceful_run/stubborn_rank/last_checkpoint.json", previous)
        let run = try Launched(
            [Launched.graceful, "run", "-n", "3", "--grace", "1", "--kill-after", "1", "--",
             "python3", fixtures + "/stubborn_rank.py"],
            in: directory.path, environment: ["STUBBORN_RANKS": "1", "MARKER": directory.path])
        for rank in 0..<3 { try run.waitFor("ready \(rank)") }
        #expect(!processesAlive(containing: directory.path).isEmpty, "the grandchild did not start")
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 2, "\(run.output)")
        #expect(directory.read(directory.run("last_checkpoint.json")) == previous)
        #expect(run.stderr.contains("grace of 1s expired; rank(s) 1 still running"))
        let summaryRow = run.stderr.split(separator: "\n").first { $0.contains("graceful:   1 ") }
        #expect(summaryRow?.contains("SIGKILL") == true && summaryRow?.contains("no confirmation before the deadline") == true)
        expectNoLeftovers(directory.path)
    }

    @Test func aPlainScriptGetsSigtermAndItsCleanExitIsTheStop() throws {
        let directory = try TemporaryDirectory()
        let script = """
            import signal, sys, time
            def stop(*_):
                print("got SIGTERM", flush=True)
                sys.exit(0)
            signal.signal(signal.SIGTERM, stop)
            print("ready", flush=True)
            time.sleep(1000)
            """
        let run = try Launched([Launched.graceful, "run", "-n", "2", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stdout.components(separatedBy: "got SIGTERM").count - 1 == 2, "\(run.output)")
        #expect(directory.read(directory.run("last_checkpoint.json")) == nil)
    }

    @Test func badControlFilesNeverTriggerAndWarnOncePerKindOfProblem() throws {
        let directory = try TemporaryDirectory()
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        let run = try Launched(
            [Launched.graceful, "run", "-n", "2", "--", "python3", fixtures + "/stubborn_rank.py"],
            in: directory.path, environment: ["MARKER": directory.path])
        try run.waitFor("]: ready", count: 2)
        // Three kinds of problem (invalid JSON, not an object, a flag of the wrong type): each warns
        // once, at its first entry, however its details change.
        let bad: [(contents: String, newKind: Bool)] = [
            ("", true), ("[1]", true), ("{", false), ("null", false), ("not json", false), ("\"1\"", false),
            ("{\"GracefulExit\": \"1\"}", true), ("{\"GracefulEx", false), ("{\"GracefulExit\": null}", false),
            ("{\"GracefulExit\": 1,}", false), ("{\"GracefulExit\": [1]}", false), ("1", false),
            ("{\"GracefulExit\": {\"on\": 1}}", false), ("\u{FEFF}{\"GracefulExit\": 1}", false),
        ]
        var kinds = 0
        for entry in bad {
            try directory.replace("graceful_exit.json", with: entry.contents)
            if entry.newKind {
                kinds += 1
                try run.waitFor("warning: control file", count: kinds)
            }
            #expect(!run.stderr.contains("stop requested"), "\(entry.contents.debugDescription) triggered a stop")
        }
        // The same problem again, then a deletion and a recreation: no new warning, no stop.
        try directory.replace("graceful_exit.json", with: bad.last!.contents)
        unlink(directory.file("graceful_exit.json"))
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 1}")
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stderr.components(separatedBy: "warning: control file").count - 1 == kinds)
        #expect(run.stderr.contains("stop requested (control-file)"))
    }

    @Test func ranksSeeOnlyStdioTheirChannelAndTheSealedDoorbell() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "run", "-n", "3", "--", "python3", fixtures + "/list_fds.py"], in: directory.path)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stdout.components(separatedBy: "fds: 0,1,2,3,4\n").count - 1 == 3, "\(run.stdout)")
        #expect(run.stdout.components(separatedBy: "fd3 is a socket: True").count - 1 == 3)
        #expect(run.stdout.components(separatedBy: "fd4 is a sealed doorbell: True").count - 1 == 3, "\(run.stdout)")
    }

    @Test func aControlFileAlreadySetLaunchesNothing() throws {
        let directory = try TemporaryDirectory()
        try directory.write("graceful_exit.json", "{\"GracefulExit\": true}")
        let run = try Launched([Launched.graceful, "run", "-n", "2", "--", "python3", train], in: directory.path)
        #expect(try run.waitForExit() == 75)
        #expect(run.stderr.hasPrefix("error: control file graceful_exit.json already requests an exit"))
        #expect(directory.read(directory.run("rank_0.log")) == nil)
    }

    @Test func aFailingRankStopsTheOthersAndIsNamedWithItsLog() throws {
        let directory = try TemporaryDirectory()
        let script = """
            import os, sys, time
            print("ready", flush=True)
            if os.environ["RANK"] == "1":
                print("boom: out of memory", file=sys.stderr, flush=True)
                sys.exit(3)
            time.sleep(1000)
            """
        let run = try Launched([Launched.graceful, "run", "-n", "3", "--", "python3", "-c", script], in: directory.path)
        #expect(try run.waitForExit() == 1, "\(run.output)")
        #expect(run.stderr.contains("rank 1 failed first (exit code 3)"))
        #expect(run.stderr.contains("  | boom: out of memory"))
        #expect(directory.read(directory.run("rank_1.log"))?.contains("boom: out of memory") == true)
        let rows = run.stderr.split(separator: "\n").filter { $0.contains("SIGTERM") && $0.hasPrefix("graceful:   ") }
        #expect(rows.count == 2, "the other ranks were not stopped by SIGTERM")
    }

    @Test func repeatedCtrlCEscalatesToSigkill() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "run", "-n", "2", "--", "python3", fixtures + "/stubborn_rank.py"],
            in: directory.path, environment: ["STUBBORN_RANKS": "0,1", "MARKER": directory.path])
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGINT)
        try run.waitFor("refuses to confirm", count: 2)
        // Signals closer together than the debounce count once; this pause is the feature's, not a wait.
        usleep(300_000)
        run.signal(SIGINT)
        try run.waitFor("SIGINT again: sending SIGTERM")
        usleep(300_000)
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 130, "\(run.output)")
        #expect(run.stderr.contains("SIGINT again: sending SIGKILL"))
        expectNoLeftovers(directory.path)
    }

    @Test func swiftRanksStopTogether() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "run", "-n", "3", "--", Launched.swiftRankExample, "--steps", "100000", "--step-time", "0.005"],
            in: directory.path)
        try run.waitFor("starting at step 1", count: 3)
        run.signal(SIGUSR2)
        try run.waitFor("committed step")
        try run.waitFor(": checkpoint at step", count: 3)
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        let record = try #require(directory.read(directory.run("last_checkpoint.json")))
        #expect(record.contains("\"trigger\": \"SIGTERM\""))
        #expect(run.count("committed step") == 2)
        #expect(run.stdout.components(separatedBy: "stopped after step").count - 1 == 3)
    }

    /// Ranks confirm and exit at once, all together: one rank's SIGCHLD often reaps others whose
    /// confirmation is in their channel but not yet read. Each must count as confirmed.
    @Test func ranksThatExitRightAfterConfirmingAllCount() throws {
        for _ in 0..<3 {
            let directory = try TemporaryDirectory()
            let run = try Launched([Launched.graceful, "run", "-n", "64", "--", fixtures + "/quick_confirm_rank.sh"], in: directory.path)
            try run.waitFor("]: ready", count: 64)
            run.signal(SIGTERM)
            #expect(try run.waitForExit() == 0, "\(run.stderr)")
            #expect(run.stderr.contains("committed step 8"))
            expectNoLeftovers(directory.path)
        }
    }

    @Test func usageErrorsExit64WithOneLine() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched([Launched.graceful, "run", "-n", "zero", "--", "true"], in: directory.path)
        #expect(try run.waitForExit() == 64)
        #expect(run.stderr.hasPrefix("error: ") && run.stderr.split(separator: "\n").count == 1)
        #expect(directory.read(directory.run("rank_0.log")) == nil)
    }
}
