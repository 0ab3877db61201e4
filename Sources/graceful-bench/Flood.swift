import Foundation
import Glibc

/// The coordinator while a rank writes as fast as it can (docs/BENCHMARKS.md, "Output flood"):
/// - stop under flood: `graceful run -n 2` of rank 0 `yes` and rank 1 `echo ready; sleep`, its console drained
///   here or stalled; after `Options.floodSeconds` of flood, SIGTERM to graceful, timed to its
///   `stop requested` line (drained only: a stalled console cannot be read), to the `yes` rank having
///   ended (it got graceful's SIGTERM), and to graceful's exit; graceful's VmRSS sampled every 100 ms
///   from the start of the flood to its exit;
/// - relay throughput: one rank writing a fixed number of lines as fast as it can, the console
///   drained here: launch to exit, the rank's log checked complete, the console lines counted, next
///   to the same generator piped through `cat` into the same drain.
struct Flood {
    /// One launch of the stop-under-flood measurement.
    struct StopTrial {
        let console: FloodProcess.Console
        /// ms from kill(SIGTERM) to the kernel's stamp of graceful's `stop requested` line (nan:
        /// not seen; always for a stalled console).
        var stopLine = Double.nan
        /// ms from kill(SIGTERM) to the `yes` rank seen ended (a zombie or gone), polled every 0.2 ms.
        var rankEnded = Double.nan
        /// ms from kill(SIGTERM) to graceful reaped here.
        var exited = Double.nan
        var peakResidentKilobytes = 0
        var peakHighWaterKilobytes = 0
        /// Seconds from finding the `yes` rank to the SIGTERM, and what rank_0.log held then.
        var floodSeconds = 0.0
        var loggedBytes = 0
        /// Rank lines that reached this process's drain, and those graceful reported not shown.
        var consoleLines = 0
        var droppedReported = 0
        var exitCode: Int32 = -1
        var error: String?

        var relayedMegabytesPerSecond: Double { floodSeconds > 0 ? Double(loggedBytes) / 1e6 / floodSeconds : .nan }
    }

    /// One shape of the relay throughput: `lines` lines of `lineBytes` bytes (newline included).
    struct Throughput {
        let lineBytes: Int
        let lines: Int
        var seconds = Double.nan
        var logBytes = 0
        /// Lines in rank_0.log besides its header.
        var logLines = 0
        var consoleLines = 0
        var consoleBytes = 0
        var droppedReported = 0
        var peakResidentKilobytes = 0
        var exitCode: Int32 = -1
        var error: String?
        /// The same generator through `cat` into the same drain.
        var catSeconds = Double.nan
        var catLines = 0

        var payloadBytes: Int { lineBytes * lines }
        var linesPerSecond: Double { Double(logLines) / seconds }
        var logMegabytesPerSecond: Double { Double(logBytes) / 1e6 / seconds }
        var consoleLinesPerSecond: Double { Double(consoleLines) / seconds }
        var consoleMegabytesPerSecond: Double { Double(consoleBytes) / 1e6 / seconds }
        var catLinesPerSecond: Double { Double(catLines) / catSeconds }
        var catMegabytesPerSecond: Double { Double(payloadBytes) / 1e6 / catSeconds }

        var json: [String: Any] {
            [
                "line_bytes": lineBytes, "lines": lines, "payload_bytes": payloadBytes, "wall_s": seconds,
                "log_bytes": logBytes, "log_lines": logLines, "lines_per_s": linesPerSecond,
                "log_mb_per_s": logMegabytesPerSecond, "console_lines": consoleLines, "console_bytes": consoleBytes,
                "console_lines_per_s": consoleLinesPerSecond, "console_mb_per_s": consoleMegabytesPerSecond,
                "console_lines_dropped_reported": droppedReported, "vm_rss_max_kb": peakResidentKilobytes,
                "exit_code": exitCode,
                "cat": ["wall_s": catSeconds, "lines": catLines, "lines_per_s": catLinesPerSecond, "mb_per_s": catMegabytesPerSecond],
            ]
        }
    }

