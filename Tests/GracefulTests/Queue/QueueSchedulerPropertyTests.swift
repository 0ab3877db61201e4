import Foundation
import Testing

@testable import Graceful

/// Random runs of several `queue run` processes sharing one queue, against a model of its files
/// (exclusive creation, heartbeats, ends, one outcome), with processes crashing, hanging (no
/// renewals for a while) and restarting, and tasks that kill every process that runs them,
/// checking every guarantee documented on `QueueScheduler` after every decision, and that every task
/// ends with exactly one outcome once the crashes stop (a task that kills its worker every time
/// ends too: failed, its lease taken back fewer than `maxLeaseExpiries` times).
///
/// `GRACEFUL_PROPERTY_RUNS` sets the number of runs; `GRACEFUL_PROPERTY_SEED` replays one (the seed a
/// failure prints).
@Suite struct QueueSchedulerPropertyTests {
    @Test func randomSweepsKeepEveryGuarantee() {
        let seeds = propertySeeds(defaultRuns: 300)
        for seed in seeds {
            var sweep = ModelSweep(seed: seed)
            do {
                try sweep.run()
            } catch {
                Issue.record("\(error.message)\nreplay with GRACEFUL_PROPERTY_SEED=\(seed)\n\(sweep.trace.suffix(40).joined(separator: "\n"))")
                return
            }
        }
    }
}

/// The queue's files and the processes using them.
struct ModelSweep {
    struct Claim {
        var holder: Int
        var host: String
        var heartbeat: Int64 = 0
        /// When its holder last renewed it: the truth no process sees.
        var renewedAt: Instant
        var end: TaskFiles.AttemptEnd?
        var endedAt: Instant?
        var copied = false
        var takeover = false
    }
    struct Running {
        var task: String
        var attempt: Int
        var copy: Bool
        var succeeds: Bool
    }
    struct Process {
        var id: Int
        var host: String
        var alive = true
        var scheduler: QueueScheduler
        var running: [Running] = []
        var workers: Int
        var lastBeat: Instant
        var drained = false
        /// Hung (no renewals, decisions or ends) until then.
        var hungUntil: Instant?

        func active(at now: Instant) -> Bool { alive && hungUntil.map { $0 <= now } ?? true }
    }

    var random: SeededGenerator
    let policy: QueuePolicy
    let taskIDs: [String]
    var claims: [String: [Int: Claim]] = [:]
    var outcomes: [String: TaskFiles.Outcome] = [:]
    /// Leases of each task that expired and were taken back, or ended it: at most `maxLeaseExpiries`.
    var expiredLeases: [String: Int] = [:]
    /// Tasks that kill the process running them (a copy's too), every time.
    let killers: Set<String>
    var processes: [Process] = []
    var now = Instant.seconds(100)
    var trace: [String] = []
    var crashesLeft: Int
    var hangsLeft: Int

    init(seed: UInt64) {
        random = SeededGenerator(seed: seed)
        var policy = QueuePolicy()
        policy.lease = Double(Int.random(in: 3...30, using: &random))
        policy.maxAttempts = Int.random(in: 1...4, using: &random)
        policy.maxLeaseExpiries = Int.random(in: 1...4, using: &random)
        policy.backoff = random.pick([0, 0.5, 2])
        policy.stragglers = random.chance(0.5)
        self.policy = policy
        taskIDs = (0..<Int.random(in: 1...8, using: &random)).map { "task-\($0)" }
        var killers: Set<String> = []
        for id in taskIDs where random.chance(0.15) { killers.insert(id) }
        self.killers = killers
        crashesLeft = Int.random(in: 0...4, using: &random)
        hangsLeft = Int.random(in: 0...4, using: &random)
        for index in 0..<Int.random(in: 1...3, using: &random) { startProcess(host: "h\(index % 2)") }
    }

    mutating func startProcess(host: String) {
        processes.append(Process(id: processes.count, host: host, scheduler: QueueScheduler(policy: policy),
                                 workers: Int.random(in: 1...3, using: &random), lastBeat: now))
    }

    /// What process `observer` sees in a scan now.
    func scan(by observer: Process) -> [TaskFiles] {
        taskIDs.map { id in
            if let outcome = outcomes[id] { return TaskFiles(id: id, outcome: outcome) }
            let files = (claims[id] ?? [:]).map { attempt, claim in
                TaskFiles.Claim(attempt: attempt, holder: "p\(claim.holder)", host: claim.host, heartbeat: claim.heartbeat,
                                holderGone: claim.host == observer.host && !processes[claim.holder].alive,
                                end: claim.end, copied: claim.copied, takeover: claim.takeover)
            }
            return TaskFiles(id: id, claims: files)
        }
    }

