import CGraceful
import Glibc
import GracefulProtocol

/// `graceful queue run`: a few workers in one process, each running one attempt at a time as a
/// child `graceful run` (this very binary), claiming the next task when it ends, until the queue is
/// drained or the sweep is stopped. One thread, one epoll loop: signals arrive through the
/// self-pipe, attempts' ends through their pidfds; leases are renewed, deadlines and the control
/// file checked on the loop's timeouts.
public final class QueueRunner {
    private let configuration: QueueRunConfiguration
    private var queue: QueueDirectory!
    private var scheduler: QueueScheduler
    private let console = QueueConsole()

    /// One running attempt (or straggler copy) of a worker.
    private struct Attempt {
        let task: String
        let attempt: Int
        let copy: Bool
        let pid: pid_t
        let pidfd: Int32
        let startedAt: Instant
        let logDirectory: String
        /// `<host-id>/<pid>/w<slot>`, as its claim names it.
        let worker: String
        var stopSentAt: Instant?
        /// Why this process stopped it, when it did: decides how its end is recorded.
        var stopReason: StopReason?
    }

    private enum StopReason {
        case sweepStopped, timeout, memory(UInt64), lostLease, otherCopyWon, taskFailed
    }

    private var slots: [Attempt?]
    private var devices: [String?]
    private var stopSignal: Int32?
    private var stopCount = 0
    private var lastStopAt: Instant?
    private var finishedHere = 0
    private var failedHere = 0
    private let startedAt = monotonicNow()
    private let executable: String
    /// This process's environment, read once, for every attempt.
    private let inheritedEnvironment = QueueRunner.inheritedEnvironment().filter { !$0.hasPrefix("GRACEFUL_TASK_") }
    /// The queue as the last scan found it, each task refreshed as this process acts on it; and
    /// when every task was last scanned.
    private var view: [TaskFiles] = []
    private var viewScannedAt: Instant?
    /// Seconds between two scans of every task (at most a heartbeat): between them a freed worker
    /// decides on `view`, and reads again only the task it picked, right before acting on it.
    static let fullScanInterval = 1.0

    public init(configuration: QueueRunConfiguration) {
        self.configuration = configuration
        scheduler = QueueScheduler(policy: configuration.policy)
        slots = Array(repeating: nil, count: configuration.workers)
        devices = Array(repeating: nil, count: configuration.workers)
        executable = (try? Self.ownExecutable()) ?? "/proc/self/exe"
    }

    /// Milliseconds between two attempts to write to a console that did not keep up.
    static let consoleRetryMilliseconds = 20

    /// Runs the sweep; returns the exit code (README, "graceful queue").
    public func run() -> Int32 {
        let code = sweep()
        // A console that does not read gets two seconds, then its lines are given up on.
        console.drain(milliseconds: 2000)
        return code
    }

    private func sweep() -> Int32 {
        graceful_unblock_signals()
        graceful_ensure_stdio()
        do {
            queue = try QueueDirectory.open(configuration.directory, hostID: configuration.hostID, definition: configuration.definition, command: configuration.command)
            if let contents = try AtomicFile.read(configuration.controlFile, limit: ControlFileWatcher.maximumSize),
               ControlFileState(contents: contents) == .requestsExit {
                console.line("\(configuration.controlFile) already requests an exit; set \"GracefulExit\" to 0 to run the queue")
                return ExitCode.exitAlreadyRequested
            }
        } catch let failure as QueueDirectory.Failure {
            console.line("error: \(failure)")
            if case .data = failure { return ExitCode.dataError }
            return ExitCode.systemError
        } catch {
            console.line("error: \(error)")
            return ExitCode.systemError
        }
        devices = GPUPicker.assign(configuration.gpus, workers: configuration.workers, notice: console.line)
        do {
            return try loop()
        } catch let failure as QueueDirectory.Failure {
            console.line("error: \(failure)")
            stopEverything()
            if case .data = failure { return ExitCode.dataError }
            return ExitCode.systemError
        } catch {
            console.line("error: \(error)")
            stopEverything()
            return ExitCode.systemError
        }
    }