    /// The trials of one console mode, summarized.
    struct StopResult {
        let console: FloodProcess.Console
        let trials: [StopTrial]

        var stopLine: Summary { Summary(trials.map(\.stopLine)) }
        var rankEnded: Summary { Summary(trials.map(\.rankEnded)) }
        var exited: Summary { Summary(trials.map(\.exited)) }
        var peakResidentKilobytes: Int { trials.map(\.peakResidentKilobytes).max() ?? 0 }
        var peakHighWaterKilobytes: Int { trials.map(\.peakHighWaterKilobytes).max() ?? 0 }
        var relayedMegabytesPerSecond: Summary { Summary(trials.map(\.relayedMegabytesPerSecond)) }
        var consoleLines: Int { trials.map(\.consoleLines).reduce(0, +) }
        var droppedReported: Int { trials.map(\.droppedReported).reduce(0, +) }

        var json: [String: Any] {
            var entry: [String: Any] = [
                "console": console.rawValue, "trials": trials.count,
                "flood_s": trials.map(\.floodSeconds).reduce(0, +) / Double(max(1, trials.count)),
                "rank_ended_ms": rankEnded.json, "exited_ms": exited.json,
                "vm_rss_max_kb": peakResidentKilobytes, "vm_hwm_max_kb": peakHighWaterKilobytes,
                "relayed_mb_per_s": relayedMegabytesPerSecond.json,
                "clean_stops": trials.filter { $0.error == nil }.count,
            ]
            // A stalled console's lines cannot be read: no line time, no console count.
            if console == .drained {
                entry["stop_line_ms"] = stopLine.json
                entry["console_lines"] = consoleLines
                entry["console_lines_dropped_reported"] = droppedReported
            }
            return entry
        }
    }

    let floodSeconds: Double
    let stops: [StopResult]
    let throughput: [Throughput]

    var json: [String: Any] {
        ["flood_s": floodSeconds, "stop": stops.map(\.json), "throughput": throughput.map(\.json)]
    }

    /// "what: why" for each launch that did not end cleanly.
    var errors: [String] {
        stops.flatMap(\.trials).compactMap { trial in trial.error.map { "flood stop (\(trial.console.rawValue) console): \($0)" } }
            + throughput.compactMap { entry in entry.error.map { "flood throughput (\(entry.lineBytes)-byte lines): \($0)" } }
    }

    var launches: Int { stops.map(\.trials.count).reduce(0, +) + throughput.count }

    static func measure(_ workspace: Workspace, _ options: Options) throws -> Flood {
        var stops: [StopResult] = []
        for console in FloodProcess.Console.allCases {
            var trials: [StopTrial] = []
            for index in 0..<options.floodTrials {
                progress("output flood, stop with a \(console.rawValue) console, launch \(index + 1) of \(options.floodTrials)")
                let trial = try stopTrial(workspace, options, console: console, index: index)
                if let error = trial.error { progress("not clean: \(error)") }
                trials.append(trial)
            }
            stops.append(StopResult(console: console, trials: trials))
        }
        var throughput: [Throughput] = []
        for (lineBytes, lines) in options.floodThroughputShapes {
            progress("output flood, relay throughput, \(lines) lines of \(lineBytes) bytes")
            throughput.append(try relay(workspace, lineBytes: lineBytes, lines: lines))
        }
        return Flood(floodSeconds: options.floodSeconds, stops: stops, throughput: throughput)
    }

    /// The VmRSS and VmHWM of `pid` now, kB; nil once it is gone.
    private static func memory(_ pid: pid_t) -> (resident: Int, peak: Int)? {
        guard let status = readSmallFile("/proc/\(pid)/status") else { return nil }
        func kilobytes(_ key: String) -> Int {
            let line = status.split(separator: "\n").first { $0.hasPrefix(key + ":") }
            return line?.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        }
        return (kilobytes("VmRSS"), kilobytes("VmHWM"))
    }