    func failures(_ task: String) -> Int {
        (claims[task] ?? [:]).values.filter { if case .failed = $0.end { return true }; return false }.count
    }

    mutating func run() throws(Violation) {
        var steps = 0
        while true {
            steps += 1
            guard steps < 20000 else { throw Violation(message: "the sweep did not drain in 20000 steps") }
            let live = processes.indices.filter { processes[$0].alive }
            if live.isEmpty || (crashesLeft == 0 && live.allSatisfy({ processes[$0].drained })) { break }
            // Time passes; every live holder that does not hang beats a third of a lease apart.
            now = now + Double.random(in: 0...(policy.lease / 4), using: &random)
            let active = live.filter { processes[$0].active(at: now) }
            for index in active where now.seconds(since: processes[index].lastBeat) >= policy.heartbeatInterval {
                beat(index)
            }
            guard !active.isEmpty else { continue }
            let index = random.pick(active)
            let roll = Double.random(in: 0..<1, using: &random)
            if roll < 0.03 && crashesLeft > 0 {
                crashesLeft -= 1
                crash(index)
                if random.chance(0.3) { startProcess(host: "h\(Int.random(in: 0...2, using: &random))") }
            } else if roll < 0.06 && hangsLeft > 0 {
                hangsLeft -= 1
                processes[index].hungUntil = now + Double.random(in: 0...(3 * policy.lease), using: &random)
                trace.append("\(now) p\(index) hangs until \(processes[index].hungUntil!)")
            } else if roll < 0.5, !processes[index].running.isEmpty {
                try end(processes[index].running.indices.randomElement(using: &random)!, of: index)
            } else if processes[index].running.count < processes[index].workers {
                try decide(index)
            }
        }
        for id in taskIDs {
            guard let outcome = outcomes[id] else { throw Violation(message: "\(id) has no outcome after the sweep") }
            if case .failed = outcome, failures(id) < policy.maxAttempts, expiredLeases[id, default: 0] < policy.maxLeaseExpiries {
                throw Violation(message: "\(id) failed after \(failures(id)) of \(policy.maxAttempts) attempts and \(expiredLeases[id, default: 0]) of \(policy.maxLeaseExpiries) lease expiries")
            }
            if killers.contains(id), case .finished = outcome { throw Violation(message: "\(id) kills its worker, yet finished") }
        }
    }

    mutating func decide(_ index: Int) throws(Violation) {
        let observer = processes[index]
        let files = scan(by: observer)
        let runningHere = Set(observer.running.map(\.task))
        let decision = processes[index].scheduler.next(files, at: now, runningHere: runningHere)
        trace.append("\(now) p\(index) \(decision)")
        switch decision {
        case .drained:
            guard outcomes.count == taskIDs.count else { throw Violation(message: "drained with \(taskIDs.count - outcomes.count) tasks open") }
            processes[index].drained = true
        case .wait:
            break
        case .fail(let task, .attemptsFailed(let attempts)):
            guard outcomes[task] == nil, failures(task) >= policy.maxAttempts, attempts == failures(task),
                  (claims[task] ?? [:]).values.allSatisfy({ $0.end != nil })
            else { throw Violation(message: "failing \(task) with \(failures(task)) failures of \(policy.maxAttempts)") }
            outcomes[task] = .failed(attempts: attempts)
        case .fail(let task, .leaseExpired(let times, let last)):
            guard outcomes[task] == nil, last.attempt == claims[task]?.keys.max() else {
                throw Violation(message: "failing \(task) for the lease of attempt \(last.attempt), not its latest")
            }
            try checkExpired(task, attempt: last.attempt)
            expiredLeases[task, default: 0] += 1
            guard expiredLeases[task] == policy.maxLeaseExpiries, times == policy.maxLeaseExpiries else {
                throw Violation(message: "failing \(task) at lease expiry \(expiredLeases[task]!) (\(times) said) of \(policy.maxLeaseExpiries)")
            }
            outcomes[task] = .failed(attempts: last.attempt)
        case .claim(let task, let attempt, let takeover):
            guard outcomes[task] == nil else { throw Violation(message: "claims \(task), which has an outcome") }
            let existing = claims[task] ?? [:]
            let latest = existing.keys.max() ?? 0
            guard attempt == latest + 1 || existing[attempt] != nil else { throw Violation(message: "claims attempt \(attempt) of \(task) after \(latest)") }
            if let takeover {
                guard takeover.attempt == latest, attempt == latest + 1 else {
                    throw Violation(message: "takes over \(task) attempt \(takeover.attempt) by attempt \(attempt), its latest being \(latest)")
                }
                try checkExpired(task, attempt: takeover.attempt)
            } else if let previous = existing[latest], case .failed = previous.end,
                      now.seconds(since: previous.endedAt!) < policy.backoff(afterFailures: failures(task)) {
                throw Violation(message: "retries \(task) before its backoff")
            }
            guard existing[attempt] == nil else { return }  // lost the race to another process
            if takeover != nil {
                expiredLeases[task, default: 0] += 1
                guard expiredLeases[task]! < policy.maxLeaseExpiries else {
                    throw Violation(message: "takes \(task) back at its lease expiry \(expiredLeases[task]!) of \(policy.maxLeaseExpiries)")
                }
            }
            claims[task, default: [:]][attempt] = Claim(holder: index, host: observer.host, renewedAt: now, takeover: takeover != nil)
            processes[index].running.append(Running(task: task, attempt: attempt, copy: false, succeeds: random.chance(0.6)))
            // A hung holder whose lease was taken back may run on until it wakes: not counted.
            let livePrimaries = processes.filter { $0.active(at: now) }.flatMap(\.running).filter { $0.task == task && !$0.copy }
            guard livePrimaries.count == 1 else { throw Violation(message: "\(livePrimaries.count) live attempts of \(task)") }
        case .copy(let task, let attempt):
            guard policy.stragglers else { throw Violation(message: "copies \(task) against the policy") }
            let pending = zip(files, processes[index].scheduler.observe(files, at: now)).contains { _, state in
                if case .pending = state { return true }; return false
            }
            guard !pending else { throw Violation(message: "copies \(task) while a task is pending") }
            guard var claim = claims[task]?[attempt], claim.end == nil, !claim.copied else {
                throw Violation(message: "copies \(task) attempt \(attempt), which is not a running attempt without a copy")
            }
            claim.copied = true
            claims[task]![attempt] = claim
            processes[index].running.append(Running(task: task, attempt: attempt, copy: true, succeeds: random.chance(0.6)))
        }
    }

