import Foundation
import Glibc
import Testing

/// A seeded randomized soak of `graceful queue` with real processes: 30 tasks of 0.1 to 1 s, two or three
/// `queue run`s with distinct `--host-id`s and a 1 s lease sharing one directory; at moments the seed
/// picks (after 1 to 4 more starts of the victim, plus up to 0.3 s), one is SIGKILLed and a new one starts,
/// on the victim's host id or a new one, 4 to 6 times; at the end one more runs to completion.
/// Every task must then be finished exactly once (one outcome, from an attempt that ran to its end,
/// with its result), no claim left open but a killed process's, no attempt failed, and no process
/// left.
///
/// `GRACEFUL_PROPERTY_SEED` replays a run (the seed a failure prints: the same tasks, processes and
/// kill schedule; the moments are real time, so a replay is as close as the machine allows);
/// `GRACEFUL_PROPERTY_RUNS` sets the number of runs (default 1).
@Suite(.serialized) struct QueueSoakTests {
    static let taskCount = 30

    /// Sleeps its given time, writes its result, then notes in the ledger that this attempt ran to
    /// its end.
    static let task = """
        #!/bin/sh
        sleep "$2"
        printf '{"task": "%s", "n": %s}\\n' "$GRACEFUL_TASK_ID" "$1" > "$GRACEFUL_TASK_RESULT"
        echo "$GRACEFUL_TASK_ATTEMPT" >> "ledger/$GRACEFUL_TASK_ID"

        """

    @Test func killedAndRestartedQueueRunsFinishEveryTaskExactlyOnce() throws {
        let environment = ProcessInfo.processInfo.environment
        let replay = environment["GRACEFUL_PROPERTY_SEED"].flatMap(UInt64.init)
        let runs = environment["GRACEFUL_PROPERTY_RUNS"].flatMap(Int.init) ?? 1
        var seeds = SeededGenerator(seed: UInt64.random(in: 0...UInt64.max))
        for run in 0..<runs {
            let seed = run == 0 ? replay ?? seeds.next() : seeds.next()
            var soak = try Soak(seed: seed)
            let problems = soak.run()
            if !problems.isEmpty {
                Issue.record("""
                    \(problems.joined(separator: "\n"))
                    replay with GRACEFUL_PROPERTY_SEED=\(seed)
                    \(soak.trace.joined(separator: "\n"))
                    \(soak.outputs)
                    """)
                return
            }
        }
    }
}

/// One soak run: its directory, its processes, what happened.
private struct Soak {
    let seed: UInt64
    var random: SeededGenerator
    let directory: TemporaryDirectory
    var trace: [String] = []
    /// Every `queue run` started, by name (its host id and a number).
    var processes: [(name: String, hostID: String, launched: Launched)] = []
    var killed: Set<Int32> = []
    var nextHost = 0

    init(seed: UInt64) throws {
        self.seed = seed
        random = SeededGenerator(seed: seed)
        directory = try TemporaryDirectory()
    }

    var outputs: String {
        processes.map { "--- \($0.name) (pid \($0.launched.pid)):\n\($0.launched.output.split(separator: "\n").suffix(15).joined(separator: "\n"))" }
            .joined(separator: "\n")
    }

    /// Each kill costs the tasks its victim ran a lease expiry, and a 1 s lease may expire under load:
    /// the bound of `--max-lease-expiries` (QueueTests) is out of this test's way.
    var arguments: [String] { ["--workers", "2", "--lease", "1", "--grace", "2", "--kill-after", "1", "--max-lease-expiries", "1000"] }

    mutating func start(hostID: String? = nil) throws {
        let host = hostID ?? {
            defer { nextHost += 1 }
            return "host\(nextHost)"
        }()
        let launched = try Launched([Launched.graceful, "queue", "run", "sweep", "--host-id", host] + arguments, in: directory.path)
        processes.append(("\(host)#\(processes.count)", host, launched))
        trace.append("\(String(format: "%.2f", elapsed)) started \(processes.last!.name), pid \(launched.pid)")
    }

    let began = Date()
    var elapsed: Double { Date().timeIntervalSince(began) }

    mutating func run() -> [String] {
        do {
            try chaos()
        } catch {
            return ["\(error)"]
        }
        return check()
    }

