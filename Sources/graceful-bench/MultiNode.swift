import Foundation
import Glibc

/// One launch and one stop of a 4-node job (`MultiNodeJob`), the trigger on follower node 2: SIGUSR1
/// to its coordinator, or `{"GracefulExit": 1}` renamed onto its control file. Every time is
/// CLOCK_MONOTONIC: a coordinator's line is the kernel's stamp of its write (as in `StopTrial`), a
/// rank's time its own reading.
///
/// Rendezvous, ms from just before the leader's `graceful run` was started (nodes 1-3 right after):
/// - every node joined: the leader's `leader: every node joined` line (it sends `launch` next);
/// - every node launching: the last node's `run …: launching N rank(s)` line;
/// - every hello sent: the last rank's hello, by the rank's clock; every ready relayed: the last
///   `ready` line any coordinator relayed (by then each holds every hello of its ranks).
///
/// Stop, ms from the trigger:
/// - leader heard: the leader's `leader: stop requested` line: node 2 saw the trigger and told the
///   leader over its link (node 2 writes no line of its own for it);
/// - every node's doorbell: the last node's `stop requested` line. Each coordinator stores the
///   request in its doorbell (the page every rank of the node maps) before it writes that line: from
///   then on, every rank of every node has the request in memory, and its next `shouldStop` acts on it;
/// - every watched rank's doorbell seen: of the ranks with a thread blocked on their node's doorbell
///   (FUTEX_WAIT; local rank 0 and one in R/8 counting back from the last: every rank up to 15 per
///   node, 9 of 64: `MultiNodeJob`), the last one woken: the request observed in those ranks, plus
///   one futex wake-up each;
/// - every rank answered: the leader's `leader: round N: step S` line. It needs every node's
///   position, which a node sends once every one of its ranks' clients answered the `stop` on its
///   channel: the channel path to every rank, plus each node's answer's way to the leader;
/// - stop step sent: the last node's `stop step` line (it sent `stop_at` to each of its ranks);
/// - last confirmation: the last rank's reading just before it called `checkpointed`;
/// - leader committed: node 0's `committed step` line. The leader writes it after the job's record
///   is durable (written, fsynced, renamed, directory fsynced) and `committed` was sent to the
///   other nodes: an upper bound on the record on disk, loose by those sends;
/// - every node committed: the last node's `committed step` line: every node heard `committed`.
///
/// Clean: every node exited 0 and wrote `committed step`. A job that ended before every rank was
/// ready (a coordinator exited: a node judged lost during the launch, say) is a trial that is not
/// clean, with no stop figures, rather than the end of the benchmark.
struct MultiNodeTrial {
    let ranksPerNode: Int
    let trigger: StopTrigger
    let exitCodes: [Int32]
    /// One per node that did not stop cleanly: why.
    let nodeErrors: [String]
    var error: String? { nodeErrors.first }

    let allStartedMilliseconds: Double
    let everyNodeJoinedMilliseconds: Double
    let everyNodeLaunchingMilliseconds: Double
    let everyHelloSentMilliseconds: Double
    let everyReadyRelayedMilliseconds: Double
    /// Followers that found the leader not yet listening and retried (their `waiting for the leader` line).
    let followersRetried: Int

    let leaderHeardMilliseconds: Double
    let everyNodeRangMilliseconds: Double
    /// The first node's `stop requested` line: with `everyNodeRang`, the spread of the leader's
    /// `stop` over the nodes.
    let firstNodeRangMilliseconds: Double
    let everyWatchedRungMilliseconds: Double
    /// Per watched rank, its doorbell waiter's wake-up.
    let watchedRungMilliseconds: [Double]
    let everyRankAnsweredMilliseconds: Double
    let everyNodeStepSentMilliseconds: Double
    let lastConfirmedMilliseconds: Double
    let leaderCommittedMilliseconds: Double
    let everyNodeCommittedMilliseconds: Double