    /// The count graceful's closing report gives of rank lines it did not show (0: none).
    private static func droppedReported(_ lines: [FloodProcess.Line]) -> Int {
        for line in lines.reversed() where line.text.contains("line(s) of rank output were dropped from the console") {
            if let count = line.text.split(separator: " ").first(where: { Int($0) != nil }).flatMap({ Int($0) }) {
                return count
            }
        }
        return 0
    }

    private static func stopTrial(
        _ workspace: Workspace, _ options: Options, console: FloodProcess.Console, index: Int
    ) throws -> StopTrial {
        let directory = try workspace.directory("flood-stop-\(console.rawValue)-\(index)")
        defer { workspace.remove(directory) }
        let script = "if [ \"$RANK\" = 0 ]; then exec yes; else echo ready; exec sleep 1000; fi"
        let job = try FloodProcess(workspace.graceful, [
            "run", "-n", "2", "--run-dir", directory + "/run", "--control-file", directory + "/graceful_exit.json",
            "--", "/bin/sh", "-c", script,
        ], console: console)
        var trial = StopTrial(console: console)
        func sample() {
            guard let now = memory(job.pid) else { return }
            trial.peakResidentKilobytes = max(trial.peakResidentKilobytes, now.resident)
            trial.peakHighWaterKilobytes = max(trial.peakHighWaterKilobytes, now.peak)
        }

        // Both ranks started, rank 0 as `yes` (sh execs it).
        var ranks: [pid_t] = []
        var flooder: pid_t = 0
        let launchDeadline = job.started + 10_000_000_000
        while flooder == 0 || ranks.count < 2 {
            if job.reap() || monotonicNow() > launchDeadline {
                trial.error = "the ranks did not start (exit \(job.exitStatus.map(String.init) ?? "none"))"
                return trial
            }
            job.pump(milliseconds: 2)
            ranks = childProcesses(of: job.pid)
            flooder = ranks.first { commandName($0) == "yes" } ?? 0
        }
        // Ranks that outlive graceful are killed here: their command lines do not name the workspace.
        defer {
            for rank in ranks where !processHasEnded(rank) && ["yes", "sleep"].contains(commandName(rank) ?? "") {
                kill(rank, SIGKILL)
            }
        }

        let floodStart = monotonicNow()
        let floodEnd = floodStart + Int64(options.floodSeconds * 1e9)
        var nextSample = floodStart
        while true {
            let now = monotonicNow()
            if now >= nextSample {
                sample()
                nextSample += 100_000_000
            }
            if now >= floodEnd { break }
            if job.reap() {
                trial.error = "graceful exited \(job.exitStatus ?? -1) during the flood"
                return trial
            }
            job.pump(milliseconds: Int32(max(1, min(100, (min(nextSample, floodEnd) - now) / 1_000_000))))
        }
        var log = stat()
        trial.floodSeconds = Double(monotonicNow() - floodStart) / 1e9
        trial.loggedBytes = stat(directory + "/run/rank_0.log", &log) == 0 ? Int(log.st_size) : 0

        let sent = monotonicNow()
        kill(job.pid, SIGTERM)
        let deadline = sent + 60_000_000_000
        while true {
            let now = monotonicNow()
            if trial.rankEnded.isNaN && processHasEnded(flooder) { trial.rankEnded = (now - sent).milliseconds }
            if job.reap() { break }
            if now >= nextSample {
                sample()
                nextSample += 100_000_000
            }
            guard now < deadline else {
                trial.error = "graceful did not exit within 60 s of SIGTERM"
                return trial
            }
            if !job.pump(milliseconds: 0) { sleep(seconds: 0.0002) }
        }
        trial.exited = (job.exitedAt! - sent).milliseconds
        // Ended between two looks, at the latest when graceful had reaped it.
        if trial.rankEnded.isNaN { trial.rankEnded = trial.exited }
        job.drainToEnd()
        if let line = job.errorLines.first(where: { $0.text.contains("stop requested") }) {
            trial.stopLine = (line.time - sent).milliseconds
        }
        trial.consoleLines = job.outputLines
        trial.droppedReported = droppedReported(job.errorLines)
        trial.exitCode = job.exitStatus ?? -1
        if trial.exitCode != 0 {
            let error = job.errorLines.first { $0.text.contains("error:") }?.text
            trial.error = "exit \(trial.exitCode)" + (error.map { ": " + $0 } ?? "")
        } else if console == .drained && trial.stopLine.isNaN {
            trial.error = "no stop requested line"
        }
        if let outlived = ranks.first(where: { !processHasEnded($0) && ["yes", "sleep"].contains(commandName($0) ?? "") }) {
            trial.error = trial.error ?? "rank \(outlived) outlived graceful"
        }
        return trial
    }

