import Foundation
import Glibc
import Testing

/// Training frameworks under `graceful torchrun`, end to end, with the CI virtual environment's
/// Python (`PYTHON_EXEC`, as torchrun honours it): PyTorch Lightning's DDP with the GracefulStop
/// callback stopped by SIGTERM, and plain PyTorch DDP on 4 ranks stopped by SIGINT. Each stop
/// commits one step every rank confirmed (exit 0), and the relaunch resumes from it.
@Suite(.serialized) struct FrameworkTests {
    /// The CI virtual environment's interpreter ($GRACEFUL_VENV, else ~/.cache/graceful/venv).
    static let venvPython: String = {
        let environment = ProcessInfo.processInfo.environment
        let venv = environment["GRACEFUL_VENV"] ?? (environment["HOME"] ?? "/root") + "/.cache/graceful/venv"
        return venv + "/bin/python3"
    }()

    static func venvImports(_ module: String) -> Bool {
        guard FileManager.default.isExecutableFile(atPath: venvPython),
              let run = try? Launched([venvPython, "-c", "import \(module)"], in: "/tmp")
        else { return false }
        return (try? run.waitForExit(timeout: 120)) == 0
    }

    static let hasTorch = venvImports("torch")
    static let hasLightning = hasTorch && venvImports("lightning")

    /// The clone's examples, in a fresh directory; no PYTHONPATH, so the scripts find the client as
    /// a user's copy would.
    static func launch(_ arguments: [String], in directory: TemporaryDirectory) throws -> Launched {
        try Launched([Launched.graceful] + arguments, in: directory.path,
                     environment: ["PYTHON_EXEC": venvPython, "PYTHONPATH": ""])
    }

    /// The step a stop committed, from graceful's line.
    static func committedStep(_ run: Launched) -> Int? {
        run.stderr.split(separator: "\n").last { $0.hasPrefix("graceful: committed step ") }
            .flatMap { Int($0.split(separator: " ").last ?? "") }
    }

    /// The summary's rows (`graceful:   <rank>  <pid>  exit 0  <step>  <path>`) confirming `step` with `path`.
    static func confirmations(_ run: Launched, step: Int, path: String) -> Int {
        run.stderr.split(separator: "\n").filter { line in
            let fields = line.split(separator: " ")
            return fields.count >= 7 && fields[0] == "graceful:" && fields[3] == "exit" && fields[4] == "0"
                && fields[5] == Substring(String(step)) && fields[6] == Substring(path)
        }.count
    }

    @Test(.enabled(if: hasLightning, "lightning (or torch) is not importable by the CI virtual environment's python3 (GRACEFUL_VENV)"))
    func lightningDDPStopsOnSIGTERMWithACommitAndResumesAtItsGlobalStep() throws {
        let directory = try TemporaryDirectory()
        let arguments = [
            "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
            Launched.packageRoot + "/examples/lightning/lightning_ddp.py", "--step-time", "0.01",
        ]
        let first = try Self.launch(arguments, in: directory)
        try first.waitFor("[rank0]: step 100:", timeout: 90)
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 60) == 0, "\(first.output)")
        let stopped = try #require(Self.committedStep(first), "\(first.output)")
        let path = "checkpoints/lightning/step_\(stopped).ckpt"
        #expect(Self.confirmations(first, step: stopped, path: path) == 2, "\(first.stderr)")
        #expect(first.count("stopped after step \(stopped) (SIGTERM), saved \(path)") == 2, "\(first.stdout)")
        #expect(FileManager.default.fileExists(atPath: directory.file(path)))

        let second = try Self.launch(arguments, in: directory)
        try second.waitFor("resuming from committed step \(stopped)", timeout: 60)
        try second.waitFor("training from global step \(stopped)\n", count: 2, timeout: 90)
        second.signal(SIGTERM)
        #expect(try second.waitForExit(timeout: 60) == 0, "\(second.output)")
        let again = try #require(Self.committedStep(second), "\(second.output)")
        #expect(again > stopped)
        #expect(Self.confirmations(second, step: again, path: "checkpoints/lightning/step_\(again).ckpt") == 2, "\(second.stderr)")
        #expect(!second.stdout.contains("training from global step 0\n"), "a rank started from scratch:\n\(second.stdout)")
    }

    @Test(.enabled(if: hasTorch, "torch is not importable by the CI virtual environment's python3 (GRACEFUL_VENV)"))
    func torchDDPOnFourRanksStopsOnSIGINTWithACommitAndResumes() throws {
        let directory = try TemporaryDirectory()
        let arguments = [
            "torchrun", "--standalone", "--nnodes", "1", "--nproc-per-node", "4",
            Launched.packageRoot + "/examples/python/torch_ddp.py", "--step-time", "0.01", "--log-every", "10",
        ]
        let first = try Self.launch(arguments, in: directory)
        try first.waitFor("[rank0]: step 20:", timeout: 90)
        first.signal(SIGINT)
        #expect(try first.waitForExit(timeout: 60) == 0, "\(first.output)")
        let stopped = try #require(Self.committedStep(first), "\(first.output)")
        for rank in 0..<4 {
            let path = "checkpoints/torch_ddp/rank\(rank)/step_\(stopped).pt"
            #expect(Self.confirmations(first, step: stopped, path: path) == 1, "\(first.stderr)")
        }

        let second = try Self.launch(arguments, in: directory)
        try second.waitFor("resuming from committed step \(stopped)", timeout: 60)
        try second.waitFor("(step \(stopped))\n", count: 4, timeout: 90)
        second.signal(SIGINT)
        #expect(try second.waitForExit(timeout: 60) == 0, "\(second.output)")
        #expect(try #require(Self.committedStep(second), "\(second.output)") > stopped)
    }
}
