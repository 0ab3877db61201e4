import Foundation
import Glibc
import Testing

/// The Python tests (Tests/python/test_*.py, standard-library unittest), run by `swift test` too so
/// one command runs everything. Each is a test case of its own, run in its own process by
/// Tests/python/runner.py; a new test file is picked up by discovery. A test Python skips is
/// reported as a known issue that names it and gives the reason, so a skip never passes silently:
/// the run's last line ends "with N known issues". (Swift Testing 6.3 reports `Test.cancel` in a
/// test case as a pass, and its skip traits apply to a whole test function.)
@Suite(.serialized) struct PythonClientTests {
    /// The interpreter: the one of the virtual environment where .ci/run installs what some tests
    /// need (PyTorch, mypy), `GRACEFUL_VENV` or else `~/.cache/graceful/venv`, when it exists;
    /// `python3` otherwise.
    static let python: String = {
        let environment = ProcessInfo.processInfo.environment
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        let venv = environment["GRACEFUL_VENV"].flatMap { $0.isEmpty ? nil : $0 } ?? home + "/.cache/graceful/venv"
        let python = venv + "/bin/python3"
        return access(python, X_OK) == 0 ? python : "python3"
    }()

    static let runner = Launched.packageRoot + "/Tests/python/runner.py"
    static let resultPrefix = "graceful-python-test-result: "

    struct DiscoveryFailed: Error, CustomStringConvertible {
        let description: String
    }

    /// The ids of the Python tests (`module.Class.test_name`), as unittest's discovery finds them.
    static func discover() throws -> [String] {
        let run = try Launched([python, runner, "list"], in: Launched.packageRoot)
        guard try run.waitForExit(timeout: 120) == 0 else {
            throw DiscoveryFailed(description: "\(python) \(runner) list failed:\n\(run.output)")
        }
        return run.stdout.split(separator: "\n").map(String.init)
    }

    struct Result: Decodable {
        let id: String
        let outcome: String
        let reason: String
    }

    @Test func everyPythonTestFileHasTests() throws {
        print("python tests: run with \(Self.python)")
        let ids = try Self.discover()
        let files = try FileManager.default.contentsOfDirectory(atPath: Launched.packageRoot + "/Tests/python")
            .filter { $0.hasPrefix("test_") && $0.hasSuffix(".py") }
        #expect(!files.isEmpty)
        for file in files {
            let module = String(file.dropLast(3))
            #expect(ids.contains { $0.hasPrefix(module + ".") }, "Tests/python/\(file): no test found, or it cannot be imported")
        }
    }

    @Test("Python test", arguments: try discover())
    func pythonTest(_ id: String) throws {
        // One thread per process, as graceful gives its ranks: the tests start several ranks at
        // once (PyTorch's would each use every core), and the Swift tests run beside them.
        let threads = ProcessInfo.processInfo.environment["OMP_NUM_THREADS"] ?? "1"
        let run = try Launched([Self.python, Self.runner, "run", id], in: Launched.packageRoot,
                               environment: ["OMP_NUM_THREADS": threads])
        let status = try run.waitForExit(timeout: 300)
        for line in run.output.split(separator: "\n") where line.contains("ns/call") {
            print("python client: \(line)")
        }
        guard let line = run.stdout.split(separator: "\n").last(where: { $0.hasPrefix(Self.resultPrefix) }),
              let result = try? JSONDecoder().decode(Result.self, from: Data(line.dropFirst(Self.resultPrefix.count).utf8)),
              result.id == id
        else {
            Issue.record("no result (exit \(status)):\n\(run.output)")
            return
        }
        switch result.outcome {
        case "passed", "expected failure":
            #expect(status == 0, "\(run.output)")
        case "skipped":
            #expect(status == 0, "\(run.output)")
            withKnownIssue("a skipped Python test is not a pass") {
                Issue.record("skipped: \(result.reason)")
            }
        default:
            Issue.record("\(result.outcome) (exit \(status)):\n\(run.output)")
        }
    }
}
