import Foundation

/// Everything one benchmark run measured, printed as a table and written as JSON with the same figures.
/// With `--only flood` or `--only multinode`, the parts not run are nil or empty, and left out of both.
struct Report {
    let quick: Bool
    let machine: Machine
    let limits: Limits?
    let stepCost: StepCost?
    let fanOut: [FanOutResult]
    let rawFanOut: [RawFanOut]
    let launch: [LaunchResult]
    let footprint: [Footprint]
    let comparison: Comparison?
    let flood: Flood?
    let multiNode: MultiNode?
    let leftoverProcesses: Int
    /// `graceful queue` (QueueBench.swift); nil when not measured.
    var queue: QueueBench? = nil

    /// Launches of `graceful run` (each ended by one stop, or for the flood's relay throughput, by
    /// its rank's end; a job of several nodes counts one per node; a queue run counts once).
    var launches: Int {
        fanOut.map(\.trials.count).reduce(0, +) + footprint.count + (flood?.launches ?? 0) + (multiNode?.launches ?? 0)
            + (queue?.launches ?? 0)
    }

    /// "N ranks: why" for each launch whose stop did not end with exit 0.
    var uncleanStops: [String] {
        fanOut.flatMap(\.trials).compactMap { trial in trial.error.map { "\(trial.ranks) ranks: \($0)" } }
            + footprint.compactMap { entry in entry.error.map { "\(entry.ranks) ranks: \($0)" } }
            + (flood?.errors ?? []) + (multiNode?.errors ?? []) + (queue?.errors ?? [])
    }

    var json: [String: Any] {
        var json: [String: Any] = [
            "schema": 1, "quick": quick, "machine": machine.json,
            "clean": [
                "launches": launches, "clean_stops": launches - uncleanStops.count,
                "leftover_processes": leftoverProcesses, "unclean": uncleanStops,
            ],
        ]
        if let limits { json["limits"] = limits.json }
        if let stepCost { json["step_cost"] = stepCost.json }
        if !fanOut.isEmpty { json["fan_out"] = fanOut.map(\.json) }
        if !rawFanOut.isEmpty { json["raw_fan_out"] = rawFanOut.map(\.json) }
        if !launch.isEmpty { json["launch"] = launch.map(\.json) }
        if !footprint.isEmpty { json["footprint"] = footprint.map(\.json) }
        if let comparison { json["comparison"] = comparison.json }
        if let flood { json["flood"] = flood.json }
        if let multiNode { json["multinode"] = multiNode.json }
        if let queue { json["queue"] = queue.json }
        return json
    }

    /// Writes `json`; a figure that could not be measured (nan) is written as null.
    func write(json path: String) throws {
        func finite(_ value: Any) -> Any {
            switch value {
            case let number as Double: return number.isFinite ? number : NSNull()
            case let object as [String: Any]: return object.mapValues(finite)
            case let list as [Any]: return list.map(finite)
            default: return value
            }
        }
        let data = try JSONSerialization.data(withJSONObject: finite(json), options: [.prettyPrinted, .sortedKeys])
        try (data + Data("\n".utf8)).write(to: URL(fileURLWithPath: path))
    }

    var table: String {
        var out: [String] = []
        out.append("graceful-bench\(quick ? " --quick (smoke run: small N, short windows; not figures to quote)" : "")")
        out.append("machine: \(machine.processors) CPUs, \(machine.cpu), Linux \(machine.kernel), \(machine.memoryMegabytes) MB")
        out.append("         \(machine.swift); \(machine.python)")
        out.append("")
        if let limits, let stepCost, let comparison {
            out += parts(limits, stepCost, comparison)
        }
        if let flood { out += floodTable(flood) }
        if let multiNode { out += multiNodeTable(multiNode) }
        if let queue { out += queue.table }
        out.append("clean: \(launches - uncleanStops.count) of \(launches) launches of graceful run stopped with exit 0; \(leftoverProcesses) processes left behind")
        out += uncleanStops.map { "  not clean: " + $0 }
        return out.joined(separator: "\n")
    }

