/// The two ways a stop is requested from outside.
enum StopTrigger: String, CaseIterable {
    case signal
    case controlFile = "control-file"

    /// How the coordinator names it in its `stop requested (...)` line.
    var reported: String { self == .signal ? "SIGTERM" : "control-file" }
}

/// One launch and one stop of N ranks, with every interval measured from the launch or the trigger.
///
/// - launch: from just before `graceful run` is started to the last rank's hello (sent, by the rank's
///   clock) and to the coordinator writing the last `ready` line (by then it holds every hello);
/// - detection: from the trigger to the coordinator writing its `stop requested` line (which it does
///   before sending the first stop message);
/// - sampled ranks (rank 0 and one in N/8 counting back from the last, through a relay thread in the
///   rank, see `graceful-bench-rank`): when the doorbell woke a thread waiting on it (the request is
///   in every rank's memory: the next boundary acts on it), when the stop reached the rank
///   (delivered), when its client answered (its reader has it; overstated by the relay's two socket
///   hops), and when the stop step reached it;
/// - every rank answered: when the stop step reached rank 0. The coordinator sends it to rank 0 first,
///   right after it holds every rank's answer, and no rank answers before it has the stop in hand: an
///   upper bound on the fan-out to every rank, exact for none, loose by one round trip at most;
/// - stop step sent: the coordinator's `stop step` line, written once it sent `stop_at` to every rank.
///
/// A stop is clean when graceful exits 0 (it committed the stop step); the figures count either way.
struct StopTrial {
    let ranks: Int
    let trigger: StopTrigger
    let exitCode: Int32
    /// The coordinator's first error line when the stop was not clean.
    let error: String?
    /// nan unless every rank recorded its hello.
    let helloSentMilliseconds: Double
    let helloRelayedMilliseconds: Double
    let detectionMilliseconds: Double
    /// nan when the stop failed before every sampled rank recorded its times.
    let everyRankAnsweredMilliseconds: Double
    let stopStepSentMilliseconds: Double
    let sampledInHandMilliseconds: [Double]
    /// Per sampled rank, when its doorbell waiter woke (nan where the doorbell never rang).
    let sampledRungMilliseconds: [Double]
    let sampledDeliveredMilliseconds: [Double]
    let sampledToldMilliseconds: [Double]
    /// Per sampled rank, from the stop reaching the rank to its client's answer: the client's own
    /// reaction, plus the relay's two hops.
    let sampledReactionMicroseconds: [Double]

    static func run(_ workspace: Workspace, _ options: Options, ranks: Int, trigger: StopTrigger, index: Int) throws -> StopTrial {
        let job = try BenchJob(workspace, name: "stop-\(ranks)-\(index)", ranks: ranks, stepTime: options.stepTime)
        try job.waitUntilReady()
        job.idle(seconds: options.settleSeconds(ranks: ranks))
        let triggered = trigger == .signal ? job.triggerSignal() : try job.triggerControlFile()
        let exitCode = try job.finish()
        let times = job.rankTimes()
        guard let detected = job.timeOfReport("stop requested (\(trigger.reported))") else {
            throw BenchError("\(ranks) ranks: no \"stop requested (\(trigger.reported))\" line")
        }
        guard let sent = job.timeOfReport("stop step ") else {
            throw BenchError("\(ranks) ranks: no \"stop step\" line (did every rank answer?)")
        }
        // Every relayed rank records its times once told the stop step; a trial lacking some (a rank
        // ended before that) gives no sampled figures rather than biased ones.
        let sampled = times.relayed.count == BenchJob.relayed(ranks: ranks) ? times.relayed : []
        guard !sampled.isEmpty || exitCode != 0 else {
            throw BenchError("\(ranks) ranks: \(times.relayed.count) relayed ranks timed the stop")
        }
        func since(_ instant: Int64) -> Double { (instant - triggered).milliseconds }
        return StopTrial(
            ranks: ranks, trigger: trigger, exitCode: exitCode, error: exitCode == 0 ? nil : job.firstError ?? "exit \(exitCode)",
            helloSentMilliseconds: times.helloSent.count == ranks ? (times.helloSent.values.max()! - job.started).milliseconds : .nan,
            helloRelayedMilliseconds: (job.lastReady - job.started).milliseconds,
            detectionMilliseconds: since(detected),
            everyRankAnsweredMilliseconds: sampled.first { $0.rank == 0 }.map { since($0.told) } ?? .nan,
            stopStepSentMilliseconds: since(sent),
            sampledInHandMilliseconds: sampled.map { since($0.answered) },
            sampledRungMilliseconds: sampled.map { $0.rung == 0 ? .nan : since($0.rung) },
            sampledDeliveredMilliseconds: sampled.map { since($0.delivered) },
            sampledToldMilliseconds: sampled.map { since($0.told) },
            sampledReactionMicroseconds: sampled.map { ($0.answered - $0.delivered).microseconds })
    }
}