    /// Only a dead holder's lease, or one not renewed for a lease (its holder hangs), of an attempt
    /// that has not ended, may be taken back (or end its task).
    func checkExpired(_ task: String, attempt: Int) throws(Violation) {
        let claim = claims[task]![attempt]!
        guard claim.end == nil, !processes[claim.holder].alive || now.seconds(since: claim.renewedAt) >= policy.lease else {
            throw Violation(message: "\(task) attempt \(attempt) expires, its holder renewed it \(now.seconds(since: claim.renewedAt))s ago (lease \(policy.lease)s)")
        }
    }

    /// A process dies with its attempts, which write no end.
    mutating func crash(_ index: Int) {
        processes[index].alive = false
        trace.append("\(now) p\(index) crashes")
        startProcess(host: processes[index].host)
    }

    /// A heartbeat, as the runner's: an attempt whose task has an outcome, or whose lease was taken
    /// back (a later claim exists), is stopped and put back; every other claim is renewed.
    mutating func beat(_ index: Int) {
        processes[index].lastBeat = now
        for running in processes[index].running {
            if outcomes[running.task] != nil || claims[running.task]![running.attempt + 1] != nil {
                processes[index].running.removeAll { $0.task == running.task && $0.attempt == running.attempt && $0.copy == running.copy }
                if !running.copy { release(running) }
            } else if !running.copy {
                claims[running.task]![running.attempt]!.heartbeat += 1
                claims[running.task]![running.attempt]!.renewedAt = now
            }
        }
    }

    /// One of the process's attempts ends, as the runner records it.
    mutating func end(_ position: Int, of index: Int) throws(Violation) {
        let running = processes[index].running[position]
        let superseded = claims[running.task]![running.attempt + 1] != nil
        if killers.contains(running.task) && outcomes[running.task] == nil && !superseded {
            trace.append("\(now) \(running.task) kills p\(index)")
            crash(index)
            return
        }
        processes[index].running.remove(at: position)
        if outcomes[running.task] != nil || superseded {
            if !running.copy { release(running) }
            return
        }
        if running.succeeds {
            outcomes[running.task] = .finished(attempt: running.attempt)
            trace.append("\(now) p\(index) finishes \(running.task) attempt \(running.attempt)\(running.copy ? " (copy)" : "")")
        } else if !running.copy {
            claims[running.task]![running.attempt]!.end = .failed(exit: 1)
            claims[running.task]![running.attempt]!.endedAt = now
            if failures(running.task) >= policy.maxAttempts { outcomes[running.task] = .failed(attempts: failures(running.task)) }
        }
    }

    mutating func release(_ running: Running) {
        claims[running.task]![running.attempt]!.end = .released
    }
}
