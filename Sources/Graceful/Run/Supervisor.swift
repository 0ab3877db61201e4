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

    private let configuration: RunConfiguration
    private let console = Console()
    private var coordinator: Coordinator
    private var processes: [RankProcess] = []
    private var channelSplitters: [LineSplitter] = []
    /// True while the rest of an overlong channel line is being skipped.
    private var discardingChannelLine: [Bool] = []
    private var warnedAboutChannel: [Bool] = []
    private var outputSplitters: [[LineSplitter]] = []
    private var logFDs: [Int32] = []
    private var tails: [[String]] = []
    private var runID = ""
    private var runDirectory = ""
    private var exitCode: Int32?
    private var stopTrigger: Trigger?

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
        var resume: CommitRecord?
        do {
            if let contents = try AtomicFile.read(recordPath) {
                resume = try CommitRecord(contents: contents)
            }
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
        let executable: String
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

        let loop: EventLoop
        let signals: SignalPipe
        let watcher = ControlFileWatcher(path: configuration.controlFile)
        do {
            loop = try EventLoop()
            signals = try SignalPipe()
            try loop.register(signals.readFD, token: Token.signals)
            if watcher.inotifyFD >= 0 { try loop.register(watcher.inotifyFD, token: Token.controlFile) }
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
            return ExitCode.systemError
        }
        let environment = RankEnvironment(
            runID: runID, runDirectory: runDirectory, worldSize: rankCount,
            masterAddress: configuration.masterAddress, masterPort: port, resume: resume)
        let inherited = Self.currentEnvironment()
        let header = "=== graceful run \(runID), \(Self.timestamp()) ===\n"
        for rank in 0..<rankCount {
            let logPath = "\(runDirectory)/rank_\(rank).log"
            let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fd < 0 {
                console.error("\(SystemError("open \(logPath)"))")
                abortLaunch()
                return ExitCode.cannotCreate
            }
            writeAll(fd, header)
            logFDs.append(fd)
        }
        if let resume {
            console.report("resuming from committed step \(resume.step) (\(runDirectory)/\(CommitRecord.fileName))")
        }
        console.report("run \(runID): launching \(rankCount) rank(s): \(configuration.command.joined(separator: " "))")
        for rank in 0..<rankCount {
            do {
                let process = try RankProcess.spawn(
                    rank: rank, executable: executable, arguments: Array(configuration.command.dropFirst()),
                    environment: environment.variables(rank: rank, inherited: inherited))
                processes.append(process)
                channelSplitters.append(LineSplitter(maximumLength: maximumMessageLength))
                discardingChannelLine.append(false)
                warnedAboutChannel.append(false)
                outputSplitters.append([
                    LineSplitter(maximumLength: Self.maximumOutputLine), LineSplitter(maximumLength: Self.maximumOutputLine),
                ])
                tails.append([])
                try loop.register(process.channelFD, token: Token.channel(rank))
                try loop.register(process.outputFDs[0], token: Token.output(rank, stream: 0))
                try loop.register(process.outputFDs[1], token: Token.output(rank, stream: 1))
            } catch {
                console.error("cannot start rank \(rank): \(error)")
                abortLaunch()
                return ExitCode.systemError
            }
        }

        var nextStatCheck = monotonicNow() + ControlFileWatcher.statInterval
        while exitCode == nil {
            let now = monotonicNow()
            var wake = nextStatCheck
            if let deadline = coordinator.nextDeadline, deadline < wake { wake = deadline }
            let timeout = max(0, (wake.nanoseconds - now.nanoseconds + 999_999) / 1_000_000)
            let events: [EventLoop.Event]
            do {
                events = try loop.wait(timeoutMilliseconds: Int32(min(timeout, 60_000)))
            } catch {
                console.error("\(error); stopping every rank")
                abortLaunch()
                return ExitCode.systemError
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
                    if kind == Token.channelKind {
                        readChannel(rank: rank, loop: loop)
                    } else {
                        readOutput(rank: rank, stream: kind - 1, loop: loop)
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
                        reapRanks()
                    } else if signals.stopSignals.contains(signal) {
                        trigger(.signal(signal))
                    }
                }
            }
            apply(coordinator.handle(.tick, now: monotonicNow()))
        }
        return finish(watcher: watcher)
    }

    private func trigger(_ trigger: Trigger) {
        if stopTrigger == nil, case .running = coordinator.phase { stopTrigger = trigger }
        apply(coordinator.handle(.trigger(trigger), now: monotonicNow()))
    }

    private func reapRanks() {
        for process in processes where coordinator.ranks[process.rank].isAlive {
            var status: Int32 = 0
            guard graceful_reap(process.pid, &status) == process.pid else { continue }
            let exit: ExitStatus = graceful_status_signaled(status) != 0
                ? .signaled(graceful_status_signal(status))
                : .exited(graceful_status_exit_code(status))
            apply(coordinator.handle(.exited(rank: process.rank, exit), now: monotonicNow()))
        }
    }

    // MARK: - Reading ranks

    private func readChannel(rank: Int, loop: EventLoop) {
        let process = processes[rank]
        guard process.channelFD >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { readAvailable(process.channelFD, into: $0) }
            guard let count else { return }
            if count == 0 {
                loop.unregister(process.channelFD)
                closeDescriptor(process.channelFD)
                process.channelFD = -1
                return
            }
            for (line, truncated) in channelSplitters[rank].append(buffer[0..<count]) {
                if truncated || discardingChannelLine[rank] {
                    if !discardingChannelLine[rank] { warnChannel(rank: rank, "a line longer than \(maximumMessageLength) bytes") }
                    discardingChannelLine[rank] = truncated
                    continue
                }
                receive(line, from: rank)
            }
        }
    }

    private func receive(_ line: [UInt8], from rank: Int) {
        let message: RankMessage
        do {
            message = try RankMessage(line: line)
        } catch {
            warnChannel(rank: rank, "\(error)")
            return
        }
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
    }

    /// One warning per rank for what it writes on its channel that is not a message.
    private func warnChannel(rank: Int, _ problem: String) {
        guard !warnedAboutChannel[rank] else { return }
        warnedAboutChannel[rank] = true
        console.report("warning: rank \(rank) wrote something that is not a protocol message (\(problem)); ignored, as is anything else it writes that is not one")
    }

    private func readOutput(rank: Int, stream: Int, loop: EventLoop) {
        let process = processes[rank]
        let fd = process.outputFDs[stream]
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { readAvailable(fd, into: $0) }
            guard let count else { return }
            if count == 0 {
                loop.unregister(fd)
                closeDescriptor(fd)
                process.outputFDs[stream] = -1
                if let rest = outputSplitters[rank][stream].finish() { emit(rest, rank: rank, stream: stream) }
                return
            }
            for (line, _) in outputSplitters[rank][stream].append(buffer[0..<count]) {
                emit(line, rank: rank, stream: stream)
            }
        }
    }

    private func emit(_ line: [UInt8], rank: Int, stream: Int) {
        let text = String(decoding: line, as: UTF8.self)
        writeAll(logFDs[rank], text + "\n")
        console.rankLine(rank: rank, text, toStandardError: stream == 1)
        tails[rank].append(text)
        if tails[rank].count > Self.tailLength { tails[rank].removeFirst() }
    }

    // MARK: - Carrying out decisions

    private func apply(_ actions: [CoordinatorAction]) {
        for action in actions {
            switch action {
            case .send(let rank, let message):
                _ = processes[rank].send(message.line)
            case .signal(let rank, let signal):
                processes[rank].signalGroup(signal)
            case .commit(let step, let paths, let trigger):
                let record = CommitRecord(
                    runID: runID, step: step, paths: paths, trigger: trigger.description, time: Self.timestamp())
                let path = runDirectory + "/" + CommitRecord.fileName
                do {
                    try AtomicFile.write(record.json, to: path)
                    apply(coordinator.handle(.commitWritten, now: monotonicNow()))
                } catch {
                    apply(coordinator.handle(.commitFailed("\(error)"), now: monotonicNow()))
                }
            case .report(let line):
                console.report(line)
            case .finish(let code):
                exitCode = code
            }
        }
    }

    // MARK: - The end

    private func finish(watcher: ControlFileWatcher) -> Int32 {
        let code = exitCode ?? ExitCode.systemError
        // Every rank has ended; take what is still in the pipes without waiting for an end of file a
        // grandchild may be holding back.
        for process in processes {
            for stream in 0..<2 where process.outputFDs[stream] >= 0 {
                var buffer = [UInt8](repeating: 0, count: 65536)
                while let count = buffer.withUnsafeMutableBytes({ readAvailable(process.outputFDs[stream], into: $0) }), count > 0 {
                    for (line, _) in outputSplitters[process.rank][stream].append(buffer[0..<count]) {
                        emit(line, rank: process.rank, stream: stream)
                    }
                }
                if let rest = outputSplitters[process.rank][stream].finish() { emit(rest, rank: process.rank, stream: stream) }
            }
        }
        for process in processes where process.groupExists {
            console.report("killing what is left in rank \(process.rank)'s process group (pgid \(process.pid))")
            process.signalGroup(SIGKILL)
        }
        if let failure = coordinator.firstFailure {
            console.report("rank \(failure.rank) failed first (\(failure.status)); last lines of \(runDirectory)/rank_\(failure.rank).log:")
            for line in tails[failure.rank] { console.report("  | \(line)") }
        }
        console.report("summary:")
        for line in RunSummary.table(ranks: coordinator.ranks, pids: processes.map(\.pid)) {
            console.report("  " + line)
        }
        if stopTrigger == .controlFile { resetControlFile() }
        console.report(Self.describe(code))
        for process in processes {
            closeDescriptor(process.channelFD)
            process.outputFDs.forEach(closeDescriptor)
        }
        logFDs.forEach(closeDescriptor)
        return code
    }

    /// After a stop the control file asked for, its flag goes back to 0 (other keys kept), so the next
    /// launch is not refused.
    private func resetControlFile() {
        let path = configuration.controlFile
        guard case .some(let contents) = try? AtomicFile.read(path, limit: ControlFileWatcher.maximumSize),
              case .object(var fields) = try? JSONParser.parse(contents),
              fields[ControlFileState.key]?.equalsOneLikePython == true
        else { return }
        fields[ControlFileState.key] = .int(0)
        do {
            try AtomicFile.write(JSONValue.object(fields).serialized + "\n", to: path)
            console.report("reset \"\(ControlFileState.key)\" to 0 in \(path)")
        } catch {
            console.report("warning: could not reset \(path): \(error); set \"\(ControlFileState.key)\" to 0 before the next launch")
        }
    }

    /// Launch failed half-way: kill what was started and reap it.
    private func abortLaunch() {
        for process in processes {
            process.signalGroup(SIGKILL)
            var status: Int32 = 0
            while waitpid(process.pid, &status, 0) < 0 && errno == EINTR {}
        }
        logFDs.forEach(closeDescriptor)
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

    static func currentEnvironment() -> [(String, String)] {
        var result: [(String, String)] = []
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result.append((String(text[..<equals]), String(text[text.index(after: equals)...])))
            }
            pointer += 1
        }
        return result
    }
}