    var leaderCommittedAfterConfirmation: Double { leaderCommittedMilliseconds - lastConfirmedMilliseconds }
    var everyNodeCommittedAfterConfirmation: Double { everyNodeCommittedMilliseconds - lastConfirmedMilliseconds }

    static func run(_ workspace: Workspace, _ options: Options, ranksPerNode: Int, trigger: StopTrigger, index: Int) throws -> MultiNodeTrial {
        let job = try MultiNodeJob(workspace, name: "multinode-\(ranksPerNode)-\(index)", ranksPerNode: ranksPerNode, stepTime: options.stepTime,
            heartbeatTimeout: options.heartbeatTimeout)
        var triggered: Int64?
        do {
            try job.waitUntilReady()
            job.idle(seconds: options.settleSeconds(ranks: job.ranks))
            triggered = trigger == .signal ? job.triggerSignal() : try job.triggerControlFile()
        } catch is MultiNodeJob.EndedEarly {}
        let exitCodes = try job.finish()
        let times = job.rankTimes()
        let nodes = 0..<MultiNodeJob.nodes
        var nodeErrors = MultiNode.errors(job, exitCodes)
        if triggered == nil && nodeErrors.isEmpty { nodeErrors = ["every node: exit 0 before every rank was ready"] }

        func since(_ instant: Int64?) -> Double {
            guard let instant, let triggered else { return .nan }
            return (instant - triggered).milliseconds
        }
        func fromStart(_ instant: Int64?) -> Double { instant.map { ($0 - job.started).milliseconds } ?? .nan }
        /// The last node's line starting with `text`; nil unless every node wrote one.
        func everyNode(_ text: String) -> Int64? {
            let times = nodes.compactMap { job.timeOfReport(node: $0, text) }
            return times.count == MultiNodeJob.nodes ? times.max() : nil
        }
        let expected = trigger == .signal ? "SIGUSR1" : "control-file"
        let leaderHeard = job.timeOfReport(node: 0, "leader: stop requested (\(expected))")
        let answered = job.timeOfReport(node: 0, "leader: round ")
        let confirmed = times.confirmed.count == job.ranks ? times.confirmed.values.map(\.confirmed).max() : nil
        let rung = times.confirmed.values.map(\.rung).filter { $0 != 0 }
        if nodeErrors.isEmpty {
            guard leaderHeard != nil, answered != nil else {
                throw BenchError("\(job.description): a clean stop without the leader's \"stop requested (\(expected))\" or \"round\" line")
            }
            guard confirmed != nil else {
                throw BenchError("\(job.description): a clean stop, but \(times.confirmed.count) of \(job.ranks) ranks recorded their confirmation")
            }
        }
        return MultiNodeTrial(
            ranksPerNode: ranksPerNode, trigger: trigger, exitCodes: exitCodes, nodeErrors: nodeErrors,
            allStartedMilliseconds: (job.allStarted - job.started).milliseconds,
            everyNodeJoinedMilliseconds: fromStart(job.timeOfReport(node: 0, "leader: every node joined")),
            everyNodeLaunchingMilliseconds: fromStart(everyNode("run ")),
            everyHelloSentMilliseconds: times.helloSent.count == job.ranks ? fromStart(times.helloSent.values.max()) : .nan,
            everyReadyRelayedMilliseconds: job.allReady ? fromStart(job.lastReady) : .nan,
            followersRetried: nodes.dropFirst().filter { job.reported(node: $0, "waiting for the leader at") }.count,
            leaderHeardMilliseconds: since(leaderHeard),
            everyNodeRangMilliseconds: since(everyNode("stop requested (\(expected))")),
            firstNodeRangMilliseconds: since(nodes.compactMap { job.timeOfReport(node: $0, "stop requested (\(expected))") }.min()),
            everyWatchedRungMilliseconds: rung.count == MultiNodeJob.nodes * job.watchedPerNode ? since(rung.max()) : .nan,
            watchedRungMilliseconds: rung.map { since($0) },
            everyRankAnsweredMilliseconds: since(answered),
            everyNodeStepSentMilliseconds: since(everyNode("stop step ")),
            lastConfirmedMilliseconds: since(confirmed),
            leaderCommittedMilliseconds: since(job.timeOfReport(node: 0, "committed step ")),
            everyNodeCommittedMilliseconds: since(everyNode("committed step ")))
    }
}