    private mutating func chaos() throws {
        try directory.write(Soak.taskScript, QueueSoakTests.task)
        chmod(directory.file(Soak.taskScript), 0o755)
        try FileManager.default.createDirectory(atPath: directory.file("ledger"), withIntermediateDirectories: true)
        var lines: [String] = []
        for n in 1...QueueSoakTests.taskCount {
            lines.append("{\"n\": \(n), \"sleep\": \(String(format: "%.2f", Double.random(in: 0.1...1.0, using: &random)))}")
        }
        try directory.write("tasks.jsonl", lines.joined(separator: "\n") + "\n")
        // The queue is created by the first; the others join it.
        let create = try Launched([Launched.graceful, "queue", "run", "sweep", "--tasks", "tasks.jsonl", "--host-id", "host0"] + arguments
                                  + ["--", "./" + Soak.taskScript, "{n}", "{sleep}"], in: directory.path)
        processes.append(("host0#0", "host0", create))
        nextHost = 1
        trace.append("0.00 started host0#0 (creates the queue), pid \(create.pid)")
        try create.waitFor(" started ")
        for _ in 1..<Int.random(in: 2...3, using: &random) { try start() }
        let kills = Int.random(in: 4...6, using: &random)
        for round in 1...kills {
            let alive = processes.indices.filter { processes[$0].launched.status == nil && !killed.contains(processes[$0].launched.pid) }
            guard !alive.isEmpty else { break }
            let victim = random.pick(alive)
            let launched = processes[victim].launched
            let more = Int.random(in: 1...4, using: &random)
            let delay = Double.random(in: 0...0.3, using: &random)
            let sameHost = random.chance(0.5)
            do {
                try launched.waitFor(" started ", count: launched.count(" started ") + more, timeout: 30)
            } catch {
                // It ran out of tasks first: the queue is (nearly) drained; the chaos is over.
                trace.append("\(String(format: "%.2f", elapsed)) round \(round): \(processes[victim].name) ended before \(more) more starts")
                break
            }
            usleep(useconds_t(delay * 1e6))
            launched.signal(SIGKILL)
            killed.insert(launched.pid)
            let code = try launched.waitForExit(timeout: 30)
            trace.append("\(String(format: "%.2f", elapsed)) round \(round): killed \(processes[victim].name) after \(more) more starts + \(String(format: "%.2f", delay))s (exit \(code))")
            try start(hostID: sameHost ? processes[victim].hostID : nil)
        }
        try start()
        for process in processes {
            let code = try process.launched.waitForExit(timeout: 60)
            if !killed.contains(process.launched.pid) && code != 0 {
                throw Launched.Timeout(description: "\(process.name) exited \(code)")
            }
        }
        let takeovers = processes.map { $0.launched.count("expired; taking it back") }.reduce(0, +)
        let busy = processes.map { $0.launched.count("its run directory is busy") }.reduce(0, +)
        trace.append("\(String(format: "%.2f", elapsed)) every queue run ended; \(takeovers) leases taken back, \(busy) attempts put back on a busy run directory")
    }

    static let taskScript = "task.sh"

    private func check() -> [String] {
        var problems: [String] = []
        let left = waitUntilNoProcess(workingIn: directory.path, timeout: 10)
        if !left.isEmpty { problems.append("processes left: \(left)") }
        let lines = processes.flatMap { process in process.launched.output.split(separator: "\n").map { (process.launched.pid, String($0)) } }
        for n in 1...QueueSoakTests.taskCount {
            let task = String(format: "task-%03d", n - 1)
            let files = directory.file("sweep/tasks/\(task)")
            guard let text = directory.read("sweep/tasks/\(task)/outcome.json"),
                  let outcome = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
            else {
                problems.append("\(task): no outcome")
                continue
            }
            guard outcome["state"] as? String == "finished", let attempt = outcome["attempt"] as? Int else {
                problems.append("\(task): \(text)")
                continue
            }
            let result = outcome["result"] as? [String: Any]
            if result?["task"] as? String != task || result?["n"] as? Int != n { problems.append("\(task): result \(text)") }
            let ledger = (directory.read("ledger/\(task)") ?? "").split(separator: "\n").compactMap { Int($0) }
            if !ledger.contains(attempt) { problems.append("\(task): finished by attempt \(attempt), which never ran to its end (\(ledger))") }
            // Recorded once: one link succeeded, and at most one process said so.
            let said = lines.filter { $0.1.contains("\(task) finished in ") }
            if said.count > 1 { problems.append("\(task): \(said.count) processes recorded it finished") }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: files)) ?? []
            // A temporary is a killed process's, never a live one's (each removes its own).
            for name in names where name.contains(".tmp.") {
                let pid = Int32(name.split(separator: ".").last.map(String.init) ?? "") ?? 0
                if !killed.contains(pid) { problems.append("\(task): \(name) left by a live process") }
            }
            for name in names where name.hasSuffix(".end") {
                if (directory.read("sweep/tasks/\(task)/\(name)") ?? "").contains("\"outcome\": \"failed\"") {
                    problems.append("\(task): \(name) records a failure")
                }
            }
            for name in names where name.hasSuffix(".claim") {
                guard let number = Int(name.dropFirst(8).dropLast(6)), number != attempt,
                      !names.contains("attempt_\(number).end")
                else { continue }
                // An attempt that neither finished the task nor ended: its holder must have been killed,
                // or have found the task finished by the time its attempt ended.
                let claim = (try? JSONSerialization.jsonObject(with: Data((directory.read("sweep/tasks/\(task)/\(name)") ?? "").utf8))) as? [String: Any]
                let pid = Int32(claim?["pid"] as? Int ?? 0)
                let raced = lines.contains { $0.0 == pid && $0.1.contains("\(task) ended too") }
                if !killed.contains(pid) && !raced { problems.append("\(task): \(name) left open by a live process (\(claim ?? [:]))") }
            }
        }
        return problems
    }
}