    private func loop() throws -> Int32 {
        let signals = try SignalPipe()
        _ = graceful_become_subreaper()
        let events = try EventLoop()
        try events.register(signals.readFD, token: 0)
        let heartbeat = configuration.policy.heartbeatInterval
        var nextBeat = monotonicNow() + heartbeat
        var nextControlCheck = monotonicNow()
        var wakeForQueue: Instant? = monotonicNow()
        var drained = false
        console.line("queue \(configuration.directory): \(queue.definition.tasks.count) tasks, \(configuration.workers) worker\(configuration.workers == 1 ? "" : "s") on \(configuration.hostID)")
        while true {
            let now = monotonicNow()
            if stopSignal == nil, !drained, wakeForQueue.map({ $0 <= now }) ?? false || slots.contains(where: { $0 == nil }) && wakeForQueue == nil {
                (drained, wakeForQueue) = try fillIdleSlots(events: events, now: now)
            }
            if slots.allSatisfy({ $0 == nil }) && (drained || stopSignal != nil) { break }
            if now >= nextBeat {
                renewLeases(now: now)
                nextBeat = now + heartbeat
            }
            if now >= nextControlCheck {
                checkControlFile(now: now)
                checkDeadlines(now: now)
                nextControlCheck = now + 0.5
            }
            var wake = min(nextBeat, nextControlCheck)
            if let queueWake = wakeForQueue { wake = min(wake, queueWake) }
            console.flush()
            var timeout = max(0, Int32(min(60_000, wake.seconds(since: monotonicNow()) * 1000 + 1)))
            if console.hasPending { timeout = min(timeout, Int32(Self.consoleRetryMilliseconds)) }
            for event in try events.wait(timeoutMilliseconds: timeout) {
                if event.token == 0 {
                    handleSignals(signals.drain(), now: monotonicNow())
                } else {
                    reapAttempts()
                    wakeForQueue = monotonicNow()
                }
            }
            if reapAttempts() { wakeForQueue = monotonicNow() }
        }
        return finish(drained: drained)
    }

    // MARK: - Claiming

    /// Gives every idle worker a task, as long as there is one: whether the queue is drained, and
    /// when to look again.
    ///
    /// Every task is scanned at most every `fullScanInterval` (a scan is a directory listing per
    /// unfinished task: with thousands of tasks, one per claim would make a sweep quadratic). In
    /// between, decisions are made on `view`, and the task picked is read again before anything is
    /// done to it: a decision a fresh read contradicts (a new heartbeat, a claim or an outcome from
    /// another host) is made again on the fresh read. A stale view can only delay a claim or lose
    /// a race for one (a claim is exclusive by `link`), never expire a live lease or claim a
    /// finished task.
    private func fillIdleSlots(events: EventLoop, now: Instant) throws -> (Bool, Instant?) {
        let interval = min(Self.fullScanInterval, configuration.policy.heartbeatInterval)
        if viewScannedAt.map({ now.seconds(since: $0) >= interval }) ?? true {
            view = try queue.scan()
            viewScannedAt = now
        }
        for slot in slots.indices where slots[slot] == nil {
            var tries = 0
            while slots[slot] == nil {
                tries += 1
                // Every pass changed the queue or lost a race for it; a runaway loop would be a bug.
                if tries > 4 * view.count + 8 { return (false, now + 0.5) }
                let runningHere = Set(slots.compactMap { $0?.task })
                let decision = scheduler.next(view, at: now, runningHere: runningHere)
                guard let task = decision.task, let index = view.firstIndex(where: { $0.id == task }) else {
                    if case .wait(let until) = decision {
                        // Nothing to claim: look again when a backoff or a lease ends, or in a while.
                        let soon = now + min(configuration.policy.heartbeatInterval, 1)
                        return (false, min(until ?? soon, soon))
                    }
                    // Drained: outcomes never change, so a view that has every one is true however old.
                    return (slots.allSatisfy { $0 == nil }, nil)
                }
                let fresh = try queue.scan(task)
                if fresh != view[index] {
                    view[index] = fresh
                    continue
                }
                switch decision {
                case .fail(let task, let reason):
                    try recordFailed(task, reason: reason)
                case .claim(let task, let attempt, let takeover):
                    if try queue.claim(task, attempt: attempt, worker: workerName(slot), copy: false, takeover: takeover?.attempt) {
                        if let takeover {
                            console.line("\(task): the lease of attempt \(takeover.attempt) (\(takeover.holder)) expired; taking it back (\(fresh.expiries + 1) of \(configuration.policy.maxLeaseExpiries) lease expiries)")
                        }
                        try launch(task, attempt: attempt, copy: false, slot: slot, events: events)
                    }
                case .copy(let task, let attempt):
                    if try queue.claim(task, attempt: attempt, worker: workerName(slot), copy: true) {
                        try launch(task, attempt: attempt, copy: true, slot: slot, events: events)
                    }
                case .wait, .drained:
                    break
                }
                view[index] = try queue.scan(task)
            }
        }
        return (false, nil)
    }