/// The stop trials at one size and trigger, over trials (nearest-rank p99: of fewer than 100, the maximum).
struct MultiNodeFanOut {
    let ranksPerNode: Int
    let trigger: StopTrigger
    let trials: [MultiNodeTrial]

    var leaderHeard: Summary { Summary(trials.map(\.leaderHeardMilliseconds)) }
    var everyNodeRang: Summary { Summary(trials.map(\.everyNodeRangMilliseconds)) }
    var firstNodeRang: Summary { Summary(trials.map(\.firstNodeRangMilliseconds)) }
    var everyWatchedRung: Summary { Summary(trials.map(\.everyWatchedRungMilliseconds)) }
    /// Every watched rank of every trial.
    var perWatchedRung: Summary { Summary(trials.flatMap(\.watchedRungMilliseconds)) }
    var everyRankAnswered: Summary { Summary(trials.map(\.everyRankAnsweredMilliseconds)) }
    var everyNodeStepSent: Summary { Summary(trials.map(\.everyNodeStepSentMilliseconds)) }
    var lastConfirmed: Summary { Summary(trials.map(\.lastConfirmedMilliseconds)) }
    var leaderCommitted: Summary { Summary(trials.map(\.leaderCommittedMilliseconds)) }
    var everyNodeCommitted: Summary { Summary(trials.map(\.everyNodeCommittedMilliseconds)) }
    var leaderCommittedAfterConfirmation: Summary { Summary(trials.map(\.leaderCommittedAfterConfirmation)) }
    var everyNodeCommittedAfterConfirmation: Summary { Summary(trials.map(\.everyNodeCommittedAfterConfirmation)) }
    var cleanStops: Int { trials.filter(\.nodeErrors.isEmpty).count }

    var json: [String: Any] {
        [
            "ranks_per_node": ranksPerNode, "ranks": ranksPerNode * MultiNodeJob.nodes, "trigger": trigger.rawValue,
            "trials": trials.count, "clean_stops": cleanStops,
            "leader_heard_ms": leaderHeard.json, "every_node_doorbell_ms": everyNodeRang.json,
            "first_node_doorbell_ms": firstNodeRang.json,
            "watched_ranks_per_node": BenchJob.relayed(ranks: ranksPerNode),
            "watched_doorbell_seen_ms": everyWatchedRung.json, "per_watched_rank_doorbell_seen_ms": perWatchedRung.json,
            "every_rank_answered_ms": everyRankAnswered.json, "every_node_stop_step_sent_ms": everyNodeStepSent.json,
            "last_confirmation_ms": lastConfirmed.json, "leader_committed_ms": leaderCommitted.json,
            "every_node_committed_ms": everyNodeCommitted.json,
            "leader_committed_after_last_confirmation_ms": leaderCommittedAfterConfirmation.json,
            "every_node_committed_after_last_confirmation_ms": everyNodeCommittedAfterConfirmation.json,
        ]
    }
}

/// The rendezvous at one size, over every stop trial's launch (both triggers).
struct MultiNodeRendezvous {
    let ranksPerNode: Int
    let trials: [MultiNodeTrial]

    var allStarted: Summary { Summary(trials.map(\.allStartedMilliseconds)) }
    var everyNodeJoined: Summary { Summary(trials.map(\.everyNodeJoinedMilliseconds)) }
    var everyNodeLaunching: Summary { Summary(trials.map(\.everyNodeLaunchingMilliseconds)) }
    var everyHelloSent: Summary { Summary(trials.map(\.everyHelloSentMilliseconds)) }
    var everyReadyRelayed: Summary { Summary(trials.map(\.everyReadyRelayedMilliseconds)) }
    /// Launches in which at least one follower had to retry its connection to the leader.
    var launchesWithRetry: Int { trials.filter { $0.followersRetried > 0 }.count }