    /// The parts before the output flood, as they were before it was added.
    private func parts(_ limits: Limits, _ stepCost: StepCost, _ comparison: Comparison) -> [String] {
        var out: [String] = []
        out.append("physical limits, one way (µs)")
        out += tableColumns([
            ["", "p50", "p99", "max", "n"],
            row("pipe write → peer's read returns", limits.pipe),
            row("AF_UNIX socket write → peer's read returns", limits.socket),
            row("kill(SIGUSR1) → peer's sigtimedwait returns", limits.signal),
            row("rename → peer's inotify read returns", limits.inotify),
        ])
        out.append("")
        out.append("stop fan-out (ms from the trigger)")
        var fanRows = [[
            "ranks", "trigger", "trials", "doorbell p50", "p99", "every rank answered p50", "p99", "sampled answered p50", "p99",
            "stop step sent p99", "client reaction p50 (µs)", "raw p50", "raw p99",
        ]]
        for result in fanOut {
            let raw = rawFanOut.first { $0.ranks == result.ranks }
            fanRows.append([
                "\(result.ranks)", result.trigger.rawValue, "\(result.trials.count)",
                tableNumber(result.sampledRung.p50), tableNumber(result.sampledRung.p99),
                tableNumber(result.everyRankAnswered.p50), tableNumber(result.everyRankAnswered.p99),
                tableNumber(result.sampledInHand.p50), tableNumber(result.sampledInHand.p99), tableNumber(result.stopStepSent.p99),
                tableNumber(result.reaction.p50),
                raw.map { tableNumber($0.everyPeer.p50) } ?? "-", raw.map { tableNumber($0.everyPeer.p99) } ?? "-",
            ])
        }
        out += tableColumns(fanRows)
        out.append("  doorbell: the last sampled rank's thread in FUTEX_WAIT on the doorbell wakes (the request is in every rank's memory)")
        out.append("  every rank answered: the stop step reaches rank 0, sent first once the coordinator holds every answer (upper bound)")
        out.append("  sampled: rank 0 and 1 rank in N/8 counting back from the last, through a relay in the rank; answered = its client's reader answered")
        out.append("  stop step sent: the coordinator has sent stop_at to every rank")
        out.append("  client reaction: from the stop reaching a sampled rank to its client's answer, with the relay's 2 hops")
        out.append("  raw: this process writes the stop line to N sockets, N bare peers blocked in read (no coordinator, no client)")
        out.append("")
        out.append("detection (ms from the trigger to the coordinator writing its \"stop requested\" line)")
        var detectionRows = [["ranks", "trigger", "p50", "p99", "max"]]
        for result in fanOut {
            detectionRows.append(["\(result.ranks)", result.trigger.rawValue, tableNumber(result.detection.p50), tableNumber(result.detection.p99), tableNumber(result.detection.max)])
        }
        out += tableColumns(detectionRows)
        out.append("")
        out.append("per-step cost with nothing pending (ns per step)")
        out += tableColumns([
            ["GracefulRank shouldStop(step:) (Swift)", tableNumber(stepCost.swift)],
            ["graceful_exit should_stop(step) (Python)", tableNumber(stepCost.python)],
            ["  the same Python loop around nothing", tableNumber(stepCost.pythonEmptyLoop)],
            ["json.load(open(path))[\"GracefulExit\"] == 1 (Python, MindSpore's way)", tableNumber(stepCost.mindSporeStyle)],
        ])
        out.append("")
        out.append("coordinator footprint while nothing happens")
        var footprintRows = [["ranks", "rank output", "seconds", "VmRSS MB", "VmHWM MB", "CPU % (schedstat)", "CPU % (ticks)"]]
        for entry in footprint {
            footprintRows.append([
                "\(entry.ranks)", entry.logEvery.map { "1 line / \(tableNumber($0)) s each" } ?? "none", tableNumber(entry.seconds),
                tableNumber(Double(entry.residentKilobytes) / 1024), tableNumber(Double(entry.peakResidentKilobytes) / 1024),
                tableNumber(entry.cpuPercent), tableNumber(entry.cpuPercentFromTicks),
            ])
        }
        out += tableColumns(footprintRows)
        out.append("")
        out.append("launch (ms from starting graceful run to every rank's hello)")
        var launchRows = [["ranks", "launches", "sent p50", "sent max", "relayed p50", "relayed max"]]
        for entry in launch {
            launchRows.append([
                "\(entry.ranks)", "\(entry.helloSent.count)", tableNumber(entry.helloSent.p50), tableNumber(entry.helloSent.max),
                tableNumber(entry.helloRelayed.p50), tableNumber(entry.helloRelayed.max),
            ])
        }
        out += tableColumns(launchRows)
        out.append("")
        out.append("trivial 4-rank Python job")
        var comparisonRows = [["launcher", "start to exit (s)", "launcher VmHWM (MB)"]]
        comparisonRows.append(["graceful", tableNumber(comparison.graceful.trivialJobSeconds), tableNumber(Double(comparison.graceful.peakResidentKilobytes) / 1024)])
        if let torch = comparison.torchrun {
            comparisonRows.append(["torchrun", tableNumber(torch.trivialJobSeconds), tableNumber(Double(torch.peakResidentKilobytes) / 1024)])
        } else {
            comparisonRows.append(["torchrun", comparison.torchrunAbsence, ""])
        }
        out += tableColumns(comparisonRows)
        out.append("")
        return out
    }

