import Glibc

/// What one benchmark run measures, from the command line.
struct Options {
    static let usage = """
        usage: graceful-bench [--quick] [--json PATH] [--only flood|multinode|queue] [--ranks N,N,...]
                              [--footprint-ranks N,N,...] [--multinode-ranks N,N,...]
                              [--heartbeat-timeout S] [--idle-seconds S] [--python PATH]
                              [--torchrun PATH]

        Measures graceful's stop fan-out, control-file detection, per-step client cost, footprint and
        launch time, the coordinator under a rank flooding its output, and a job of 4 coordinators on
        this machine, next to the machine's own limits (docs/BENCHMARKS.md). Prints a table; --json
        writes the same figures. --quick: small N and short windows, a few seconds in all (a smoke
        test, not figures to quote).

          --only flood          only the output flood (stop latency and memory under flood, relay
                                throughput), with the machine's description
          --only multinode      only the several-nodes part (4 coordinators on 127.0.0.1: stop
                                fan-out and commit from a trigger on node 2, rendezvous, idle CPU),
                                with the machine's description
          --only queue          only graceful queue (trivial tasks per second with 1, 2 and 8
                                workers, claim latency, queue run's idle cost), with the machine's
                                description

          --ranks               rank counts for fan-out and launch (default 8,64,256,1024; quick 4)
          --footprint-ranks     rank counts for the idle footprint (default 64,1024; quick 4)
          --multinode-ranks     ranks per node of the 4-node job (default 8,64; quick 2)
          --heartbeat-timeout   passed to every graceful run of the 4-node job (default: not
                                passed, graceful's own default, 5 s: a heartbeat every 1 s)
          --idle-seconds        length of each idle footprint window, and of the 4-node job's
                                window at rest (default 10; quick 0.2)
          --python              the Python interpreter for the Python client (default python3 on PATH)
          --torchrun            torchrun to compare with (default /tmp/torchvenv/bin/torchrun if
                                present; skipped with --quick)
        """

    var quick = false
    var jsonPath: String?
    var ranks = [8, 64, 256, 1024]
    var footprintRanks = [64, 1024]
    /// Ranks per node of the several-nodes part (4 nodes).
    var multiNodeRanks = [8, 64]
    /// `--heartbeat-timeout` for the 4-node job's coordinators; nil: graceful's default.
    var heartbeatTimeout: Double?
    var idleSeconds = 10.0
    var python = "python3"
    var torchrun: String? = "/tmp/torchvenv/bin/torchrun"
    /// The one part to run (`--only`); nil: every part.
    var only: String?
    static let parts = ["flood", "multinode", "queue"]

    init(_ arguments: [String]) throws {
        var explicit: Set<String> = []
        var index = 0
        func value(_ name: String) throws -> String {
            index += 1
            guard index < arguments.count else { throw BenchError("\(name) needs a value") }
            return arguments[index]
        }
        func counts(_ name: String) throws -> [Int] {
            let text = try value(name)
            let list = text.split(separator: ",").compactMap { Int($0) }
            guard !list.isEmpty, list.count == text.split(separator: ",").count, list.allSatisfy({ $0 > 0 }) else {
                throw BenchError("\(name) takes positive whole numbers separated by commas")
            }
            return list
        }
        while index < arguments.count {
            let name = arguments[index]
            explicit.insert(name)
            switch name {
            case "--quick": quick = true
            case "--json": jsonPath = try value(name)
            case "--ranks": ranks = try counts(name)
            case "--footprint-ranks": footprintRanks = try counts(name)
            case "--multinode-ranks": multiNodeRanks = try counts(name)
            case "--heartbeat-timeout":
                guard let seconds = Double(try value(name)), seconds > 0 else { throw BenchError("--heartbeat-timeout takes seconds") }
                heartbeatTimeout = seconds
            case "--idle-seconds":
                guard let seconds = Double(try value(name)), seconds > 0 else { throw BenchError("--idle-seconds takes seconds") }
                idleSeconds = seconds
            case "--python": python = try value(name)
            case "--torchrun": torchrun = try value(name)
            case "--only":
                let part = try value(name)
                guard Options.parts.contains(part) else { throw BenchError("--only takes one of: \(Options.parts.joined(separator: ", "))") }
                only = part
            case "-h", "--help":
                print(Options.usage)
                exit(0)
            default: throw BenchError("unknown option \(name)\n\(Options.usage)")
            }
            index += 1
        }
        if quick {
            if !explicit.contains("--ranks") { ranks = [4] }
            if !explicit.contains("--footprint-ranks") { footprintRanks = [4] }
            if !explicit.contains("--multinode-ranks") { multiNodeRanks = [2] }
            if !explicit.contains("--idle-seconds") { idleSeconds = 0.2 }
            if !explicit.contains("--torchrun") { torchrun = nil }
        }
    }

    /// Launches per trigger at `ranks`: fewer for large N, where one launch takes seconds.
    func trials(ranks: Int) -> Int {
        quick ? 2 : max(4, min(20, 2048 / ranks))
    }

    /// Launches per trigger of the 4-node job at `ranksPerNode` per node: 20 at 4×8, 10 at 4×64 (the
    /// goal's size), 1 with --quick.
    func multiNodeTrials(ranksPerNode: Int) -> Int {
        quick ? 1 : max(10, min(20, 2048 / (4 * ranksPerNode)))
    }

    /// Rounds of the raw fan-out at `ranks` (its peers are started once for all rounds).
    func rawTrials(ranks: Int) -> Int { quick ? 3 : max(10, trials(ranks: ranks)) }

    /// Seconds between the last rank's `ready` and the trigger, so the launch has died down.
    func settleSeconds(ranks: Int) -> Double { quick ? 0.05 : 0.2 + Double(ranks) * 0.0003 }

    /// Seconds from the last `ready` to the start of a footprint window.
    var footprintSettleSeconds: Double { quick ? 0.1 : 1 }

    /// The ranks' step time: the longest a rank can take from the stop to its stop step is two steps.
    var stepTime: Double { quick ? 0.02 : 0.1 }

    /// Samples for each physical limit.
    var limitSamples: Int { quick ? 10 : 200 }

    /// Calls per timed loop of the step-cost measurement: Swift, Python, Python reading JSON.
    var stepCostCalls: (swift: Int, python: Int, json: Int) { quick ? (200_000, 50_000, 500) : (50_000_000, 5_000_000, 50_000) }

    /// Trivial jobs timed per launcher, and how long the ranks of the memory comparison sleep.
    var comparisonRuns: Int { quick ? 1 : 3 }
    var comparisonSleepSeconds: Double { quick ? 0.3 : 2 }

    /// Output flood: launches per console mode of the stop under flood, and seconds of flood before
    /// each stop.
    var floodTrials: Int { quick ? 2 : 5 }
    var floodSeconds: Double { quick ? 0.2 : 1 }

    /// Output flood, relay throughput: (bytes per line with its newline, lines) per shape.
    var floodThroughputShapes: [(lineBytes: Int, lines: Int)] {
        quick ? [(2, 500_000), (100, 20_000)] : [(2, 20_000_000), (100, 1_000_000)]
    }
}