    /// The generator of `lines` lines of `lineBytes` bytes: `yes` cut by `head`.
    private static func generator(lineBytes: Int, lines: Int) -> String {
        let text = lineBytes <= 2 ? "" : " " + String(repeating: "a", count: lineBytes - 1)
        return "yes\(text) | head -n \(lines)"
    }

    private static func relay(_ workspace: Workspace, lineBytes: Int, lines: Int) throws -> Throughput {
        let directory = try workspace.directory("flood-relay-\(lineBytes)")
        defer { workspace.remove(directory) }
        var result = Throughput(lineBytes: lineBytes, lines: lines)
        let generator = generator(lineBytes: lineBytes, lines: lines)

        let job = try FloodProcess(workspace.graceful, [
            "run", "-n", "1", "--run-dir", directory + "/run", "--control-file", directory + "/graceful_exit.json",
            "--", "/bin/sh", "-c", generator,
        ], console: .drained)
        let deadline = job.started + 300_000_000_000
        var nextSample = job.started
        while !job.reap() {
            let now = monotonicNow()
            if now >= nextSample {
                if let memory = memory(job.pid) { result.peakResidentKilobytes = max(result.peakResidentKilobytes, memory.resident) }
                nextSample += 100_000_000
            }
            guard now < deadline else {
                result.error = "graceful did not exit within 300 s"
                return result
            }
            job.pump(milliseconds: Int32(max(1, min(100, (nextSample - now) / 1_000_000))))
        }
        result.seconds = Double(job.exitedAt! - job.started) / 1e9
        job.drainToEnd()
        result.consoleLines = job.outputLines
        result.consoleBytes = job.outputBytes
        result.droppedReported = droppedReported(job.errorLines)
        result.exitCode = job.exitStatus ?? -1
        (result.logBytes, result.logLines) = countLines(directory + "/run/rank_0.log")
        // The log's header line, one per launch.
        result.logLines -= 1
        if result.exitCode != 0 {
            result.error = "exit \(result.exitCode)"
        } else if result.logLines != lines {
            result.error = "rank_0.log holds \(result.logLines) lines of \(lines)"
        }

        let baseline = try FloodProcess("/bin/sh", ["-c", generator + " | cat"], console: .drained)
        while !baseline.reap() {
            guard monotonicNow() < baseline.started + 300_000_000_000 else { throw BenchError("cat did not finish") }
            baseline.pump(milliseconds: 100)
        }
        result.catSeconds = Double(baseline.exitedAt! - baseline.started) / 1e9
        baseline.drainToEnd()
        result.catLines = baseline.outputLines
        return result
    }

    /// The size and the newlines of a file.
    private static func countLines(_ path: String) -> (bytes: Int, lines: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return (0, 0) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var (bytes, lines) = (0, 0)
        while true {
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            bytes += count
            for byte in UnsafeRawBufferPointer(rebasing: buffer[0..<count]) where byte == UInt8(ascii: "\n") { lines += 1 }
        }
        return (bytes, lines)
    }
}
