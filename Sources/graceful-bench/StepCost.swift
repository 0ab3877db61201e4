import Foundation
import Glibc

/// What a rank pays at each step boundary while no stop is pending, measured in one-rank jobs under the
/// coordinator (so the clients run coordinated, their reader thread blocked on the channel), each
/// figure the median of 5 timed loops, in nanoseconds per step:
/// - `GracefulRank.shouldStop(step:)`, the Swift client;
/// - `graceful_exit.Rank.should_stop(step)`, the Python client, in a `for step in range(n)` loop, with
///   the same loop around nothing beside it;
/// - MindSpore's way, `json.load(open(path))["GracefulExit"] == 1` at every step, in the same loop.
struct StepCost {
    let swift: Double
    let python: Double
    let pythonEmptyLoop: Double
    let mindSporeStyle: Double

    var json: [String: Any] {
        [
            "swift_should_stop_ns": swift, "python_should_stop_ns": python,
            "python_empty_loop_ns": pythonEmptyLoop, "python_json_read_ns": mindSporeStyle,
        ]
    }

    static let script = #"""
        import json, sys, time
        client, control, calls, json_calls, repeats, out = sys.argv[1:7]
        calls, json_calls, repeats = int(calls), int(json_calls), int(repeats)
        sys.path.insert(0, client)
        from graceful_exit import Rank
        rank = Rank()
        if not rank.coordinated:
            sys.exit("not under graceful run")

        def should_stop(n):
            start = time.perf_counter_ns()
            for step in range(n):
                if rank.should_stop(step):
                    sys.exit("should_stop returned True with nothing pending")
            return time.perf_counter_ns() - start

        def empty(n):
            start = time.perf_counter_ns()
            for step in range(n):
                if step < 0:
                    sys.exit("unreachable")
            return time.perf_counter_ns() - start

        def json_read(n):
            start = time.perf_counter_ns()
            for step in range(n):
                if json.load(open(control))["GracefulExit"] == 1:
                    sys.exit("the control file requests an exit")
            return time.perf_counter_ns() - start

        def median(loop, n):
            return sorted(loop(n) / n for _ in range(repeats))[repeats // 2]

        result = {"should_stop": median(should_stop, calls), "empty": median(empty, calls),
                  "json": median(json_read, json_calls)}
        with open(out, "w") as f:
            json.dump(result, f)
        """#

    static func measure(_ workspace: Workspace, _ options: Options, python: String) throws -> StepCost {
        let calls = options.stepCostCalls
        let directory = try workspace.directory("step-cost")
        defer { workspace.remove(directory) }
        let control = directory + "/graceful_exit.json"
        try Data("{\"GracefulExit\": 0}\n".utf8).write(to: URL(fileURLWithPath: control))
        try Data(script.utf8).write(to: URL(fileURLWithPath: directory + "/step_cost.py"))

        let swiftOut = directory + "/swift.txt"
        try runOneRank(workspace, directory: directory, control: control, [
            workspace.rank, "step-cost", "--calls", "\(calls.swift)", "--repeats", "5", "--results", swiftOut,
        ])
        guard let swift = Double((try String(contentsOfFile: swiftOut, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw BenchError("no Swift step cost in \(swiftOut)")
        }

        let pythonOut = directory + "/python.json"
        try runOneRank(workspace, directory: directory, control: control, [
            python, directory + "/step_cost.py", workspace.pythonClient, control,
            "\(calls.python)", "\(calls.json)", "5", pythonOut,
        ])
        guard let data = FileManager.default.contents(atPath: pythonOut),
              let figures = try JSONSerialization.jsonObject(with: data) as? [String: Double],
              let python = figures["should_stop"], let empty = figures["empty"], let json = figures["json"]
        else { throw BenchError("no Python step cost in \(pythonOut)") }
        return StepCost(swift: swift, python: python, pythonEmptyLoop: empty, mindSporeStyle: json)
    }

    private static func runOneRank(_ workspace: Workspace, directory: String, control: String, _ command: [String]) throws {
        let run = try Child(workspace.graceful, [
            "run", "-n", "1", "--run-dir", directory + "/run", "--control-file", control, "--",
        ] + command)
        guard run.wait(until: monotonicNow() + 300_000_000_000) == 0 else {
            run.killNow()
            throw BenchError("\(command.joined(separator: " ")) under graceful failed:\n" + run.lines.suffix(10).map(\.text).joined(separator: "\n"))
        }
    }
}
