import Foundation
import Glibc
import Testing

/// `graceful torchrun` and the torchrun habit in `graceful run`, end to end: torchrun's usual
/// single-node command line, a stop by SIGTERM that commits (exit 0, where torchrun exits 1), and
/// the next launch resuming from the commit.
@Suite(.serialized) struct TorchrunPersonalityTests {
    static let soakRank = Launched.packageRoot + "/Tests/fixtures/soak_rank.py"

    /// Launches, waits for both ranks, stops with SIGTERM and expects the commit; returns the output.
    func launchAndStop(_ arguments: [String], in directory: TemporaryDirectory) throws -> Launched {
        let run = try Launched([Launched.graceful] + arguments, in: directory.path, environment: ["STEP_TIME": "0.01"])
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.stderr.contains("committed step"), "\(run.stderr)")
        return run
    }

    @Test func torchrunsCommandLineStopsWithACommitAndTheNextLaunchResumes() throws {
        let directory = try TemporaryDirectory()
        let arguments = [
            "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "--log_dir=logs", "--tee", "3",
            Self.soakRank,
        ]
        let first = try launchAndStop(arguments, in: directory)
        #expect(first.stdout.components(separatedBy: " from 1\n").count == 3, "\(first.stdout)")
        let record = try #require(directory.read("logs/soak_rank/last_checkpoint.json"), "no commit in --log-dir/<job>")
        #expect(record.contains("\"world_size\": 2"), "\(record)")
        #expect(directory.read("logs/soak_rank/rank_1.log")?.contains("ready 1 from 1") == true)
        let second = try launchAndStop(arguments, in: directory)
        #expect(!second.stdout.contains(" from 1\n"), "a rank started from scratch:\n\(second.stdout)")
    }

    @Test func runRunsAPythonScriptWithoutNamingPython() throws {
        let directory = try TemporaryDirectory()
        let run = try launchAndStop(["run", "-n", "2", Self.soakRank], in: directory)
        #expect(run.stderr.contains("python3 -u \(Self.soakRank)"), "\(run.stderr)")
        #expect(directory.read("graceful_run/soak_rank/last_checkpoint.json") != nil)
    }

    @Test func aRefusedOptionLaunchesNothing() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "torchrun", "--nnodes", "1:4", "--nproc-per-node", "2", Self.soakRank], in: directory.path)
        #expect(try run.waitForExit() == 64)
        #expect(run.stderr == "error: --nnodes: \"1:4\": an elastic number of nodes is not supported; give one number (see 'graceful torchrun --help')\n")
        #expect(!FileManager.default.fileExists(atPath: directory.file("graceful_run")))
    }
}