    /// Reads `task` again into `view`, after this process changed it.
    private func refresh(_ task: String) {
        guard let index = view.firstIndex(where: { $0.id == task }), let files = try? queue.scan(task) else { return }
        view[index] = files
    }

    private func workerName(_ slot: Int) -> String { "\(configuration.hostID)/\(getpid())/w\(slot)" }

    private func launch(_ task: String, attempt: Int, copy: Bool, slot: Int, events: EventLoop) throws {
        guard let definitionTask = queue.definition.tasks.first(where: { $0.id == task }) else { return }
        let logDirectory = queue.logDirectory(task, attempt: attempt, copy: copy)
        let runDirectory = queue.runDirectory(task, copy: copy)
        try QueueDirectory.ensureDirectory(logDirectory)
        try QueueDirectory.ensureDirectory(runDirectory)
        let command = try QueueDefinition.substitute(queue.definition.command, params: definitionTask.params, taskID: task)
        let arguments = [
            "run", "-n", String(configuration.ranks), "--run-dir", runDirectory,
            "--control-file", logDirectory + "/control.json",
            "--grace", String(configuration.grace),
            "--kill-after", String(configuration.killAfter), "--",
        ] + command
        var environment = inheritedEnvironment
        environment += [
            "GRACEFUL_TASK_ID=\(task)",
            "GRACEFUL_TASK_ATTEMPT=\(attempt)",
            "GRACEFUL_TASK_PARAMS=\(JSONWriting.encode(.object(definitionTask.params)))",
            "GRACEFUL_TASK_RESULT=\(absolutePath(queue.resultPath(task, attempt: attempt, copy: copy)))",
        ]
        if let device = devices[slot] {
            environment = environment.filter { !$0.hasPrefix("CUDA_VISIBLE_DEVICES=") && !$0.hasPrefix("ASCEND_RT_VISIBLE_DEVICES=") }
            environment += ["CUDA_VISIBLE_DEVICES=\(device)", "ASCEND_RT_VISIBLE_DEVICES=\(device)"]
        }
        let log = open(logDirectory + "/console.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        if log < 0 { throw SystemError("open \(logDirectory)/console.log") }
        defer { closeDescriptor(log) }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { closeDescriptor(devNull) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        // SIGTERM when this process dies, even by SIGKILL: the attempt's graceful run then stops its
        // ranks gracefully and commits, and the next claim of the task resumes from that commit.
        let error = graceful_spawn(executable, argv, envp, [devNull, log, log], 3, SIGTERM, -1, &pid)
        if error != 0 { throw SystemError("spawn \(executable)", errno: error) }
        let pidfd = graceful_pidfd_open(pid)
        if pidfd < 0 { throw SystemError("pidfd_open") }
        try events.register(pidfd, token: UInt64(slot + 1))
        slots[slot] = Attempt(task: task, attempt: attempt, copy: copy, pid: pid, pidfd: pidfd, startedAt: monotonicNow(),
                              logDirectory: logDirectory, worker: workerName(slot))
        let what = copy ? "a straggler copy of attempt \(attempt)" : "attempt \(attempt)"
        console.line("\(task) started (\(what), \(workerName(slot))): \(command.joined(separator: " "))")
    }

    // MARK: - Ends

    /// Reaps every ended child; records the attempts that ended. True when a worker became idle.
    @discardableResult
    private func reapAttempts() -> Bool {
        var freed = false
        while true {
            var status: Int32 = 0
            let pid = graceful_reap_any(&status)
            guard pid > 0 else { break }
            guard let slot = slots.firstIndex(where: { $0?.pid == pid }), let attempt = slots[slot] else { continue }
            slots[slot] = nil
            closeDescriptor(attempt.pidfd)
            killOrphans()
            do {
                try record(attempt, status: status)
            } catch {
                console.line("error: \(error)")
            }
            refresh(attempt.task)
            freed = true
        }
        return freed
    }

    /// Whatever an ended attempt left (its `graceful run`'s guard, ranks of one that was killed) is
    /// killed and reaped before its worker claims again, so devices and memory are free.
    private func killOrphans() {
        let live = Set(slots.compactMap { $0?.pid })
        for _ in 0..<50 {
            var orphans = Descendants.walk(excluding: live)
            if orphans.isEmpty { return }
            orphans.processes.forEach { $0.send(SIGKILL) }
            for process in orphans.processes where process.parent == getpid() {
                var status: Int32 = 0
                while waitpid(process.pid, &status, 0) < 0 && errno == EINTR {}
            }
            orphans.close()
        }
    }

    private func record(_ attempt: Attempt, status: Int32) throws {
        let signaled = graceful_status_signaled(status) != 0
        let exit: Int32 = signaled ? 128 + graceful_status_signal(status) : graceful_status_exit_code(status)
        let elapsed = monotonicNow().seconds(since: attempt.startedAt)
        let seconds = String(format1: elapsed)
        let label = attempt.copy ? "\(attempt.task) (straggler copy)" : attempt.task
        switch attempt.stopReason {
        case .sweepStopped?, .lostLease?, .otherCopyWon?, .taskFailed?:
            if !attempt.copy {
                try queue.release(attempt.task, attempt: attempt.attempt, reason: attempt.stopReason.map(Self.describe) ?? "")
            }
            console.line("\(label) stopped after \(seconds)s (exit \(exit)): \(attempt.stopReason.map(Self.describe) ?? "")")
            return
        case .timeout?, .memory?:
            guard !attempt.copy else {
                console.line("\(label) stopped: \(Self.describe(attempt.stopReason!))")
                return
            }
            try failed(attempt, exit: exit, reason: Self.describe(attempt.stopReason!))
            return
        case nil:
            break
        }
        if exit == 0 {
            let result = readResult(attempt)
            let json = "{\"state\": \"finished\", \"attempt\": \(attempt.attempt), \"attempts\": \(attempt.attempt), \"exit\": 0, \"result\": \(result), \"worker\": \(JSONEncoding.quoted(attempt.worker)), \"host\": \(JSONEncoding.quoted(configuration.hostID)), \"copy\": \(attempt.copy), \"seconds\": \(seconds), \"time\": \(JSONEncoding.quoted(Supervisor.timestamp()))}\n"
            if try queue.recordOutcome(attempt.task, state: .finished(attempt: attempt.attempt), json: json) {
                finishedHere += 1
                console.line("\(label) finished in \(seconds)s\(progress())")
                // The other copy, if it runs here, stops at once rather than at its next heartbeat.
                for index in slots.indices where slots[index]?.task == attempt.task {
                    stop(index, reason: .otherCopyWon, signal: SIGTERM)
                }
            } else {
                console.line("\(label) ended too, but another copy had already finished it")
            }
            if !attempt.copy && !queue.hasOutcome(attempt.task) {
                try queue.release(attempt.task, attempt: attempt.attempt, reason: "finished, but the outcome could not be recorded")
            }
            return
        }
        if exit == ExitCode.runDirectoryBusy {
            // Another attempt's graceful run (an expired holder still stopping) holds the task's run
            // directory: not this attempt's fault.
            if !attempt.copy { try queue.release(attempt.task, attempt: attempt.attempt, reason: "its run directory was busy") }
            console.line("\(label): its run directory is busy (a previous attempt is still stopping); put back")
            return
        }
        guard !attempt.copy else {
            console.line("\(label) failed (exit \(exit)); the original goes on")
            return
        }
        try failed(attempt, exit: exit, reason: "exit \(exit)")
    }

    private func failed(_ attempt: Attempt, exit: Int32, reason: String) throws {
        let tail = Self.tail(of: attempt.logDirectory + "/console.log")
        try queue.end(attempt.task, attempt: attempt.attempt, failedWith: exit, reason: reason, tail: tail)
        let failures = try queue.scan(attempt.task).failures
        if failures >= configuration.policy.maxAttempts {
            try recordFailed(attempt.task, reason: .attemptsFailed(failures))
        } else {
            let wait = configuration.policy.backoff(afterFailures: failures)
            console.line("\(attempt.task) attempt \(attempt.attempt) failed (\(reason)); retrying in \(String(format1: wait))s (\(failures) of \(configuration.policy.maxAttempts) attempts failed)")
        }
    }

    /// Records the task failed, with why, and the log tail of its last failed attempt (its exit
    /// status too) or, when its lease expired once too often, of the attempt whose worker died or
    /// hung last.
    private func recordFailed(_ task: String, reason: QueueScheduler.FailReason) throws {
        let files = try queue.scan(task)
        let attempts: Int
        let expired: Int
        var exit = "null"
        var tail = "[]"
        let why: String
        switch reason {
        case .attemptsFailed(let failures):
            attempts = failures
            expired = files.expiries
            var last: String?
            if let claim = files.claims.last(where: { if case .failed = $0.end { return true }; return false }),
               let contents = try AtomicFile.read(queue.endPath(task, attempt: claim.attempt)),
               let value = try? JSONParser.parse(contents) {
                exit = value["exit"].map(JSONWriting.encode) ?? "null"
                tail = value["tail"].map(JSONWriting.encode) ?? "[]"
                last = value["reason"]?.stringValue
            }
            why = "all \(failures) attempts failed" + (last.map { " (the last: \($0))" } ?? "")
        case .leaseExpired(let times, let claim):
            attempts = claim.attempt
            expired = times
            let lines = Self.tail(of: queue.logDirectory(task, attempt: claim.attempt, copy: false) + "/console.log")
            tail = "[\(lines.map(JSONEncoding.quoted).joined(separator: ", "))]"
            why = "its lease expired \(times) times: the worker running it died or stopped renewing each time (the last: attempt \(claim.attempt), \(claim.holder))"
        }
        let json = "{\"state\": \"failed\", \"attempts\": \(attempts), \"expired\": \(expired), \"exit\": \(exit), \"reason\": \(JSONEncoding.quoted(why)), \"result\": null, \"tail\": \(tail), \"time\": \(JSONEncoding.quoted(Supervisor.timestamp()))}\n"
        if try queue.recordOutcome(task, state: .failed(attempts: attempts), json: json) {
            failedHere += 1
            console.line("\(task) failed: \(why); see \(queue.logDirectory(task, attempt: files.claims.last?.attempt ?? 1, copy: false))/console.log\(progress())")
        }
    }

    /// What the task left at `GRACEFUL_TASK_RESULT`: its JSON, or its text as a string, or null.
    private func readResult(_ attempt: Attempt) -> String {
        let path = queue.resultPath(attempt.task, attempt: attempt.attempt, copy: attempt.copy)
        guard let contents = try? AtomicFile.read(path, limit: 1 << 20) else { return "null" }
        if let value = try? JSONParser.parse(contents) { return JSONWriting.encode(value) }
        var text = String(decoding: contents, as: UTF8.self)
        while text.hasSuffix("\n") { text.removeLast() }
        return JSONEncoding.quoted(text)
    }

    /// The last 20 lines of a log, each at most 1 KiB.
    static func tail(of path: String) -> [String] {
        guard let contents = try? AtomicFile.read(path, limit: 64 << 20) else { return [] }
        let lines = contents.split(separator: UInt8(ascii: "\n")).suffix(20)
        return lines.map { String(decoding: $0.prefix(1024), as: UTF8.self) }
    }

    private static func describe(_ reason: StopReason) -> String {
        switch reason {
        case .sweepStopped: return "the sweep was stopped; put back with its record"
        case .timeout: return "timed out"
        case .memory(let bytes): return "its processes used \(bytes >> 20) MiB, more than --max-memory"
        case .lostLease: return "its lease was taken back by another worker"
        case .otherCopyWon: return "another copy finished the task first"
        case .taskFailed: return "the task was recorded failed meanwhile (its lease expired once too often)"
        }
    }

    /// The count after a task's end: the outcomes known here (the last scan's and this process's
    /// own), without a scan.
    private func progress() -> String {
        let (finished, failed) = queue.knownOutcomes
        return " [\(finished + failed)/\(queue.definition.tasks.count) done: \(finished) finished, \(failed) failed; \(slots.compactMap { $0 }.count) running here]"
    }

    // MARK: - Leases, deadlines, stops

    private func renewLeases(now: Instant) {
        for index in slots.indices {
            guard let attempt = slots[index], attempt.stopReason == nil else { continue }
            if queue.hasOutcome(attempt.task) {
                // Failed while an attempt of it runs here: this process hung past its lease, and it
                // was the task's last lease expiry allowed.
                let failed = (try? queue.readOutcome(attempt.task)).map { if case .failed = $0.state { true } else { false } } ?? false
                stop(index, reason: failed ? .taskFailed : .otherCopyWon, signal: SIGTERM)
            } else if queue.superseded(attempt.task, attempt: attempt.attempt) || !queue.renew(attempt.task, attempt: attempt.attempt, copy: attempt.copy) {
                stop(index, reason: .lostLease, signal: SIGTERM)
            }
        }
    }

    private func checkDeadlines(now: Instant) {
        let memory = configuration.maxMemory.map { limit in (limit, Self.residentMemory(of: slots.compactMap { $0?.pid })) }
        for index in slots.indices {
            guard let attempt = slots[index] else { continue }
            if let sent = attempt.stopSentAt, now.seconds(since: sent) >= configuration.grace + configuration.killAfter + 1 {
                // Its graceful run did not end within its own grace and kill-after: it is stuck.
                _ = graceful_pidfd_signal(attempt.pidfd, SIGKILL)
                continue
            }
            guard attempt.stopReason == nil else { continue }
            if let timeout = configuration.timeout, now.seconds(since: attempt.startedAt) >= timeout {
                stop(index, reason: .timeout, signal: SIGTERM)
            } else if let (limit, usage) = memory, let used = usage[attempt.pid], used > limit {
                stop(index, reason: .memory(used), signal: SIGTERM)
            }
        }
    }

    private func stop(_ index: Int, reason: StopReason, signal: Int32) {
        guard var attempt = slots[index] else { return }
        if attempt.stopReason == nil { attempt.stopReason = reason }
        if attempt.stopSentAt == nil { attempt.stopSentAt = monotonicNow() }
        slots[index] = attempt
        _ = graceful_pidfd_signal(attempt.pidfd, signal)
    }

    private func handleSignals(_ received: [Int32], now: Instant) {
        for signal in received {
            switch signal {
            case SIGCHLD:
                continue
            case SIGTSTP:
                // Ctrl+Z: every attempt's graceful run pauses its ranks and itself; then this one stops.
                slots.compactMap { $0 }.forEach { _ = graceful_pidfd_signal($0.pidfd, SIGTSTP) }
                _ = raise(SIGSTOP)
            case SIGCONT:
                slots.compactMap { $0 }.forEach { _ = graceful_pidfd_signal($0.pidfd, SIGCONT) }
            case SIGUSR2:
                slots.compactMap { $0 }.forEach { _ = graceful_pidfd_signal($0.pidfd, SIGUSR2) }
            default:
                requestStop(signal: signal, now: now, trigger: SignalNumber.name(signal))
            }
        }
    }

    /// The first request stops every attempt gracefully; each further one (0.25 s after the previous,
    /// so a storm counts once) is passed on, and the attempts' graceful runs escalate it.
    private func requestStop(signal: Int32, now: Instant, trigger: String) {
        if let last = lastStopAt, now.seconds(since: last) < 0.25 { return }
        lastStopAt = now
        stopCount += 1
        if stopSignal == nil {
            stopSignal = signal
            console.line("\(trigger): stopping every running task gracefully; each is put back with its record")
        } else {
            console.line("\(trigger) again: the running tasks' ranks get \(stopCount == 2 ? "SIGTERM" : "SIGKILL")")
        }
        for index in slots.indices {
            stop(index, reason: .sweepStopped, signal: stopCount >= 3 ? SIGKILL : (SignalPipe.quitSignals.contains(signal) ? SIGQUIT : SIGTERM))
        }
    }

    private func checkControlFile(now: Instant) {
        guard stopSignal == nil, let contents = try? AtomicFile.read(configuration.controlFile, limit: ControlFileWatcher.maximumSize),
              ControlFileState(contents: contents) == .requestsExit
        else { return }
        requestStop(signal: SIGTERM, now: now, trigger: configuration.controlFile)
        _ = ControlFileReset.reset(configuration.controlFile)
    }

    /// On an error of the loop itself: every attempt is stopped gracefully, and waited for.
    private func stopEverything() {
        for index in slots.indices { stop(index, reason: .sweepStopped, signal: SIGTERM) }
        for index in slots.indices {
            guard let attempt = slots[index] else { continue }
            var status: Int32 = 0
            while waitpid(attempt.pid, &status, 0) < 0 && errno == EINTR {}
            try? record(attempt, status: status)
            slots[index] = nil
        }
    }

    private func finish(drained: Bool) -> Int32 {
        let files = (try? queue.scan()) ?? []
        let finished = files.filter { if case .finished? = $0.outcome { return true }; return false }.count
        let failed = files.filter { if case .failed? = $0.outcome { return true }; return false }.count
        let left = files.count - finished - failed
        let seconds = String(format1: monotonicNow().seconds(since: startedAt))
        console.line("queue \(configuration.directory): \(finished) finished, \(failed) failed, \(left) left of \(files.count) tasks (\(finishedHere) finished here in \(seconds)s)")
        if let stopSignal {
            console.line("stopped: run the same command again to resume each task from its record")
            return 128 + stopSignal
        }
        return failed > 0 ? ExitCode.rankFailed : ExitCode.success
    }

    // MARK: - System

    /// Resident bytes of each attempt's whole process tree, by the attempt's pid.
    static func residentMemory(of attempts: [pid_t]) -> [pid_t: UInt64] {
        var tree = Descendants.walk()
        defer { tree.close() }
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        var result: [pid_t: UInt64] = [:]
        for pid in attempts {
            var total: UInt64 = 0
            for process in tree.members(ofRankLed: pid) {
                guard let statm = try? AtomicFile.read("/proc/\(process.pid)/statm", limit: 4096) else { continue }
                let fields = statm.split(separator: UInt8(ascii: " "))
                if fields.count > 1, let pages = UInt64(String(decoding: fields[1], as: UTF8.self)) { total += pages * page }
            }
            result[pid] = total
        }
        return result
    }

    static func ownExecutable() throws(SystemError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if count < 0 { throw SystemError("readlink /proc/self/exe") }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func inheritedEnvironment() -> [String] {
        var result: [String] = []
        var pointer = environ
        while let entry = pointer.pointee {
            result.append(String(cString: entry))
            pointer += 1
        }
        return result
    }
}

private extension QueueScheduler.Decision {
    var task: String? {
        switch self {
        case .fail(let task, _), .claim(let task, _, _), .copy(let task, _): return task
        case .wait, .drained: return nil
        }
    }
}

extension String {
    /// `value` with one decimal.
    init(format1 value: Double) {
        let tenths = Int((value * 10).rounded())
        self = "\(tenths / 10).\(abs(tenths % 10))"
    }
}

extension QueueRunner {
    /// `graceful queue status`: prints the table (or JSON) on stdout; returns the exit code.
    public static func status(directory: String, json: Bool) -> Int32 {
        do {
            let queue = try QueueDirectory.open(directory, hostID: "", definition: nil)
            let rows = try QueueStatus.rows(of: queue, now: time(nil))
            writeAll(STDOUT_FILENO, json ? QueueStatus.json(rows) : QueueStatus.table(rows, directory: directory))
            return ExitCode.success
        } catch {
            writeAll(STDERR_FILENO, "error: \(error)\n")
            if case .data = error { return ExitCode.dataError }
            return ExitCode.systemError
        }
    }
}
