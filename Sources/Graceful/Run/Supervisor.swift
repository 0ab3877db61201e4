import CGraceful
import Glibc
import GracefulProtocol

/// Runs one `graceful run`: launches the ranks, then one event loop (epoll over every pipe, channel,
/// the signal self-pipe and inotify; a timeout for the next deadline) that feeds what happens into the
/// `Coordinator` and carries out what it decides.
public final class Supervisor {
    /// Lines of each rank's output kept for the failure report.
    static let tailLength = 20
    /// Console lines longer than this are cut into pieces.
    static let maximumOutputLine = 64 * 1024
    /// Seconds between two checks that a failed gang is gone.
    static let gangCheckInterval = 0.05

    private let configuration: RunConfiguration
    private let console = Console()
    private var coordinator: Coordinator
    private var ranks: [RankIO] = []
    /// The rank of each process of the current attempt, so reaping is not a scan of every rank.
    private var rankByPID: [pid_t: Int] = [:]
    private var logFDs: [Int32] = []
    /// The doorbell's word, mapped shared with every rank; nil when it could not be created.
    private var doorbell: UnsafeMutablePointer<UInt32>?
    private var runID = ""
    private var runDirectory = ""
    private var executable = ""
    private var environment: RankEnvironment!
    private var inherited: [RankEnvironment.Variable] = []
    private var exitCode: Int32?
    private var stopTrigger: Trigger?
    private var awaitingGangExit = false
    private var guardPID: pid_t = -1
    private var guardFD: Int32 = -1
    private var loop: EventLoop!

    public init(configuration: RunConfiguration) {
        self.configuration = configuration
        coordinator = Coordinator(rankCount: configuration.ranks, policy: configuration.policy)
    }

    /// Runs to the end and returns the exit code for `graceful`.
    public func run() -> Int32 {
        graceful_ensure_stdio()
        graceful_unblock_signals()
        switch prepare() {
        case .failure(let code):
            return code
        case .success(let resume):
            coordinator = Coordinator(rankCount: configuration.ranks, policy: configuration.policy, resumedStep: resume?.step)
            return launchAndSupervise(resume: resume)
        }
    }

    // MARK: - Before launch: nothing is started until every check passed

    private enum Preparation {
        case success(CommitRecord?)
        case failure(Int32)
    }

    private func prepare() -> Preparation {
        let watcher = ControlFileWatcher(path: configuration.controlFile)
        if watcher.evaluate(warn: console.report) {
            console.error("control file \(configuration.controlFile) already requests an exit (\"GracefulExit\": 1); set it to 0 to start")
            return .failure(ExitCode.exitAlreadyRequested)
        }
        runDirectory = absolutePath(configuration.runDirectory)
        do {
            try makeDirectories(runDirectory)
            let probe = runDirectory + "/.graceful-write-test.\(getpid())"
            let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd < 0 { throw SystemError("cannot write in \(runDirectory)") }
            closeDescriptor(fd)
            unlink(probe)
        } catch {
            console.error("run directory: \(error)")
            return .failure(ExitCode.cannotCreate)
        }
        let recordPath = runDirectory + "/" + CommitRecord.fileName
        AtomicFile.removeTemporaries(of: recordPath)
        var resume: CommitRecord?
        do {
            resume = try CommitRecord.load(from: recordPath)
        } catch {
            console.error("\(recordPath) cannot be used (\(error)); move it away to start from scratch")
            return .failure(ExitCode.dataError)
        }
        if let resume, resume.worldSize != configuration.ranks {
            console.error("\(recordPath) was committed by \(resume.worldSize) rank(s) but this launch asks for \(configuration.ranks); use the same -n or another --run-dir")
            return .failure(ExitCode.dataError)
        }
        return .success(resume)
    }

    // MARK: - Launch and the event loop

