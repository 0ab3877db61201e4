import Foundation
import Testing

/// The Python client is fully typed: `mypy --strict` accepts it, run with the Python of the CI
/// virtual environment ($GRACEFUL_VENV, else ~/.cache/graceful/venv). Skipped, with the reason, where
/// that environment or its mypy is missing.
@Suite struct PythonTypeCheckTests {
    /// The virtual environment CI creates and caches.
    static let venv: String = {
        let environment = ProcessInfo.processInfo.environment
        if let venv = environment["GRACEFUL_VENV"], !venv.isEmpty { return venv }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return home + "/.cache/graceful/venv"
    }()

    static let python = venv + "/bin/python"

    static var hasPython: Bool { FileManager.default.isExecutableFile(atPath: python) }

    /// Whether the environment's Python can import mypy.
    static var hasMypy: Bool {
        guard hasPython, let run = try? Launched([python, "-c", "import mypy"], in: Launched.packageRoot) else {
            return false
        }
        return (try? run.waitForExit(timeout: 60)) == 0
    }

    @Test(
        .enabled(if: hasPython, "no Python at \(python) (the CI virtual environment: GRACEFUL_VENV, else ~/.cache/graceful/venv)"),
        .enabled(if: hasMypy, "\(python) cannot import mypy (pip install mypy into the CI virtual environment)"))
    func clientIsCleanUnderMypyStrict() throws {
        // No cache: nothing is written into the package or the environment.
        let run = try Launched(
            [Self.python, "-m", "mypy", "--strict", "--cache-dir", "/dev/null", "examples/python/graceful_exit.py"],
            in: Launched.packageRoot)
        let status = try run.waitForExit(timeout: 300)
        #expect(status == 0, "mypy --strict examples/python/graceful_exit.py exited \(status):\n\(run.output)")
        #expect(run.stdout.contains("Success: no issues found"), "\(run.output)")
    }
}