    private func floodTable(_ flood: Flood) -> [String] {
        var out: [String] = []
        out.append("output flood: stop (ms from kill(SIGTERM) to graceful; rank 0 is `yes`, rank 1 sleeps; \(tableNumber(flood.floodSeconds)) s of flood first)")
        var stopRows = [[
            "console", "trials", "stop line p50", "p99", "yes rank ended p50", "p99", "graceful exited p50", "p99",
            "max VmRSS MB", "max VmHWM MB", "relayed MB/s p50", "console lines", "dropped",
        ]]
        for result in flood.stops {
            let drained = result.console == .drained
            stopRows.append([
                drained ? "drained here" : "stalled (unread pipe)", "\(result.trials.count)",
                tableNumber(result.stopLine.p50), tableNumber(result.stopLine.p99),
                tableNumber(result.rankEnded.p50), tableNumber(result.rankEnded.p99), tableNumber(result.exited.p50), tableNumber(result.exited.p99),
                tableNumber(Double(result.peakResidentKilobytes) / 1024), tableNumber(Double(result.peakHighWaterKilobytes) / 1024),
                tableNumber(result.relayedMegabytesPerSecond.p50),
                drained ? "\(result.consoleLines)" : "-", drained ? "\(result.droppedReported)" : "-",
            ])
        }
        out += tableColumns(stopRows)
        out.append("  stop line: the kernel's stamp of graceful's `stop requested` line (a stalled console cannot be read)")
        out.append("  yes rank ended: rank 0 seen a zombie or gone, polled every 0.2 ms; relayed: rank_0.log's bytes over the flood")
        out.append("  VmRSS sampled every 100 ms from the start of the flood to graceful's exit; dropped: rank lines graceful reported not shown")
        out.append("")
        out.append("output flood: relay throughput (one rank writing as fast as it can, console drained here)")
        var throughputRows = [[
            "line bytes", "lines", "MB", "wall s", "lines/s", "log MB/s", "console lines", "console MB/s", "dropped",
            "log complete", "max VmRSS MB", "cat wall s", "cat lines/s", "cat MB/s",
        ]]
        for entry in flood.throughput {
            throughputRows.append([
                "\(entry.lineBytes)", "\(entry.lines)", tableNumber(Double(entry.payloadBytes) / 1e6), tableNumber(entry.seconds),
                tableNumber(entry.linesPerSecond), tableNumber(entry.logMegabytesPerSecond), "\(entry.consoleLines)",
                tableNumber(entry.consoleMegabytesPerSecond), "\(entry.droppedReported)",
                entry.logLines == entry.lines ? "yes" : "\(entry.logLines) lines", tableNumber(Double(entry.peakResidentKilobytes) / 1024),
                tableNumber(entry.catSeconds), tableNumber(entry.catLinesPerSecond), tableNumber(entry.catMegabytesPerSecond),
            ])
        }
        out += tableColumns(throughputRows)
        out.append("  wall: from starting graceful run to its exit; console MB/s counts the `[rank0]: ` prefixes; cat: the same generator | cat, same drain")
        out.append("")
        return out
    }

