import Foundation
import Glibc

/// One `graceful run` of N `graceful-bench-rank rank` processes in a fresh directory of its own (run
/// directory, control file, results file), so no launch resumes from or collides with another. The
/// ranks train in steps of `stepTime` (sleeps) and print nothing unless asked to log.
///
/// Readiness is confirmed through the coordinator itself: each rank sends hello on its channel before
/// it prints `ready`, and epoll reports the channel, readable first, no later than the pipe; so once
/// the coordinator relayed every `ready` line it has read every hello, every rank counts as speaking
/// the protocol, and a stop reaches all of them as a message.
final class BenchJob {

    /// One rank in this many has a relay (see `graceful-bench-rank`), counting back from the last,
    /// and rank 0: 9 relayed ranks at most, so the relays' own wake-ups stay a small part of a stop.
    static func relayEvery(ranks: Int) -> Int { max(1, ranks / 8) }

    /// How many ranks have a relay.
    static func relayed(ranks: Int) -> Int {
        let every = relayEvery(ranks: ranks)
        let fromLast = (ranks + every - 1) / every
        return fromLast + ((ranks - 1) % every == 0 ? 0 : 1)
    }

    let ranks: Int
    let directory: String
    let controlFile: String
    let results: String
    let started: Int64
    let coordinator: Child
    private(set) var lastReady: Int64 = 0
    private var readyCount = 0
    private let workspace: Workspace

    init(_ workspace: Workspace, name: String, ranks: Int, stepTime: Double, logEvery: Double? = nil) throws {
        self.workspace = workspace
        self.ranks = ranks
        directory = try workspace.directory(name)
        controlFile = directory + "/graceful_exit.json"
        results = directory + "/results.txt"
        var arguments = [
            "run", "-n", "\(ranks)", "--run-dir", directory + "/run", "--control-file", controlFile,
            "--grace", "120", "--", workspace.rank, "rank", "--results", results,
            "--step-time", "\(stepTime)", "--relay-every", "\(BenchJob.relayEvery(ranks: ranks))",
        ]
        if let logEvery { arguments += ["--log-every", "\(logEvery)"] }
        started = monotonicNow()
        coordinator = try Child(workspace.graceful, arguments)
    }

    deinit {
        coordinator.killNow()
        workspace.remove(directory)
    }

    /// Waits for every rank's `ready` line; a launch gets 30 s plus 50 ms per rank.
    func waitUntilReady() throws {
        let deadline = started + Int64(30 + Double(ranks) * 0.05) * 1_000_000_000
        let done = coordinator.pump(until: deadline) {
            for line in coordinator.newLines() where !line.standardError && line.text.contains("]: ready ") {
                readyCount += 1
                lastReady = line.time
            }
            return readyCount == ranks
        }
        guard done else {
            throw BenchError("\(ranks) ranks: only \(readyCount) ready before the deadline; coordinator said:\n\(tail())")
        }
    }

    /// Keeps reading the coordinator's output for `seconds`, so the machine is quiet before a trigger.
    func idle(seconds: Double) {
        let deadline = monotonicNow() + Int64(seconds * 1e9)
        _ = coordinator.pump(until: deadline) { false }
    }

    /// SIGTERM to the coordinator; returns the moment just before it was sent.
    func triggerSignal() -> Int64 {
        let time = monotonicNow()
        kill(coordinator.pid, SIGTERM)
        return time
    }

    /// Renames `{"GracefulExit": 1}` into place, the way `mv` does; returns the moment just before.
    func triggerControlFile() throws -> Int64 {
        let staged = directory + "/graceful_exit.json.new"
        try Data("{\"GracefulExit\": 1}\n".utf8).write(to: URL(fileURLWithPath: staged))
        let time = monotonicNow()
        guard rename(staged, controlFile) == 0 else { throw BenchError("rename onto \(controlFile) failed") }
        return time
    }

    /// Waits for the coordinator to exit (60 s at most) and returns its exit code; 0 is a clean stop.
    func finish() throws -> Int32 {
        guard let code = coordinator.wait(until: monotonicNow() + 60_000_000_000) else {
            throw BenchError("\(ranks) ranks: graceful did not exit within 60 s of the stop:\n\(tail())")
        }
        return code
    }

    /// The coordinator's first error line, to say why a stop was not clean.
    var firstError: String? {
        coordinator.lines.first { $0.standardError && $0.text.contains("error:") }?.text
    }

    /// When the coordinator wrote its first stderr line containing `text`.
    func timeOfReport(_ text: String) -> Int64? {
        coordinator.lines.first { $0.standardError && $0.text.contains(text) }?.time
    }

    /// The results file as it stands.
    func rankTimes() -> RankTimes { RankTimes(resultsFile: results) }

    private func tail() -> String {
        coordinator.lines.suffix(15).map { "  | " + $0.text }.joined(separator: "\n")
    }
}

/// What the bench ranks recorded (CLOCK_MONOTONIC ns), as `graceful-bench-rank rank` writes it to
/// the results file of a single-node or a multi-node job.
struct RankTimes {
    /// When each rank's client had sent its hello, by rank.
    var helloSent: [Int: Int64] = [:]
    /// Per relayed rank that was told the stop step: when the stop's bytes reached its relay, when
    /// its client's answer did, when the stop step did, and when the doorbell woke its waiter (0:
    /// it did not).
    var relayed: [(rank: Int, delivered: Int64, answered: Int64, told: Int64, rung: Int64)] = []
    /// Per rank that confirmed: the moment before its `checkpointed`, and its doorbell waiter's
    /// wake-up (0: none).
    var confirmed: [Int: (confirmed: Int64, rung: Int64)] = [:]

    /// The records in `resultsFile` as it stands (none when it cannot be read yet).
    init(resultsFile: String) {
        let text = (try? String(contentsOfFile: resultsFile, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ")
            let numbers = words.dropFirst().compactMap { Int64($0) }
            if words.first == "hello", numbers.count == 2 {
                helloSent[Int(numbers[0])] = numbers[1]
            } else if words.first == "stop", numbers.count == 5 {
                relayed.append((Int(numbers[0]), numbers[1], numbers[2], numbers[3], numbers[4]))
            } else if words.first == "confirmed", numbers.count == 3 {
                confirmed[Int(numbers[0])] = (numbers[1], numbers[2])
            }
        }
    }
}
