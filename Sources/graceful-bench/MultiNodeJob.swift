import Foundation
import Glibc

/// One multi-node job on this machine: `nodes` coordinators, one `graceful run` per simulated node,
/// all on 127.0.0.1 with node ranks 0 to 3, each with its own run directory and control file, and R
/// `graceful-bench-rank rank --watch-doorbell K` processes each: in each node, local rank 0 and one
/// in K = R/8 counting back from the last (the one its coordinator writes to last) have a thread
/// waiting on the node's doorbell (`watchedPerNode`: every rank up to 15 per node, 9 of 64), a
/// sample, as in `BenchJob`: each waiter is one more wake-up on the CPUs the coordinators need. Node 0 leads; its rendezvous port is
/// free when the job starts (the kernel's pick); the job's token is `GRACEFUL_JOB_TOKEN`, set by
/// `MultiNode.measure`.
///
/// The ranks keep to one step grid (`--epoch`), as the ranks of a data-parallel job do: a stop's
/// step is at most a step or two ahead of every rank, whenever the rank was launched.
///
/// The leader is started first, then nodes 1 to 3 at once after it (`started` and `allStarted` bound
/// the four starts); nobody waits for the leader to listen, as on a cluster whose nodes start together.
///
/// Every node runs the same command, as the leader requires, so every rank appends to one results
/// file, with its global rank: `hello RANK TIME` at launch, `confirmed RANK CONFIRMED RUNG` after its
/// stop (see `graceful-bench-rank`). Readiness is confirmed as in `BenchJob`: once every coordinator
/// relayed the `ready` line of each of its ranks, it holds every hello.
final class MultiNodeJob {
    static let nodes = 4
    /// The follower whose control file or coordinator gets the trigger.
    static let triggerNode = 2

    let ranksPerNode: Int
    var ranks: Int { Self.nodes * ranksPerNode }
    /// Ranks per node with a doorbell waiter (the same sample as `BenchJob`'s relayed ranks).
    var watchedPerNode: Int { BenchJob.relayed(ranks: ranksPerNode) }
    let directory: String
    let results: String
    let controlFiles: [String]
    let masterPort: Int
    /// Just before the leader's `graceful run` was started, and just after the last one was.
    let started: Int64
    let allStarted: Int64
    /// By node rank.
    let coordinators: [Child]
    private(set) var lastReady: Int64 = 0
    private var readyCount = 0
    /// Whether every rank of every node was ready.
    var allReady: Bool { readyCount == ranks }
    private let workspace: Workspace

    /// `heartbeatTimeout`: passed as `--heartbeat-timeout` to every node; nil: graceful's default.
    init(_ workspace: Workspace, name: String, ranksPerNode: Int, stepTime: Double, heartbeatTimeout: Double?) throws {
        self.workspace = workspace
        self.ranksPerNode = ranksPerNode
        directory = try workspace.directory(name)
        results = directory + "/results.txt"
        masterPort = try Self.freeMasterPort()
        var controlFiles: [String] = []
        var commands: [[String]] = []
        // One step grid for every rank of the job (`graceful-bench-rank rank --epoch`).
        let epoch = monotonicNow()
        for node in 0..<Self.nodes {
            let nodeDirectory = try workspace.directory(name + "/node\(node)")
            controlFiles.append(nodeDirectory + "/graceful_exit.json")
            commands.append(
                [
                    "run", "--nnodes", "\(Self.nodes)", "--node-rank", "\(node)", "--master-addr", "127.0.0.1",
                    "--master-port", "\(masterPort)", "--rdzv-timeout", "60", "-n", "\(ranksPerNode)",
                    "--run-dir", nodeDirectory + "/run", "--control-file", controlFiles[node], "--grace", "120",
                ] + (heartbeatTimeout.map { ["--heartbeat-timeout", "\($0)"] } ?? []) + [
                    "--", workspace.rank, "rank", "--results", results, "--step-time", "\(stepTime)", "--epoch", "\(epoch)",
                    "--watch-doorbell", "\(BenchJob.relayEvery(ranks: ranksPerNode))",
                ])
        }
        self.controlFiles = controlFiles
        var children: [Child] = []
        // A child already started is killed and reaped by its deinit if a later one cannot start.
        started = monotonicNow()
        for arguments in commands { children.append(try Child(workspace.graceful, arguments)) }
        allStarted = monotonicNow()
        coordinators = children
    }

    deinit {
        for coordinator in coordinators { coordinator.killNow() }
        workspace.remove(directory)
    }