    var json: [String: Any] {
        [
            "ranks_per_node": ranksPerNode, "ranks": ranksPerNode * MultiNodeJob.nodes, "launches": trials.count,
            "all_started_ms": allStarted.json, "every_node_joined_ms": everyNodeJoined.json,
            "every_node_launching_ms": everyNodeLaunching.json, "every_hello_sent_ms": everyHelloSent.json,
            "every_ready_relayed_ms": everyReadyRelayed.json, "launches_with_follower_retry": launchesWithRetry,
        ]
    }
}

/// The four coordinators at rest: after every rank's `ready` and `Options.footprintSettleSeconds`,
/// each coordinator's CPU time over `Options.idleSeconds` while the ranks train (sleeps) and print
/// nothing: its heartbeats (one frame each way per link every `--heartbeat-timeout` / 5, 1 s by
/// default) and whatever else it does when nothing happens (a single-node coordinator: 0.003%). As `Footprint`: schedstat (ns) and ticks.
/// The window ends with a stop from node 2's control file, which must be clean too.
struct MultiNodeIdle {
    /// graceful's default `--heartbeat-timeout`.
    static let defaultHeartbeatTimeout = 5.0

    /// A link's heartbeat period: a fifth of the timeout, 50 ms at least (`ClusterSession`).
    static func heartbeatInterval(timeout: Double?) -> Double { max(0.05, (timeout ?? defaultHeartbeatTimeout) / 5) }

    let ranksPerNode: Int
    let heartbeatInterval: Double
    let seconds: Double
    let exitCodes: [Int32]
    let nodeErrors: [String]
    /// By node rank (0: the leader); nil when the job ended before the window (`nodeErrors` says why).
    let cpuNanoseconds: [Int64]?
    let cpuTicks: [Int]?
    let residentKilobytes: [Int]?

    func cpuPercent(node: Int) -> Double { cpuNanoseconds.map { Double($0[node]) / 1e9 / seconds * 100 } ?? .nan }
    func cpuMilliseconds(node: Int) -> Double { cpuNanoseconds.map { Double($0[node]) / 1e6 } ?? .nan }
    func residentMegabytes(node: Int) -> Double { residentKilobytes.map { Double($0[node]) / 1024 } ?? .nan }
    var leaderCpuPercent: Double { cpuPercent(node: 0) }
    /// The busiest follower.
    var followerCpuPercent: Double { (1..<MultiNodeJob.nodes).map { cpuPercent(node: $0) }.max() ?? .nan }

    var json: [String: Any] {
        [
            "ranks_per_node": ranksPerNode, "ranks": ranksPerNode * MultiNodeJob.nodes, "seconds": seconds,
            "heartbeat_interval_s": heartbeatInterval,
            "leader_cpu_percent": leaderCpuPercent, "follower_cpu_percent_max": followerCpuPercent,
            "nodes": (0..<MultiNodeJob.nodes).map { node -> [String: Any] in
                [
                    "node": node, "cpu_ms": cpuMilliseconds(node: node), "cpu_percent": cpuPercent(node: node),
                    "cpu_ticks": cpuTicks.map { $0[node] as Any } ?? NSNull(),
                    "vm_rss_kb": residentKilobytes.map { $0[node] as Any } ?? NSNull(), "exit_code": exitCodes[node],
                ]
            },
        ]
    }

