// graceful-bench: the figures of docs/BENCHMARKS.md, in one run.
//
//   swift build -c release && .build/release/graceful-bench --json bench.json
//   swift run -c release graceful-bench --quick
//   .build/release/graceful-bench --only flood      (the output flood alone)
//   .build/release/graceful-bench --only multinode  (4 coordinators on this machine, alone)
//   .build/release/graceful-bench --only queue      (graceful queue alone)
//
// Exits 0 when every measurement ran and every launch stopped cleanly (graceful exited 0 after its
// stop), 1 otherwise (the figures are printed and written all the same), 64 on bad usage.
// Nothing here is a pass/fail time bound: the figures are reported, never judged.
import Foundation
import Glibc

func progress(_ line: String) {
    FileHandle.standardError.write(Data("graceful-bench: \(line)\n".utf8))
}

func runBenchmark(_ options: Options, _ workspace: Workspace) throws -> Report {
    let python = executablePath(options.python) ?? options.python
    progress("machine")
    let machine = Machine(python: python)
    if let only = options.only {
        progress("\(only == "flood" ? "output flood" : only == "queue" ? "graceful queue" : "several nodes") (only)")
        let queue = only == "queue" ? try QueueBench.measure(workspace, options) : nil
        var report = Report(
            quick: options.quick, machine: machine, limits: nil, stepCost: nil, fanOut: [], rawFanOut: [], launch: [],
            footprint: [], comparison: nil, flood: only == "flood" ? try Flood.measure(workspace, options) : nil,
            multiNode: only == "multinode" ? try MultiNode.measure(workspace, options) : nil,
            leftoverProcesses: workspace.leftoverProcesses().count)
        report.queue = queue
        return report
    }
    progress("physical limits")
    let limits = try Limits.measure(workspace, samples: options.limitSamples)
    progress("per-step cost")
    let stepCost = try StepCost.measure(workspace, options, python: python)

    var fanOut: [FanOutResult] = []
    var rawFanOut: [RawFanOut] = []
    var launch: [LaunchResult] = []
    for ranks in options.ranks {
        let trials = options.trials(ranks: ranks)
        var done: [StopTrigger: [StopTrial]] = [:]
        // Alternating triggers spreads any drift of the machine over both.
        for index in 0..<(2 * trials) {
            let trigger: StopTrigger = index % 2 == 0 ? .signal : .controlFile
            progress("stop fan-out, \(ranks) ranks, launch \(index + 1) of \(2 * trials) (\(trigger.rawValue))")
            let trial = try StopTrial.run(workspace, options, ranks: ranks, trigger: trigger, index: index)
            if let error = trial.error { progress("not clean: \(error)") }
            done[trigger, default: []].append(trial)
        }
        for trigger in StopTrigger.allCases {
            fanOut.append(FanOutResult(ranks: ranks, trigger: trigger, trials: done[trigger] ?? []))
        }
        launch.append(LaunchResult(ranks: ranks, trials: done.values.flatMap { $0 }))
        progress("raw fan-out, \(ranks) peers")
        rawFanOut.append(try RawFanOut.measure(workspace, ranks: ranks, trials: options.rawTrials(ranks: ranks)))
    }

    var footprint: [Footprint] = []
    for ranks in options.footprintRanks {
        progress("footprint, \(ranks) silent ranks, \(options.idleSeconds) s")
        footprint.append(try Footprint.measure(workspace, options, ranks: ranks, logEvery: nil))
    }
    if let largest = options.footprintRanks.max() {
        progress("footprint, \(largest) ranks printing a line a second, \(options.idleSeconds) s")
        footprint.append(try Footprint.measure(workspace, options, ranks: largest, logEvery: 1))
    }

    progress("comparison with torchrun")
    let comparison = try Comparison.measure(workspace, options, python: python)
    let flood = try Flood.measure(workspace, options)
    let multiNode = try MultiNode.measure(workspace, options)
    let queue = try QueueBench.measure(workspace, options)
    var report = Report(
        quick: options.quick, machine: machine, limits: limits, stepCost: stepCost, fanOut: fanOut,
        rawFanOut: rawFanOut, launch: launch, footprint: footprint, comparison: comparison, flood: flood,
        multiNode: multiNode, leftoverProcesses: workspace.leftoverProcesses().count)
    report.queue = queue
    return report
}

let options: Options
do {
    options = try Options(Array(CommandLine.arguments.dropFirst()))
} catch {
    progress("\(error)")
    exit(64)
}
// A peer or rank that is gone must show as an error on write, not kill the benchmark.
signal(SIGPIPE, SIG_IGN)
passStopSignalsOn()
setenv("PYTHONDONTWRITEBYTECODE", "1", 1)
_ = raiseOpenFileLimit()

let workspace: Workspace
do {
    workspace = try Workspace()
} catch {
    progress("\(error)")
    exit(1)
}
var status: Int32 = 0
do {
    let report = try runBenchmark(options, workspace)
    print(report.table)
    if let path = options.jsonPath {
        try report.write(json: path)
        progress("wrote \(path)")
    }
    if report.leftoverProcesses > 0 {
        progress("error: \(report.leftoverProcesses) processes outlived their job")
        status = 1
    }
    if !report.uncleanStops.isEmpty {
        progress("error: \(report.uncleanStops.count) of \(report.launches) stops did not end with exit 0 (first: \(report.uncleanStops[0]))")
        status = 1
    }
} catch {
    progress("error: \(error)")
    status = 1
}
// Whatever failed, nothing started here may outlive the benchmark.
for pid in workspace.leftoverProcesses() { kill(pid, SIGKILL) }
workspace.remove(workspace.root)
exit(status)