    private func multiNodeTable(_ multiNode: MultiNode) -> [String] {
        var out: [String] = []
        let nodes = MultiNodeJob.nodes
        out.append("several nodes: \(nodes) coordinators on 127.0.0.1, trigger on node \(MultiNodeJob.triggerNode) (SIGUSR1 to its coordinator, or its control file); ms from the trigger")
        var stopRows = [[
            "ranks", "trigger", "trials", "clean", "leader heard p50", "p99", "every node's doorbell p50", "p99",
            "watched ranks' doorbell seen p50", "p99", "every rank answered p50", "p99", "stop step sent p99", "last confirmation p50", "leader committed p50", "p99",
            "every node committed p50", "p99",
        ]]
        for result in multiNode.fanOut {
            stopRows.append([
                "\(nodes)×\(result.ranksPerNode)", result.trigger.rawValue, "\(result.trials.count)", "\(result.cleanStops)",
                tableNumber(result.leaderHeard.p50), tableNumber(result.leaderHeard.p99),
                tableNumber(result.everyNodeRang.p50), tableNumber(result.everyNodeRang.p99),
                tableNumber(result.everyWatchedRung.p50), tableNumber(result.everyWatchedRung.p99),
                tableNumber(result.everyRankAnswered.p50), tableNumber(result.everyRankAnswered.p99), tableNumber(result.everyNodeStepSent.p99),
                tableNumber(result.lastConfirmed.p50), tableNumber(result.leaderCommitted.p50), tableNumber(result.leaderCommitted.p99),
                tableNumber(result.everyNodeCommitted.p50), tableNumber(result.everyNodeCommitted.p99),
            ])
        }
        out += tableColumns(stopRows)
        out.append("  leader heard: the leader's `stop requested` line (node \(MultiNodeJob.triggerNode) saw the trigger and told it)")
        out.append("  every node's doorbell: the last node's `stop requested` line, written after it stored the request in its ranks' doorbell")
        out.append("  watched ranks' doorbell seen: the last woken of the threads in FUTEX_WAIT on their node's doorbell, in local rank 0 and 1 in R/8 of each node")
        out.append("  every rank answered: the leader's `round N: step S` line (every node sent its position once all its ranks answered)")
        out.append("  stop step sent: the last node's `stop step` line; last confirmation: the last rank just before `checkpointed`")
        out.append("  leader committed: node 0's `committed step` line (after the record is durable); every node committed: the last node's")
        let raw = multiNode.rawLoopback
        out.append("  floor: a line written to each of 3 loopback TCP connections, 3 bare peers woken: every peer p50 \(tableNumber(raw.everyPeer.p50)), p99 \(tableNumber(raw.everyPeer.p99)) ms")
        out.append("")
        out.append("several nodes: commit (ms from the last rank's confirmation)")
        var commitRows = [["ranks", "trigger", "trials", "leader's record p50", "p99", "max", "every node heard committed p50", "p99", "max"]]
        for result in multiNode.fanOut {
            let leader = result.leaderCommittedAfterConfirmation
            let every = result.everyNodeCommittedAfterConfirmation
            commitRows.append([
                "\(nodes)×\(result.ranksPerNode)", result.trigger.rawValue, "\(result.trials.count)",
                tableNumber(leader.p50), tableNumber(leader.p99), tableNumber(leader.max), tableNumber(every.p50), tableNumber(every.p99), tableNumber(every.max),
            ])
        }
        out += tableColumns(commitRows)
        let floor = multiNode.durableReplace
        out.append("  floor: one durable replace here (write, fsync, rename, fsync the directory): p50 \(tableNumber(floor.p50)), p99 \(tableNumber(floor.p99)) ms;")
        out.append("  the leader does one for the record; each follower one for its copy before its `committed step` line")
        out.append("")
        out.append("several nodes: rendezvous (ms from starting the leader's graceful run; nodes 1-\(nodes - 1) right after it)")
        var rendezvousRows = [[
            "ranks", "launches", "all started max", "every node joined p50", "max", "every node launching p50", "max",
            "every hello sent p50", "max", "every ready relayed p50", "max", "launches with a follower's retry",
        ]]
        for entry in multiNode.rendezvous {
            rendezvousRows.append([
                "\(nodes)×\(entry.ranksPerNode)", "\(entry.trials.count)", tableNumber(entry.allStarted.max),
                tableNumber(entry.everyNodeJoined.p50), tableNumber(entry.everyNodeJoined.max),
                tableNumber(entry.everyNodeLaunching.p50), tableNumber(entry.everyNodeLaunching.max),
                tableNumber(entry.everyHelloSent.p50), tableNumber(entry.everyHelloSent.max),
                tableNumber(entry.everyReadyRelayed.p50), tableNumber(entry.everyReadyRelayed.max), "\(entry.launchesWithRetry)",
            ])
        }
        out += tableColumns(rendezvousRows)
        out.append("  a follower retries (0.1 s, then doubling) when it connects before the leader listens")
        out.append("")
        let interval = MultiNodeIdle.heartbeatInterval(timeout: multiNode.heartbeatTimeout)
        out.append("several nodes at rest: each coordinator's CPU while nothing happens (--heartbeat-timeout \(tableNumber(multiNode.heartbeatTimeout)) s: a heartbeat every \(tableNumber(interval)) s each way per link)")
        var idleRows = [["ranks", "seconds", "leader CPU % (schedstat)"] + (1..<nodes).map { "node \($0) %" } + ["leader VmRSS MB", "follower VmRSS MB max"]]
        for entry in multiNode.idle {
            idleRows.append(
                ["\(nodes)×\(entry.ranksPerNode)", tableNumber(entry.seconds), tableNumber(entry.leaderCpuPercent)]
                    + (1..<nodes).map { tableNumber(entry.cpuPercent(node: $0)) }
                    + [tableNumber(entry.residentMegabytes(node: 0)), tableNumber((1..<nodes).map { entry.residentMegabytes(node: $0) }.max() ?? .nan)])
        }
        out += tableColumns(idleRows)
        out.append("")
        return out
    }

    private func row(_ name: String, _ summary: Summary) -> [String] {
        [name, tableNumber(summary.p50), tableNumber(summary.p99), tableNumber(summary.max), "\(summary.count)"]
    }

}

/// Three significant digits, at least one decimal below 100; `-` for a figure not measured.
func tableNumber(_ value: Double) -> String {
    guard value.isFinite else { return "-" }
    if abs(value) >= 100 { return String(format: "%.0f", value) }
    if abs(value) >= 10 { return String(format: "%.1f", value) }
    if abs(value) >= 1 { return String(format: "%.2f", value) }
    return String(format: "%.3f", value)
}

/// Left-aligned first column, right-aligned numbers.
func tableColumns(_ rows: [[String]]) -> [String] {
    let count = rows.map(\.count).max() ?? 0
    let widths = (0..<count).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
    return rows.map { row in
        "  " + row.enumerated().map { column, cell in
            let pad = String(repeating: " ", count: widths[column] - cell.count)
            return column == 0 ? cell + pad : pad + cell
        }.joined(separator: "  ")
    }
}