    private func launchAndSupervise(resume: CommitRecord?) -> Int32 {
        let rankCount = configuration.ranks
        // Four descriptors per rank (channel, two pipes, log) plus a few of our own.
        let neededDescriptors = rankCount * 4 + 64
        let limit = graceful_raise_nofile_limit()
        if limit >= 0 && limit < neededDescriptors {
            console.error("\(rankCount) ranks need about \(neededDescriptors) open files but the limit is \(limit) (ulimit -n)")
            return ExitCode.systemError
        }
        do {
            executable = try ExecutableLookup.resolve(configuration.command[0], path: getenv("PATH").map { String(cString: $0) })
        } catch {
            switch error {
            case .notFound(let name):
                console.error("\(name): command not found")
                return ExitCode.notFound
            case .notExecutable(let name):
                console.error("\(name): permission denied (not an executable file)")
                return ExitCode.notExecutable
            }
        }

        let signals: SignalPipe
        let watcher = ControlFileWatcher(path: configuration.controlFile)
        do {
            loop = try EventLoop()
            signals = try SignalPipe()
            try loop.register(signals.readFD, token: Token.signals)
            if watcher.inotifyFD >= 0 { try loop.register(watcher.inotifyFD, token: Token.controlFile) }
            let subreaperError = graceful_become_subreaper()
            if subreaperError != 0 { throw SystemError("prctl(PR_SET_CHILD_SUBREAPER)", errno: subreaperError) }
            guardPID = graceful_start_guard(&guardFD)
            if guardPID < 0 { throw SystemError("starting the guard process") }
        } catch {
            console.error("\(error)")
            return ExitCode.systemError
        }
        if watcher.inotifyFD < 0 {
            console.report("warning: cannot watch \(configuration.controlFile) with inotify; checking it every \(format(ControlFileWatcher.statInterval))s instead")
        }

        runID = configuration.runID ?? Self.newRunID()
        let port = configuration.masterPort ?? Int(graceful_free_tcp_port())
        guard port > 0 else {
            console.error("no free TCP port for MASTER_PORT; pass --master-port")
            return stopGuard(ExitCode.systemError)
        }
        environment = RankEnvironment(
            runID: runID, runDirectory: runDirectory, worldSize: rankCount,
            masterAddress: configuration.masterAddress, masterPort: port, resume: resume)
        environment.maxRestarts = configuration.policy.maxRestarts
        let doorbellPath = runDirectory + "/doorbell"
        if let page = graceful_doorbell_map(doorbellPath, 1) {
            doorbell = page
        } else {
            // Only speed is lost: every request still goes out on the channels.
            console.report("warning: no doorbell (\(SystemError("mapping \(doorbellPath)"))); ranks learn of requests from their channel alone")
        }
        inherited = RankEnvironment.processEnvironment()
        let header = "=== graceful run \(runID), \(Self.timestamp()) ===\n"
        for rank in 0..<rankCount {
            let logPath = "\(runDirectory)/rank_\(rank).log"
            let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fd < 0 {
                console.error("\(SystemError("open \(logPath)"))")
                logFDs.forEach(closeDescriptor)
                return stopGuard(ExitCode.cannotCreate)
            }
            writeAll(fd, header)
            logFDs.append(fd)
        }
        if let resume {
            console.report("resuming from committed step \(resume.step) (\(runDirectory)/\(CommitRecord.fileName))")
        }
        console.report("run \(runID): launching \(rankCount) rank(s): \(configuration.command.joined(separator: " "))")
        if let code = launchGang(restart: 0) { return stopGuard(code) }

        var nextStatCheck = monotonicNow() + ControlFileWatcher.statInterval
        while exitCode == nil {
            let now = monotonicNow()
            var wake = nextStatCheck
            if let deadline = coordinator.nextDeadline, deadline < wake { wake = deadline }
            if awaitingGangExit, now + Self.gangCheckInterval < wake { wake = now + Self.gangCheckInterval }
            let timeout = max(0, (wake.nanoseconds - now.nanoseconds + 999_999) / 1_000_000)
            let events: [EventLoop.Event]
            do {
                events = try loop.wait(timeoutMilliseconds: Int32(min(timeout, 60_000)))
            } catch {
                console.error("\(error); killing every rank")
                ranks.forEach { $0.process.signalGroup(SIGKILL) }
                return stopGuard(ExitCode.systemError)
            }
            var signalsReady = false
            var controlFileChanged = false
            // Output and channels first: a hello already sent counts before a signal in the same batch.
            for event in events {
                switch event.token {
                case Token.signals: signalsReady = true
                case Token.controlFile: controlFileChanged = watcher.drainEvents() || controlFileChanged
                default:
                    let (rank, kind) = Token.decode(event.token)
                    // Events of an attempt already replaced are stale: their descriptors are closed.
                    guard rank < ranks.count else { continue }
                    if kind == Token.channelKind {
                        readChannel(ranks[rank])
                    } else {
                        readOutput(ranks[rank], stream: kind - 1)
                    }
                }
            }
            if monotonicNow() >= nextStatCheck {
                nextStatCheck = monotonicNow() + ControlFileWatcher.statInterval
                controlFileChanged = watcher.changedSinceLastCheck() || controlFileChanged
            }
            if controlFileChanged && watcher.evaluate(warn: console.report) {
                trigger(.controlFile)
            }
            if signalsReady {
                for signal in signals.drain() {
                    if signal == SIGCHLD {
                        reapChildren()
                    } else if signal == SIGUSR2 {
                        apply(coordinator.handle(.requestCheckpoint("SIGUSR2"), now: monotonicNow()))
                    } else if signals.stopSignals.contains(signal) {
                        trigger(.signal(signal))
                    }
                }
            }
            if awaitingGangExit {
                if gangIsGone() {
                    awaitingGangExit = false
                    // Their ids may be reused now: the guard must not kill those groups any more.
                    ranks.forEach { tellGuard(-$0.process.pid) }
                    apply(coordinator.handle(.gangGone, now: monotonicNow()))
                } else {
                    // Orphans adopted since the last pass (a child of a dying process) get theirs too.
                    killStragglers()
                }
            }
            apply(coordinator.handle(.tick, now: monotonicNow()))
        }
        return finish(watcher: watcher)
    }

