import Foundation
import Glibc
import Testing

/// README's "A first run, step by step", command by command, in one directory, with no flag the
/// README does not give: each stop commits, each relaunch resumes from it, a run trained to the end
/// is never resumed from its last commit, and the examples never trip over each other.
@Suite(.serialized) struct ReadmeWalkthroughTests {
    static let train = ["run", "-n", "4", "--", "python3", "examples/python/train.py"]
    static let torchDDP = ["run", "-n", "4", "--", "python3", "examples/python/torch_ddp.py"]
    static let swiftExample = ["run", "-n", "2", "--", ".build/release/swift-rank-example"]

    /// The README lists these very lines: the walkthrough cannot drift from what users read.
    @Test func theReadmeGivesTheseCommandsInThisOrder() throws {
        let readme = try String(contentsOfFile: Launched.packageRoot + "/README.md", encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## A first run, step by step").dropFirst().first)
        var rest = Substring(section)
        for command in [Self.train, Self.train, Self.train, Self.torchDDP, Self.swiftExample] {
            let line = ".build/release/graceful " + command.joined(separator: " ")
            let found = try #require(rest.range(of: line), "README lacks, in order: \(line)")
            rest = rest[found.upperBound...]
        }
        #expect(section.contains(#"echo '{"GracefulExit": 1}' > graceful_exit.json"#))
    }

    /// A directory laid out like the clone's top: the examples where the README's lines expect them.
    static func clone() throws -> TemporaryDirectory {
        let directory = try TemporaryDirectory()
        try FileManager.default.createDirectory(atPath: directory.file("examples"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Launched.packageRoot + "/examples/python", toPath: directory.file("examples/python"))
        return directory
    }

    static func launch(_ arguments: [String], in directory: TemporaryDirectory, python: String = "python3") throws -> Launched {
        let command = arguments.map { $0 == "python3" ? python : $0 == ".build/release/swift-rank-example" ? Launched.swiftRankExample : $0 }
        // No PYTHONPATH: the examples find the client beside them, as in a fresh clone.
        return try Launched([Launched.graceful] + command, in: directory.path, environment: ["PYTHONPATH": ""])
    }

    /// The step a stop committed, from graceful's line.
    static func committedStep(_ run: Launched) -> Int? {
        run.stderr.split(separator: "\n").last { $0.hasPrefix("graceful: committed step ") }
            .flatMap { Int($0.split(separator: " ").last ?? "") }
    }

    @Test func theToyTrainingStopsResumesFinishesAndStartsAfreshWithoutARewind() throws {
        let directory = try Self.clone()
        // 1. Ctrl+C once training is under way.
        let first = try Self.launch(Self.train, in: directory)
        try first.waitFor("[rank0]: step 100:")
        first.signal(SIGINT)
        #expect(try first.waitForExit() == 0, "\(first.output)")
        let stopped = try #require(Self.committedStep(first), "\(first.stderr)")
        #expect(directory.read("graceful_run/train/last_checkpoint.json")?.contains("\"step\": \(stopped)") == true)

        // 2. The same line resumes; the control file stops it, and its flag is set back to 0.
        let second = try Self.launch(Self.train, in: directory)
        try second.waitFor("resuming from committed step \(stopped)")
        try second.waitFor("[rank0]: step \((stopped / 100 + 2) * 100):")
        try directory.write("graceful_exit.json", #"{"GracefulExit": 1}"# + "\n")
        #expect(try second.waitForExit() == 0, "\(second.output)")
        let again = try #require(Self.committedStep(second), "\(second.stderr)")
        #expect(again > stopped)
        #expect(directory.read("graceful_exit.json") == #"{"GracefulExit": 0}"# + "\n")

        // 3. Resumed once more and trained to the end: marked completed, never resumed from.
        let third = try Self.launch(Self.train, in: directory)
        #expect(try third.waitForExit(timeout: 180) == 0, "\(third.output)")
        #expect(third.stderr.contains("resuming from committed step \(again)"))
        #expect(third.stdout.contains("[rank0]: rank 0/4: finished 2000 steps"))
        #expect(third.stderr.contains("the run completed"))

        // 4. A fourth launch starts from scratch, says so, and keeps the finished run's record aside.
        let fourth = try Self.launch(Self.train, in: directory)
        try fourth.waitFor("starting from scratch")
        try fourth.waitFor("[rank0]: rank 0/4: starting at step 1")
        try fourth.waitFor("[rank0]: step 100:")
        fourth.signal(SIGINT)
        #expect(try fourth.waitForExit() == 0, "\(fourth.output)")
        #expect(!fourth.stderr.contains("resuming from"))
        #expect(directory.read("graceful_run/train/last_checkpoint.completed.json")?.contains("\"completed\": \"") == true)
    }

    /// The PyTorch example after the toy one, in the same directory: its own run directory and
    /// checkpoints, so nothing of the other is loaded.
    @Test(.enabled(if: torchPython() != nil, "PyTorch is not installed for python3 nor in the CI virtual environment (GRACEFUL_VENV)"))
    func thePyTorchExampleRunsBesideTheToyOneAndResumes() throws {
        let python = try #require(Self.torchPython())
        let directory = try Self.clone()
        let toy = try Self.launch(Self.train, in: directory)
        try toy.waitFor("[rank0]: step 100:")
        toy.signal(SIGINT)
        #expect(try toy.waitForExit() == 0, "\(toy.output)")

        let first = try Self.launch(Self.torchDDP, in: directory, python: python)
        try first.waitFor("[rank0]: step 100:", timeout: 180)
        first.signal(SIGINT)
        #expect(try first.waitForExit(timeout: 120) == 0, "\(first.output)")
        let stopped = try #require(Self.committedStep(first), "\(first.stderr)")
        #expect(!first.stderr.contains("resuming from"), "it took the toy training's record")

        let second = try Self.launch(Self.torchDDP, in: directory, python: python)
        try second.waitFor("resuming from committed step \(stopped)", timeout: 180)
        // The rank's own line: a stop before the ranks started running is not a clean stop.
        try second.waitFor("(step \(stopped))", timeout: 180)
        second.signal(SIGINT)
        #expect(try second.waitForExit(timeout: 120) == 0, "\(second.output)")
    }

    @Test func theSwiftExampleRunsBesideThePythonOnesAndResumes() throws {
        let directory = try Self.clone()
        let toy = try Self.launch(Self.train, in: directory)
        try toy.waitFor("[rank0]: step 100:")
        toy.signal(SIGINT)
        #expect(try toy.waitForExit() == 0, "\(toy.output)")

        let first = try Self.launch(Self.swiftExample, in: directory)
        try first.waitFor("starting at step 1", count: 2)
        first.signal(SIGINT)
        #expect(try first.waitForExit() == 0, "\(first.output)")
        let stopped = try #require(Self.committedStep(first), "\(first.stderr)")
        let second = try Self.launch(Self.swiftExample, in: directory)
        try second.waitFor("starting at step \(stopped + 1)", count: 2)
        second.signal(SIGINT)
        #expect(try second.waitForExit() == 0, "\(second.output)")
        #expect(FileManager.default.fileExists(atPath: directory.file("checkpoints/swift_rank/rank0")))
    }

    /// A Python that imports torch: `python3` itself, or the CI virtual environment's.
    static func torchPython() -> String? {
        let venv = ProcessInfo.processInfo.environment["GRACEFUL_VENV"]
            ?? (ProcessInfo.processInfo.environment["HOME"] ?? "/root") + "/.cache/graceful/venv"
        for candidate in ["python3", venv + "/bin/python"] {
            guard let run = try? Launched([candidate, "-c", "import torch"], in: "/tmp"),
                  (try? run.waitForExit(timeout: 120)) == 0
            else { continue }
            return candidate
        }
        return nil
    }
}
