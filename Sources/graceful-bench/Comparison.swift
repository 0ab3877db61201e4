import Foundation
import Glibc

/// graceful next to torchrun on the same trivial 4-rank job of Python ranks (torchrun with
/// `--standalone`, its own rendezvous on a free port; optional):
/// - wall time from starting the launcher to its exit, for ranks that do nothing (median of 3 runs);
/// - the launcher process's own peak resident memory (VmHWM, sampled every 50 ms from /proc) while
///   its 4 ranks sleep 2 s; the ranks' memory is not counted.
/// With --quick: one run, ranks sleeping 0.3 s, and no torchrun.
struct Comparison {
    struct Launcher {
        let trivialJobSeconds: Double
        let peakResidentKilobytes: Int

        var json: [String: Any] { ["trivial_job_s": trivialJobSeconds, "agent_vm_hwm_kb": peakResidentKilobytes] }
    }

    let graceful: Launcher
    /// nil with the reason when torchrun was not measured.
    let torchrun: Launcher?
    let torchrunAbsence: String

    var json: [String: Any] {
        var torch: [String: Any] = ["available": torchrun != nil]
        if let torchrun { torch.merge(torchrun.json) { $1 } } else { torch["reason"] = torchrunAbsence }
        return ["graceful": graceful.json, "torchrun": torch]
    }

    static func measure(_ workspace: Workspace, _ options: Options, python: String) throws -> Comparison {
        let runs = options.comparisonRuns
        let directory = try workspace.directory("comparison")
        defer { workspace.remove(directory) }
        let trivial = directory + "/trivial.py"
        let sleeper = directory + "/sleeper.py"
        try Data("pass\n".utf8).write(to: URL(fileURLWithPath: trivial))
        try Data("import time\ntime.sleep(\(options.comparisonSleepSeconds))\n".utf8).write(to: URL(fileURLWithPath: sleeper))
        func gracefulCommand(_ script: String, _ run: Int) -> [String] {
            ["run", "-n", "4", "--run-dir", "\(directory)/run\(run)", "--control-file", directory + "/graceful_exit.json", "--", python, script]
        }
        let graceful = try Launcher(
            trivialJobSeconds: median((0..<runs).map { try wall(workspace.graceful, gracefulCommand(trivial, $0)) }),
            peakResidentKilobytes: try peak(workspace.graceful, gracefulCommand(sleeper, runs)))

        guard let torchrun = options.torchrun else {
            return Comparison(graceful: graceful, torchrun: nil, torchrunAbsence: "skipped (--quick)")
        }
        guard access(torchrun, X_OK) == 0 else {
            return Comparison(graceful: graceful, torchrun: nil, torchrunAbsence: "not available (\(torchrun) not found)")
        }
        func torchCommand(_ script: String) -> [String] { ["--standalone", "--nproc-per-node", "4", script] }
        do {
            let torch = try Launcher(
                trivialJobSeconds: median((0..<runs).map { _ in try wall(torchrun, torchCommand(trivial)) }),
                peakResidentKilobytes: try peak(torchrun, torchCommand(sleeper)))
            return Comparison(graceful: graceful, torchrun: torch, torchrunAbsence: "")
        } catch {
            return Comparison(graceful: graceful, torchrun: nil, torchrunAbsence: "not available (\(error))")
        }
    }

    private static func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    private static func wall(_ launcher: String, _ arguments: [String]) throws -> Double {
        let start = monotonicNow()
        let child = try Child(launcher, arguments)
        guard child.wait(until: start + 120_000_000_000) == 0 else {
            child.killNow()
            throw BenchError("\(launcher) failed:\n" + child.lines.suffix(10).map(\.text).joined(separator: "\n"))
        }
        return Double(monotonicNow() - start) / 1e9
    }

    private static func peak(_ launcher: String, _ arguments: [String]) throws -> Int {
        let child = try Child(launcher, arguments)
        var peak = 0
        let deadline = monotonicNow() + 120_000_000_000
        while child.wait(until: monotonicNow() + 50_000_000) == nil {
            if let sample = try? ProcessSample(pid: child.pid) { peak = max(peak, sample.peakResidentKilobytes) }
            guard monotonicNow() < deadline else {
                child.killNow()
                throw BenchError("\(launcher) did not finish")
            }
        }
        guard child.exitStatus == 0 else { throw BenchError("\(launcher) exited \(child.exitStatus ?? -1)") }
        return peak
    }
}