    static func measure(_ workspace: Workspace, _ options: Options, ranksPerNode: Int) throws -> MultiNodeIdle {
        let seconds = options.idleSeconds
        let job = try MultiNodeJob(workspace, name: "multinode-idle-\(ranksPerNode)", ranksPerNode: ranksPerNode, stepTime: options.stepTime,
            heartbeatTimeout: options.heartbeatTimeout)
        var samples: (before: [ProcessSample], after: [ProcessSample])?
        do {
            try job.waitUntilReady()
            job.idle(seconds: options.footprintSettleSeconds)
            let before = try job.coordinators.map { try ProcessSample(pid: $0.pid) }
            job.idle(seconds: seconds)
            samples = (before, try job.coordinators.map { try ProcessSample(pid: $0.pid) })
            _ = try job.triggerControlFile()
        } catch is MultiNodeJob.EndedEarly {}
        let exitCodes = try job.finish()
        var nodeErrors = MultiNode.errors(job, exitCodes)
        if samples == nil && nodeErrors.isEmpty { nodeErrors = ["every node: exit 0 before every rank was ready"] }
        return MultiNodeIdle(
            ranksPerNode: ranksPerNode, heartbeatInterval: heartbeatInterval(timeout: options.heartbeatTimeout), seconds: seconds, exitCodes: exitCodes, nodeErrors: nodeErrors,
            cpuNanoseconds: samples.map { zip($0.before, $0.after).map { $1.cpuNanoseconds - $0.cpuNanoseconds } },
            cpuTicks: samples.map { zip($0.before, $0.after).map { $1.cpuTicks - $0.cpuTicks } },
            residentKilobytes: samples.map { $0.after.map(\.residentKilobytes) })
    }
}

/// The multi-node part: 4 coordinators on this machine (`MultiNodeJob`), at each `--multinode-ranks`
/// size: stop trials alternating the two triggers on node 2, their launches' rendezvous, and the
/// coordinators at rest.
struct MultiNode {
    let fanOut: [MultiNodeFanOut]
    let rendezvous: [MultiNodeRendezvous]
    let idle: [MultiNodeIdle]
    /// The floor under a commit: one durable replacement of a small file (`durableReplace`), ms.
    let durableReplace: Summary
    /// Every coordinator's `--heartbeat-timeout`.
    let heartbeatTimeout: Double
    /// The floor under the leader's `stop` to the three followers: one line written to each of 3
    /// loopback TCP connections, 3 bare peers woken (`RawFanOut`, loopback).
    let rawLoopback: RawFanOut

    /// Launches of `graceful run`: four per job.
    var launches: Int { (fanOut.map(\.trials.count).reduce(0, +) + idle.count) * MultiNodeJob.nodes }

    /// One line per launch that did not stop cleanly.
    var errors: [String] {
        fanOut.flatMap(\.trials).flatMap { trial in
            trial.nodeErrors.map { "\(MultiNodeJob.nodes)×\(trial.ranksPerNode) ranks (\(trial.trigger.rawValue) on node \(MultiNodeJob.triggerNode)), \($0)" }
        } + idle.flatMap { entry in entry.nodeErrors.map { "\(MultiNodeJob.nodes)×\(entry.ranksPerNode) ranks (at rest), \($0)" } }
    }

    var json: [String: Any] {
        [
            "nodes": MultiNodeJob.nodes, "trigger_node": MultiNodeJob.triggerNode,
            "heartbeat_timeout_s": heartbeatTimeout,
            "fan_out": fanOut.map(\.json), "rendezvous": rendezvous.map(\.json), "idle": idle.map(\.json),
            "durable_replace_ms": durableReplace.json,
            "raw_loopback_fan_out": rawLoopback.json,
        ]
    }

    /// Why each node of a finished job did not stop cleanly: "node K: ..." per node that did not exit
    /// 0, or that exited 0 without writing `committed step`.
    static func errors(_ job: MultiNodeJob, _ exitCodes: [Int32]) -> [String] {
        (0..<MultiNodeJob.nodes).compactMap { node in
            if exitCodes[node] != 0 {
                let line = job.coordinators[node].lines.first { $0.standardError && $0.text.contains("error:") }?.text
                return "node \(node): exit \(exitCodes[node])" + (line.map { ": \($0)" } ?? "")
            }
            return job.reported(node: node, "committed step ") ? nil : "node \(node): exit 0 without a \"committed step\" line"
        }
    }

