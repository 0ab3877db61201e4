import Foundation
import Glibc

/// The coordinator's memory and CPU time, read from /proc.
struct ProcessSample {
    /// utime + stime, in clock ticks (sysconf(_SC_CLK_TCK) per second).
    let cpuTicks: Int
    /// Time on a CPU from /proc/PID/task/*/schedstat, in nanoseconds: the same thing at nanosecond
    /// resolution, where a tick (10 ms) is already 0.1% of a 10 s window.
    let cpuNanoseconds: Int64
    let residentKilobytes: Int
    let peakResidentKilobytes: Int

    init(pid: pid_t) throws {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { throw BenchError("cannot read /proc/\(pid)") }
        // Fields after the command name: state is field 3, utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12 else { throw BenchError("unexpected /proc/\(pid)/stat") }
        cpuTicks = (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        cpuNanoseconds = tasks.reduce(0) { sum, task in
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8)) ?? ""
            return sum + (text.split(separator: " ").first.flatMap { Int64($0) } ?? 0)
        }
        func kilobytes(_ key: String) -> Int {
            let line = status.split(separator: "\n").first { $0.hasPrefix(key + ":") }
            return line?.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        }
        residentKilobytes = kilobytes("VmRSS")
        peakResidentKilobytes = kilobytes("VmHWM")
    }
}

/// The coordinator while N ranks train (steps of `Options.stepTime`) and nothing happens: the ranks print nothing, or
/// one line a second each; the coordinator's CPU time over the window, its memory at the end.
struct Footprint {
    let ranks: Int
    /// Seconds between two lines of each rank; nil: the ranks print nothing in the window.
    let logEvery: Double?
    let seconds: Double
    /// graceful's exit code after the stop that ends the window; 0: clean.
    let exitCode: Int32
    let error: String?
    let residentKilobytes: Int
    let peakResidentKilobytes: Int
    let cpuTicks: Int
    let cpuNanoseconds: Int64

    var cpuPercentFromTicks: Double { Double(cpuTicks) / Double(sysconf(Int32(_SC_CLK_TCK))) / seconds * 100 }
    var cpuPercent: Double { Double(cpuNanoseconds) / 1e9 / seconds * 100 }

    var json: [String: Any] {
        [
            "ranks": ranks, "rank_lines_per_second": logEvery.map { 1 / $0 } ?? 0, "seconds": seconds,
            "vm_rss_kb": residentKilobytes, "vm_hwm_kb": peakResidentKilobytes,
            "cpu_ticks": cpuTicks, "cpu_percent_ticks": cpuPercentFromTicks,
            "cpu_ms": Double(cpuNanoseconds) / 1e6, "cpu_percent": cpuPercent, "exit_code": exitCode,
        ]
    }

    /// Launches, lets the launch settle, measures over `options.idleSeconds`, then stops the job.
    static func measure(_ workspace: Workspace, _ options: Options, ranks: Int, logEvery: Double?) throws -> Footprint {
        let seconds = options.idleSeconds
        let job = try BenchJob(
            workspace, name: "footprint-\(ranks)-\(logEvery == nil ? "silent" : "logging")", ranks: ranks,
            stepTime: options.stepTime, logEvery: logEvery)
        try job.waitUntilReady()
        job.idle(seconds: options.footprintSettleSeconds)
        let before = try ProcessSample(pid: job.coordinator.pid)
        job.idle(seconds: seconds)
        let after = try ProcessSample(pid: job.coordinator.pid)
        _ = job.triggerSignal()
        let exitCode = try job.finish()
        return Footprint(
            ranks: ranks, logEvery: logEvery, seconds: seconds, exitCode: exitCode,
            error: exitCode == 0 ? nil : job.firstError ?? "exit \(exitCode)",
            residentKilobytes: after.residentKilobytes, peakResidentKilobytes: after.peakResidentKilobytes,
            cpuTicks: after.cpuTicks - before.cpuTicks, cpuNanoseconds: after.cpuNanoseconds - before.cpuNanoseconds)
    }
}