/// All the stop trials at one rank count and trigger, summarised over trials (nearest-rank p99: of
/// fewer than 100 trials, the maximum).
struct FanOutResult {
    let ranks: Int
    let trigger: StopTrigger
    let trials: [StopTrial]

    var everyRankAnswered: Summary { Summary(trials.map(\.everyRankAnsweredMilliseconds)) }
    var stopStepSent: Summary { Summary(trials.map(\.stopStepSentMilliseconds)) }
    /// Per trial, the last sampled rank to have the stop in hand.
    var sampledInHand: Summary { Summary(trials.map { $0.sampledInHandMilliseconds.max() ?? .nan }) }
    /// Per trial, the last sampled rank woken by the doorbell (nan when one was not).
    var sampledRung: Summary {
        Summary(trials.map { $0.sampledRungMilliseconds.contains(where: \.isNaN) ? .nan : $0.sampledRungMilliseconds.max() ?? .nan })
    }
    var sampledDelivered: Summary { Summary(trials.map { $0.sampledDeliveredMilliseconds.max() ?? .nan }) }
    var sampledTold: Summary { Summary(trials.map { $0.sampledToldMilliseconds.max() ?? .nan }) }
    /// Every sampled rank of every trial.
    var perSampledRank: Summary { Summary(trials.flatMap(\.sampledInHandMilliseconds)) }
    var detection: Summary { Summary(trials.map(\.detectionMilliseconds)) }
    var reaction: Summary { Summary(trials.flatMap(\.sampledReactionMicroseconds)) }
    var cleanStops: Int { trials.filter { $0.exitCode == 0 }.count }

    var json: [String: Any] {
        [
            "ranks": ranks, "trigger": trigger.rawValue, "trials": trials.count,
            "sampled_ranks": BenchJob.relayed(ranks: ranks),
            "every_rank_answered_ms": everyRankAnswered.json, "stop_step_sent_ms": stopStepSent.json,
            "sampled_in_hand_ms": sampledInHand.json, "sampled_doorbell_ms": sampledRung.json, "sampled_delivered_ms": sampledDelivered.json,
            "sampled_stop_step_ms": sampledTold.json, "per_sampled_rank_in_hand_ms": perSampledRank.json,
            "detection_ms": detection.json, "sampled_reaction_us": reaction.json, "clean_stops": cleanStops,
        ]
    }
}

/// Launch times at one rank count, over every stop trial's launch (both triggers).
struct LaunchResult {
    let ranks: Int
    let helloSent: Summary
    let helloRelayed: Summary

    init(ranks: Int, trials: [StopTrial]) {
        self.ranks = ranks
        helloSent = Summary(trials.map(\.helloSentMilliseconds))
        helloRelayed = Summary(trials.map(\.helloRelayedMilliseconds))
    }

    var json: [String: Any] {
        ["ranks": ranks, "launches": helloSent.count, "every_hello_sent_ms": helloSent.json, "every_hello_relayed_ms": helloRelayed.json]
    }
}