    /// Spawns every rank of an attempt. Returns an exit code when the launch failed (after killing
    /// what it had started), nil on success.
    private func launchGang(restart: Int) -> Int32? {
        environment.restartCount = restart
        ranks = []
        rankByPID = [:]
        for rank in 0..<configuration.ranks {
            do {
                let process = try RankProcess.spawn(
                    rank: rank, executable: executable, arguments: Array(configuration.command.dropFirst()),
                    environment: environment.variables(rank: rank, inherited: inherited))
                tellGuard(process.pid)
                let io = RankIO(process: process, log: logFDs[rank])
                ranks.append(io)
                rankByPID[process.pid] = rank
                try loop.register(process.channelFD, token: Token.channel(rank))
                try loop.register(process.outputFDs[0], token: Token.output(rank, stream: 0))
                try loop.register(process.outputFDs[1], token: Token.output(rank, stream: 1))
            } catch {
                console.error("cannot start rank \(rank): \(error)")
                for io in ranks {
                    io.process.signalGroup(SIGKILL)
                    var status: Int32 = 0
                    while waitpid(io.process.pid, &status, 0) < 0 && errno == EINTR {}
                    io.close(loop: loop)
                }
                return ExitCode.systemError
            }
        }
        apply(coordinator.handle(.launched, now: monotonicNow()))
        return nil
    }

    private func trigger(_ trigger: Trigger) {
        if stopTrigger == nil, case .running = coordinator.phase { stopTrigger = trigger }
        apply(coordinator.handle(.trigger(trigger), now: monotonicNow()))
    }

    /// Reaps every ended child: ranks become `.exited` events; orphans adopted as subreaper are just
    /// reaped, so no zombie is ever left.
    private func reapChildren() {
        while true {
            var status: Int32 = 0
            let pid = graceful_reap_any(&status)
            guard pid > 0 else { return }
            if pid == guardPID {
                guardPID = -1
                console.report("warning: the guard process ended unexpectedly; ranks are not protected against the coordinator's own death")
                continue
            }
            guard let rank = rankByPID[pid], coordinator.ranks[rank].isAlive else { continue }
            // A rank that confirmed and then exited at once: its confirmation must count first.
            readChannel(ranks[rank])
            let exit: ExitStatus = graceful_status_signaled(status) != 0
                ? .signaled(graceful_status_signal(status))
                : .exited(graceful_status_exit_code(status))
            apply(coordinator.handle(.exited(rank: rank, exit), now: monotonicNow()))
        }
    }

    /// True when no rank's process group has a member left and no descendant is left to reap.
    private func gangIsGone() -> Bool {
        reapChildren()
        if ranks.contains(where: \.process.groupExists) { return false }
        return !hasChildrenBesidesGuard()
    }

    // MARK: - Reading ranks

