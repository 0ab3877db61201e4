import Foundation
import Glibc

/// `graceful queue` through one host, its queue on this machine's disk (the workspace, under /tmp):
/// trivial tasks (`/bin/true`) per second with 1, 2 and 8 workers, and the CPU each task costs
/// (`queue run`, its `graceful run`s, their guards and the task, from the rusage of the reaped
/// tree); the file operations of one claim and of one outcome, timed here first; and what `queue run`
/// costs while one long task runs (its heartbeats, control-file checks and deadline checks), in
/// CPU % from schedstat as the coordinator's footprint is measured (`Footprint.swift`).
struct QueueBench {
    /// The goal for trivial tasks per second through one host (docs/BENCHMARKS.md, "Queue").
    static let goalTasksPerSecond = 100.0

    struct Throughput {
        let workers: Int
        let tasks: Int
        /// From starting `queue run` (which creates the queue) to its exit.
        let seconds: Double
        /// User + system CPU of `queue run` and every process below it.
        let cpuSeconds: Double
        let exitCode: Int32

        var tasksPerSecond: Double { Double(tasks) / seconds }
        var cpuMillisecondsPerTask: Double { cpuSeconds * 1000 / Double(tasks) }
        /// The rate this CPU cost allows with every processor of the machine on it and nothing else.
        var cpuBoundTasksPerSecond: Double {
            Double(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))) * 1000 / cpuMillisecondsPerTask
        }

        var json: [String: Any] {
            [
                "workers": workers, "tasks": tasks, "wall_s": seconds, "tasks_per_s": tasksPerSecond,
                "cpu_s": cpuSeconds, "cpu_ms_per_task": cpuMillisecondsPerTask,
                "cpu_bound_tasks_per_s": cpuBoundTasksPerSecond, "exit_code": exitCode,
            ]
        }
    }

    struct IdleCost {
        let lease: Double
        let seconds: Double
        let cpuNanoseconds: Int64
        let exitCode: Int32

        var cpuPercent: Double { Double(cpuNanoseconds) / 1e9 / seconds * 100 }
        /// The lease's renewal interval (README: every third of it, at most every 5 s).
        var heartbeatSeconds: Double { min(lease / 3, 5) }

        var json: [String: Any] {
            [
                "lease_s": lease, "heartbeat_s": heartbeatSeconds, "seconds": seconds,
                "cpu_ms": Double(cpuNanoseconds) / 1e6, "cpu_percent": cpuPercent, "exit_code": exitCode,
            ]
        }
    }

    let throughput: [Throughput]
    /// The file operations of one claim, in µs.
    let claim: Summary
    /// The file operations of recording one outcome (content and name fsynced), in µs.
    let outcome: Summary
    let idle: [IdleCost]

    /// `queue run`s started, and why each that did not end as expected did not.
    var launches: Int { throughput.count + idle.count }
    var errors: [String] {
        throughput.filter { $0.exitCode != 0 }.map { "queue run, \($0.workers) workers: exit \($0.exitCode)" }
            + idle.filter { $0.exitCode != 128 + SIGTERM }.map { "queue run, one long task: exit \($0.exitCode) after SIGTERM, not 143" }
    }

    static func measure(_ workspace: Workspace, _ options: Options) throws -> QueueBench {
        // Every directory of this part is kept until its end: ext4 without a journal skips the inodes
        // freed in the last 60 s (300 s while their table block is dirty) at every allocation, so
        // removing one case's thousands of files slowed every file the next case created. The file
        // operations come first, as a reading of the disk's state before the queue writes to it.
        var made: [String] = []
        defer { made.forEach(workspace.remove) }
        progress("queue: claim and outcome file operations")
        let files = try workspace.directory("queue-files")
        made.append(files)
        let (claim, outcome) = try measureFileOperations(in: files, samples: options.queueFileSamples)
        var throughput: [Throughput] = []
        for workers in options.queueWorkers {
            progress("queue: \(options.queueTasks) trivial tasks, \(workers) worker\(workers == 1 ? "" : "s")")
            let queue = try workspace.directory("queue-throughput-\(workers)")
            made.append(queue)
            throughput.append(try measureThroughput(in: queue, workspace, tasks: options.queueTasks, workers: workers))
        }
        var idle: [IdleCost] = []
        for lease in [30.0, 3.0] {
            progress("queue: queue run while one long task runs, --lease \(Int(lease)), \(options.idleSeconds) s")
            idle.append(try measureIdle(workspace, options, lease: lease))
        }
        return QueueBench(throughput: throughput, claim: claim, outcome: outcome, idle: idle)
    }

    private static func measureThroughput(in directory: String, _ workspace: Workspace, tasks: Int, workers: Int) throws -> Throughput {
        let arguments = [
            "queue", "run", directory + "/sweep", "--grid", "n=" + (1...tasks).map(String.init).joined(separator: ","),
            "--workers", "\(workers)", "--control-file", directory + "/graceful_exit.json", "--", "/bin/true",
        ]
        let before = childrenCPUSeconds()
        let started = monotonicNow()
        let child = try Child(workspace.graceful, arguments)
        guard let code = child.wait(until: started + 600_000_000_000) else {
            child.killNow()
            throw BenchError("queue run of \(tasks) tasks with \(workers) workers did not end within 600 s")
        }
        let seconds = Double(monotonicNow() - started) / 1e9
        let cpu = childrenCPUSeconds() - before
        return Throughput(workers: workers, tasks: tasks, seconds: seconds, cpuSeconds: cpu, exitCode: code)
    }

    /// User + system seconds of every child reaped so far (and of what they reaped).
    private static func childrenCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(Int32(RUSAGE_CHILDREN.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    /// The same file operations as `QueueDirectory.claim` and `QueueDirectory.recordOutcome`
    /// (Sources/Graceful/Queue/QueueDirectory.swift), on task directories made beforehand as the
    /// queue makes them: a claim is a `stat` (is it taken?), the task directory ensured (one `mkdir`
    /// finding it), a temporary written and closed, linked to the claim's name, unlinked; an outcome
    /// is the same with the temporary fsynced before the link and the directory after it.
    private static func measureFileOperations(in directory: String, samples: Int) throws -> (Summary, Summary) {
        for index in 0..<samples {
            guard mkdir("\(directory)/task-\(index)", 0o755) == 0 else { throw BenchError("mkdir in \(directory) failed") }
        }
        let content = Array(
            "{\"worker\": \"host/12345/w0\", \"host\": \"host\", \"pid\": 12345, \"start\": 123456789, \"claimed\": \"2026-01-01T00:00:00Z\", \"claimed_epoch\": 1767225600}\n".utf8)
        var claims: [Double] = []
        var outcomes: [Double] = []
        for index in 0..<samples {
            let task = "\(directory)/task-\(index)"
            var started = monotonicNow()
            try linkFile(content, at: task + "/attempt_1.claim", in: task, fsynced: false)
            claims.append(Double(monotonicNow() - started) / 1e3)
            started = monotonicNow()
            try linkFile(content, at: task + "/outcome.json", in: task, fsynced: true)
            outcomes.append(Double(monotonicNow() - started) / 1e3)
        }
        return (Summary(claims), Summary(outcomes))
    }

    private static func linkFile(_ content: [UInt8], at path: String, in directory: String, fsynced: Bool) throws {
        var info = stat()
        guard stat(path, &info) != 0 else { throw BenchError("\(path) exists") }
        if mkdir(directory, 0o755) != 0 && errno == EEXIST { _ = stat(directory, &info) }
        let temporary = "\(path).tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw BenchError("open \(temporary) failed") }
        guard writeAll(fd, content), !fsynced || fsync(fd) == 0 else { throw BenchError("write \(temporary) failed") }
        close(fd)
        guard link(temporary, path) == 0 else { throw BenchError("link \(path) failed") }
        if fsynced {
            let handle = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if handle >= 0 {
                fsync(handle)
                close(handle)
            }
        }
        unlink(temporary)
    }

    /// `queue run` with one task that sleeps: after it started and `footprintSettleSeconds`, its CPU
    /// time over `idleSeconds`; then SIGTERM (the task is put back; exit 143).
    private static func measureIdle(_ workspace: Workspace, _ options: Options, lease: Double) throws -> IdleCost {
        let directory = try workspace.directory("queue-idle-\(Int(lease))")
        let child = try Child(workspace.graceful, [
            "queue", "run", directory + "/sweep", "--grid", "n=1", "--lease", "\(lease)", "--grace", "2", "--kill-after", "1",
            "--control-file", directory + "/graceful_exit.json", "--", "sleep", "1000",
        ])
        let deadline = monotonicNow() + 60_000_000_000
        guard child.pump(until: deadline, { child.lines.contains { $0.text.contains(" started ") } }) else {
            child.killNow()
            throw BenchError("queue run did not start its task within 60 s")
        }
        _ = child.pump(until: monotonicNow() + Int64(options.footprintSettleSeconds * 1e9)) { false }
        let before = try ProcessSample(pid: child.pid)
        let windowStart = monotonicNow()
        _ = child.pump(until: windowStart + Int64(options.idleSeconds * 1e9)) { false }
        let after = try ProcessSample(pid: child.pid)
        let seconds = Double(monotonicNow() - windowStart) / 1e9
        kill(child.pid, SIGTERM)
        let code = child.wait(until: monotonicNow() + 30_000_000_000)
        if code == nil { child.killNow() }
        workspace.remove(directory)
        return IdleCost(lease: lease, seconds: seconds, cpuNanoseconds: after.cpuNanoseconds - before.cpuNanoseconds,
                        exitCode: code ?? 128 + SIGKILL)
    }

    var json: [String: Any] {
        [
            "goal_tasks_per_s": Self.goalTasksPerSecond,
            "throughput": throughput.map(\.json),
            "claim_us": claim.json,
            "outcome_us": outcome.json,
            "idle": idle.map(\.json),
        ]
    }

    var table: [String] {
        var out: [String] = []
        out.append("queue: trivial tasks (/bin/true) through one host, queue on local disk (goal: \(Int(Self.goalTasksPerSecond)) tasks/s)")
        var rows = [["workers", "tasks", "wall s", "tasks/s", "CPU ms/task", "CPU-bound tasks/s", "exit"]]
        for entry in throughput {
            rows.append([
                "\(entry.workers)", "\(entry.tasks)", tableNumber(entry.seconds), tableNumber(entry.tasksPerSecond),
                tableNumber(entry.cpuMillisecondsPerTask), tableNumber(entry.cpuBoundTasksPerSecond), "\(entry.exitCode)",
            ])
        }
        out += tableColumns(rows)
        out.append("  CPU: queue run and everything below it (graceful run, its guard, the task), from rusage;")
        out.append("  CPU-bound: every processor of this machine on the queue alone, at that cost per task")
        out.append("")
        out.append("queue: file operations (µs), measured before the tasks: the disk's state")
        out += tableColumns([
            ["", "p50", "p99", "max", "n"],
            ["claim (stat, mkdir found, temporary written and closed, link, unlink)", tableNumber(claim.p50), tableNumber(claim.p99), tableNumber(claim.max), "\(claim.count)"],
            ["outcome (the same, temporary and directory fsynced)", tableNumber(outcome.p50), tableNumber(outcome.p99), tableNumber(outcome.max), "\(outcome.count)"],
        ])
        out.append("  a slow claim means slow file creation now, and fewer tasks/s: on ext4 without a journal, after")
        out.append("  many files were removed in the last minutes (docs/BENCHMARKS.md, \"The disk's state decides the figure\")")
        out.append("")
        out.append("queue: queue run while one long task runs (heartbeats, control-file and deadline checks)")
        var idleRows = [["lease s", "heartbeat s", "seconds", "CPU ms", "CPU % (schedstat)"]]
        for entry in idle {
            idleRows.append([tableNumber(entry.lease), tableNumber(entry.heartbeatSeconds), tableNumber(entry.seconds),
                             tableNumber(Double(entry.cpuNanoseconds) / 1e6), tableNumber(entry.cpuPercent)])
        }
        out += tableColumns(idleRows)
        out.append("")
        return out
    }

}

extension Options {
    /// Trivial tasks per throughput measurement.
    var queueTasks: Int { quick ? 20 : 300 }
    /// Workers of the throughput measurements.
    var queueWorkers: [Int] { quick ? [1, 8] : [1, 2, 8] }
    /// Claims (and outcomes) timed.
    var queueFileSamples: Int { quick ? 50 : 1000 }
}