    /// A master port P whose P + 1, where the leader listens, is free now: the port the kernel picks
    /// for a socket bound to port 0, less one.
    static func freeMasterPort() throws -> Int {
        let (fd, address) = try RawFanOut.boundLoopbackSocket()
        close(fd)
        let port = Int(UInt16(bigEndian: address.sin_port))
        guard port > 1024 else { throw BenchError("no free port on 127.0.0.1") }
        return port - 1
    }

    /// A coordinator exited before every rank of the job was ready: the job failed at its launch
    /// (a node lost, the rendezvous refused); `finish` collects the others' exits.
    struct EndedEarly: Error {}

    /// Waits for every rank's `ready` line on every node: 30 s plus 50 ms per rank of the job. Throws
    /// `EndedEarly` when a coordinator exits first.
    func waitUntilReady() throws {
        let deadline = started + Int64((30 + Double(ranks) * 0.05) * 1e9)
        while readyCount < ranks {
            if coordinators.contains(where: { $0.wait(until: 0) != nil }) { throw EndedEarly() }
            guard monotonicNow() < deadline else {
                throw BenchError("\(description): only \(readyCount) ready before the deadline:\n\(tail())")
            }
            Child.pump(coordinators, milliseconds: 50)
            for coordinator in coordinators {
                for line in coordinator.newLines() where !line.standardError && line.text.contains("]: ready ") {
                    readyCount += 1
                    lastReady = max(lastReady, line.time)
                }
            }
        }
    }

    /// Keeps reading every coordinator's output for `seconds`.
    func idle(seconds: Double) {
        let deadline = monotonicNow() + Int64(seconds * 1e9)
        while true {
            let left = deadline - monotonicNow()
            guard left > 0 else { return }
            Child.pump(coordinators, milliseconds: Int32(min(left / 1_000_000 + 1, 1000)))
        }
    }

    /// SIGUSR1 to the trigger node's coordinator; returns the moment just before it was sent.
    func triggerSignal() -> Int64 {
        let time = monotonicNow()
        kill(coordinators[Self.triggerNode].pid, SIGUSR1)
        return time
    }

    /// Renames `{"GracefulExit": 1}` onto the trigger node's control file; returns the moment just before.
    func triggerControlFile() throws -> Int64 {
        let target = controlFiles[Self.triggerNode]
        let staged = target + ".new"
        try Data("{\"GracefulExit\": 1}\n".utf8).write(to: URL(fileURLWithPath: staged))
        let time = monotonicNow()
        guard rename(staged, target) == 0 else { throw BenchError("rename onto \(target) failed") }
        return time
    }

    /// Waits for every coordinator to exit (60 s at most) and returns their exit codes by node.
    func finish() throws -> [Int32] {
        let deadline = monotonicNow() + 60_000_000_000
        while coordinators.contains(where: { $0.wait(until: 0) == nil }) {
            guard monotonicNow() < deadline else {
                throw BenchError("\(description): not every graceful exited within 60 s of the stop:\n\(tail())")
            }
            Child.pump(coordinators, milliseconds: 20)
        }
        return coordinators.map { $0.exitStatus! }
    }

    /// When node `node`'s coordinator wrote its first stderr line that starts with `text` after its
    /// `graceful[node K]: ` prefix.
    func timeOfReport(node: Int, _ text: String) -> Int64? {
        let prefix = "graceful[node \(node)]: "
        return coordinators[node].lines.first { line in
            line.standardError && line.text.hasPrefix(prefix) && line.text.dropFirst(prefix.count).hasPrefix(text)
        }?.time
    }

    /// Whether node `node` wrote a line that starts with `text` after its prefix.
    func reported(node: Int, _ text: String) -> Bool { timeOfReport(node: node, text) != nil }

    /// The first error line of any node, to say why a stop was not clean.
    var firstError: String? {
        for (node, coordinator) in coordinators.enumerated() {
            if let line = coordinator.lines.first(where: { $0.standardError && $0.text.contains("error:") }) {
                return "node \(node): \(line.text)"
            }
        }
        return nil
    }

    /// The results file as it stands.
    func rankTimes() -> RankTimes { RankTimes(resultsFile: results) }

    var description: String { "\(Self.nodes)×\(ranksPerNode) ranks" }

    private func tail() -> String {
        coordinators.enumerated().map { node, coordinator in
            "  node \(node):\n" + coordinator.lines.suffix(8).map { "  | " + $0.text }.joined(separator: "\n")
        }.joined(separator: "\n")
    }
}