    /// Replaces a 2 KiB file durably `samples` times, 5 ms apart, the way the coordinator commits
    /// (`AtomicFile`: write a temporary, fsync it, rename it over the file, fsync the directory), in a
    /// directory of this run's scratch space, on the run directories' file system: what the leader's
    /// record costs at least, and each follower's copy of it again.
    static func durableReplace(_ workspace: Workspace, samples: Int) throws -> Summary {
        let directory = try workspace.directory("durable-replace")
        defer { workspace.remove(directory) }
        let path = directory + "/last_checkpoint.json"
        let bytes = [UInt8](repeating: UInt8(ascii: "x"), count: 2048)
        var times: [Double] = []
        for _ in 0..<samples {
            let start = monotonicNow()
            let fd = open(path + ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw BenchError("cannot create \(path).tmp") }
            let written = writeAll(fd, bytes) && fsync(fd) == 0
            close(fd)
            guard written, rename(path + ".tmp", path) == 0 else { throw BenchError("cannot replace \(path) durably") }
            let parent = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard parent >= 0 else { throw BenchError("cannot open \(directory)") }
            let synced = fsync(parent) == 0
            close(parent)
            guard synced else { throw BenchError("fsync \(directory) failed") }
            times.append((monotonicNow() - start).milliseconds)
            sleep(seconds: 0.005)
        }
        return Summary(times)
    }

    static func measure(_ workspace: Workspace, _ options: Options) throws -> MultiNode {
        // Every node needs the job's secret; one per benchmark run, in the environment the
        // coordinators inherit.
        if getenv("GRACEFUL_JOB_TOKEN") == nil {
            var generator = SystemRandomNumberGenerator()
            let token = (0..<4).map { _ in String(generator.next() as UInt64, radix: 16) }.joined()
            setenv("GRACEFUL_JOB_TOKEN", token, 1)
        }
        var fanOut: [MultiNodeFanOut] = []
        var rendezvous: [MultiNodeRendezvous] = []
        var idle: [MultiNodeIdle] = []
        for ranksPerNode in options.multiNodeRanks {
            let trials = options.multiNodeTrials(ranksPerNode: ranksPerNode)
            var done: [StopTrigger: [MultiNodeTrial]] = [:]
            for index in 0..<(2 * trials) {
                let trigger: StopTrigger = index % 2 == 0 ? .signal : .controlFile
                progress("several nodes, \(MultiNodeJob.nodes)×\(ranksPerNode) ranks, launch \(index + 1) of \(2 * trials) (\(trigger == .signal ? "SIGUSR1" : "control file") on node \(MultiNodeJob.triggerNode))")
                let trial = try MultiNodeTrial.run(workspace, options, ranksPerNode: ranksPerNode, trigger: trigger, index: index)
                if let error = trial.error { progress("not clean: \(error)") }
                done[trigger, default: []].append(trial)
            }
            for trigger in StopTrigger.allCases {
                fanOut.append(MultiNodeFanOut(ranksPerNode: ranksPerNode, trigger: trigger, trials: done[trigger] ?? []))
            }
            rendezvous.append(MultiNodeRendezvous(ranksPerNode: ranksPerNode, trials: done.values.flatMap { $0 }))
            progress("several nodes at rest, \(MultiNodeJob.nodes)×\(ranksPerNode) ranks, \(options.idleSeconds) s")
            let entry = try MultiNodeIdle.measure(workspace, options, ranksPerNode: ranksPerNode)
            if let error = entry.nodeErrors.first { progress("not clean: \(error)") }
            idle.append(entry)
        }
        progress("several nodes: the floor under a commit, one durable replace")
        let durableReplace = try durableReplace(workspace, samples: options.quick ? 5 : 50)
        progress("several nodes: the floor under the leader's stop, a line to 3 loopback TCP peers")
        let rawLoopback = try RawFanOut.measure(workspace, ranks: MultiNodeJob.nodes - 1, trials: options.quick ? 5 : 50, loopback: true)
        return MultiNode(
            fanOut: fanOut, rendezvous: rendezvous, idle: idle, durableReplace: durableReplace,
            heartbeatTimeout: options.heartbeatTimeout ?? MultiNodeIdle.defaultHeartbeatTimeout, rawLoopback: rawLoopback)
    }
}