    private func readChannel(_ io: RankIO) {
        for line in io.readChannel(loop: loop) {
            switch line {
            case .message(let message):
                let rank = io.process.rank
                let event: CoordinatorEvent
                switch message {
                case .hello(let version, _):
                    if version != gracefulProtocolVersion {
                        console.report("warning: rank \(rank) speaks protocol version \(version); this graceful speaks \(gracefulProtocolVersion)")
                    }
                    event = .hello(rank: rank)
                case .position(let id, let step):
                    event = .position(rank: rank, id: id, step: step)
                case .checkpointed(let step, let path):
                    event = .checkpointed(rank: rank, step: step, path: path)
                }
                apply(coordinator.handle(event, now: monotonicNow()))
            case .invalid(let problem):
                console.report("warning: rank \(io.process.rank) wrote something that is not a protocol message (\(problem)); ignored, as is anything else it writes that is not one")
            }
        }
    }

    private func readOutput(_ io: RankIO, stream: Int) {
        for line in io.readOutput(stream: stream, loop: loop) {
            console.rankLine(rank: io.process.rank, line, toStandardError: stream == 1)
        }
    }

    // MARK: - Carrying out decisions

    private func apply(_ actions: [CoordinatorAction]) {
        for action in actions {
            switch action {
            case .ring(let id):
                if let doorbell { graceful_doorbell_ring(doorbell, UInt32(truncatingIfNeeded: id)) }
            case .send(let rank, let message):
                _ = ranks[rank].process.send(message.line)
            case .signal(let rank, let signal):
                ranks[rank].process.signalGroup(signal)
            case .commit(let step, let paths, let trigger):
                apply(coordinator.handle(commit(step: step, paths: paths, trigger: trigger), now: monotonicNow()))
            case .awaitGangExit:
                killStragglers()
                awaitingGangExit = true
            case .launch(let restart):
                for io in ranks { io.close(loop: loop) }
                environment.resume = currentRecord()
                console.report("restart \(restart): launching \(configuration.ranks) rank(s)")
                if let code = launchGang(restart: restart) { exitCode = code }
            case .report(let line):
                console.report(line)
            case .finish(let code):
                exitCode = code
            }
        }
    }

    /// Writes the record if every reported checkpoint exists; the event to feed back.
    private func commit(step: Int, paths: [CheckpointPath?], trigger: String) -> CoordinatorEvent {
        for (rank, path) in paths.enumerated() {
            guard let path else { continue }
            var info = stat()
            if path.withCString({ stat($0, &info) }) != 0 {
                return .commitFailed("rank \(rank)'s checkpoint \(path) does not exist")
            }
        }
        let record = CommitRecord(runID: runID, step: step, paths: paths, trigger: trigger, time: Self.timestamp())
        do {
            try AtomicFile.write(record.json, to: runDirectory + "/" + CommitRecord.fileName)
            return .commitWritten
        } catch {
            return .commitFailed("\(error)")
        }
    }

    /// The record on disk now (the one resumed from, or a later commit of this run).
    private func currentRecord() -> CommitRecord? {
        let path = runDirectory + "/" + CommitRecord.fileName
        guard case .some(.some(let contents)) = try? AtomicFile.read(path) else { return nil }
        return try? CommitRecord(contents: contents)
    }

    // MARK: - The guard and stragglers

    /// One word to the guard: a process group to watch (positive), to forget (negative), or 0 when
    /// the coordinator ends on purpose.
    private func tellGuard(_ value: Int32) {
        guard guardFD >= 0 else { return }
        var value = value
        _ = withUnsafeBytes(of: &value) { writeAll(guardFD, $0) }
    }

    /// Tells the guard the coordinator is done on purpose, and reaps it.
    private func stopGuard(_ code: Int32) -> Int32 {
        guard guardFD >= 0 else { return code }
        tellGuard(0)
        closeDescriptor(guardFD)
        guardFD = -1
        if guardPID > 0 {
            var status: Int32 = 0
            while waitpid(guardPID, &status, 0) < 0 && errno == EINTR {}
            guardPID = -1
        }
        return code
    }

    /// SIGKILL to every rank's process group and to every adopted orphan (a descendant that left its
    /// group, then lost its parent). Returns how many groups or orphans were signalled.
    @discardableResult
    private func killStragglers() -> Int {
        var signalled = 0
        for io in ranks where io.process.groupExists {
            io.process.signalGroup(SIGKILL)
            signalled += 1
        }
        for pid in childPIDs() where pid != guardPID {
            kill(pid, SIGKILL)
            signalled += 1
        }
        return signalled
    }

    /// The coordinator's children as the kernel lists them, adopted orphans included.
    private func childPIDs() -> [pid_t] {
        let me = getpid()
        guard let directory = opendir("/proc/\(me)/task") else { return [] }
        defer { closedir(directory) }
        var children: [pid_t] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard Int32(name) != nil,
                  case .some(.some(let text)) = try? AtomicFile.read("/proc/\(me)/task/\(name)/children", limit: 1 << 20)
            else { continue }
            children += String(decoding: text, as: UTF8.self).split(separator: " ").compactMap { pid_t($0) }
        }
        return children
    }

    private func hasChildrenBesidesGuard() -> Bool {
        childPIDs().contains { $0 != guardPID }
    }

    // MARK: - The end

    private func finish(watcher: ControlFileWatcher) -> Int32 {
        let code = exitCode ?? ExitCode.systemError
        // Every rank has ended; take what is still in the pipes without waiting for an end of file a
        // grandchild may be holding back.
        for io in ranks {
            for stream in 0..<2 {
                for line in io.drainOutput(stream: stream) {
                    console.rankLine(rank: io.process.rank, line, toStandardError: stream == 1)
                }
            }
        }
        if killStragglers() > 0 {
            console.report("killed processes left behind by the ranks (process groups and orphans)")
        }
        reapChildren()
        if let failure = coordinator.firstFailure, code == ExitCode.rankFailed, failure.rank < ranks.count {
            let tail = ranks[failure.rank].tail
            console.report("rank \(failure.rank) failed first (\(failure.status)); last lines of \(runDirectory)/rank_\(failure.rank).log:")
            if tail.isEmpty { console.report("  (no output)") }
            for line in tail { console.report("  | \(line)") }
        }
        let attempts = coordinator.attempts
        for attempt in attempts {
            var title = attempts.count > 1 ? "attempt \(attempt.restart + 1) of \(attempts.count)" : "summary"
            if let failure = attempt.failure { title += ": rank \(failure.rank) failed first (\(failure.status))" }
            console.report(title + ":")
            let pids = attempt.restart == coordinator.restarts ? ranks.map(\.process.pid) : []
            for line in RunSummary.table(ranks: attempt.ranks, pids: pids) {
                console.report("  " + line)
            }
        }
        if stopTrigger == .controlFile { resetControlFile() }
        console.report(Self.describe(code))
        for io in ranks { io.close(loop: loop) }
        logFDs.forEach(closeDescriptor)
        if doorbell != nil { unlink(runDirectory + "/doorbell") }
        return stopGuard(code)
    }

    /// After a stop the control file asked for, its flag goes back to 0, so the next launch is not refused.
    private func resetControlFile() {
        let path = configuration.controlFile
        switch ControlFileReset.reset(path) {
        case .reset(let file):
            console.report("reset \"\(ControlFileState.key)\" to 0 in \(file)")
        case .notRequested:
            break
        case .failed(let error):
            console.report("warning: could not reset \(path): \(error); set \"\(ControlFileState.key)\" to 0 before the next launch")
        }
    }

    static func describe(_ code: Int32) -> String {
        switch code {
        case ExitCode.success: return "exit 0"
        case ExitCode.rankFailed: return "exit 1: a rank failed"
        case ExitCode.notCommitted: return "exit 2: the stop did not commit a consistent checkpoint; the previous record is untouched"
        case 129...192: return "exit \(code): forced by \(SignalNumber.name(code - 128)); nothing committed"
        default: return "exit \(code)"
        }
    }

    // MARK: - Helpers

    private enum Token {
        static let signals = UInt64.max
        static let controlFile = UInt64.max - 1
        static let channelKind = 0
        static func channel(_ rank: Int) -> UInt64 { UInt64(rank) << 2 }
        static func output(_ rank: Int, stream: Int) -> UInt64 { UInt64(rank) << 2 | UInt64(stream + 1) }
        static func decode(_ token: UInt64) -> (rank: Int, kind: Int) { (Int(token >> 2), Int(token & 3)) }
    }

    static func newRunID() -> String {
        String(UInt64.random(in: 0...UInt64.max), radix: 16)
    }

    static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
