import CGraceful
import Glibc
import GracefulProtocol

/// Runs one `graceful run`: checks, launches the ranks, then one event loop (epoll over every pipe,
/// channel, the signal self-pipe and inotify; a timeout for the next deadline) that feeds what
/// happens into the `Coordinator` and carries out what it decides.
///
/// The loop never blocks and is never starved: every read is bounded per wakeup, every write it makes
/// is non-blocking (console, channels, the guard) or to a regular file (logs, the record), so a
/// signal, a deadline or a rank's exit is acted on at the next turn whatever the ranks print or the
/// terminal does. Processes are signalled only through pidfds of processes proven to descend from
/// the coordinator (`Descendants`), never by a process-group id that may have been recycled.
public final class Supervisor {
    /// Seconds between two checks that a failed gang is gone, and between two sweeps at the end.
    static let gangCheckInterval = 0.05
    /// Seconds between two hand-overs of newly adopted orphans to the guard.
    static let guardRefreshInterval = 1.0
    /// Milliseconds between two attempts to write to a console that did not keep up.
    static let consoleRetryMilliseconds: Int64 = 20
    /// How many sweeps of what the ranks left behind are made before giving up (about 5 s).
    static let finalSweeps = 100

    private let configuration: RunConfiguration
    private let console = Console()
    private var coordinator: Coordinator
    private var ranks: [RankIO] = []
    /// The rank of each process of the current attempt, so reaping is not a scan of every rank.
    private var rankByPID: [pid_t: Int] = [:]
    private var logFDs: [Int32] = []
    private var doorbell: (page: UnsafeMutablePointer<UInt32>, fd: Int32)?
    private var preflight: Preflight!
    private var runID = ""
    private var environment: RankEnvironment!
    private var inherited: [RankEnvironment.Variable] = []
    private var exitCode: Int32?
    private var awaitingGangExit = false
    private var processGuard: ProcessGuard!
    private var loop: EventLoop!
    private var signals: SignalPipe!
    private var watcher: ControlFileWatcher!
    private var reportedLostLogs: Set<Int> = []
    /// (restart count, rank) of every hello received, and the ranks warned about a second one.
    private var hellos: Set<[Int]> = []
    private var warnedSecondHello: Set<Int> = []
    /// How long the job was paused (Ctrl+Z until `fg`): the coordinator's clock stands still meanwhile,
    /// so no deadline expires while nobody could act.
    private var paused = 0.0
    /// The control file requested a stop during the run (in any phase): its flag is reset at the end.
    private var controlFileAskedToStop = false
    /// The process of the job that is not a rank (msrun's scheduler), if any.
    private var auxiliary: AuxiliaryProcess?
    /// The exit code the coordinator decided once every rank ended, while the auxiliary process
    /// still runs; the run ends when it has ended too.
    private var ranksExitCode: Int32?
    /// The last commit: the one resumed from, or the latest this run wrote. A restart resumes from it,
    /// whatever became of the file since.
    private var lastRecord: CommitRecord?
    /// The record the ranks resume from: this node's, or the leader's in a multi-node job.
    private var resumeRecord: CommitRecord?
    /// This node's part in a multi-node job.
    private var session: ClusterSession?
    private var world: ClusterWorld?
    /// The round in flight as the leader numbers it and as this node's coordinator does.
    private var leaderRound: (leader: Int, local: Int)?
    /// When this node last passed a stop signal to the leader: a storm is one signal, as on one node.
    private var lastForwardedSignalAt: Instant?
    private var leaderWaits = false
    /// The leader's number of a round being started here (`startLeadersRound`).
    private var startingLeaderRound: Int?

    public init(configuration: RunConfiguration) {
        self.configuration = configuration
        var policy = configuration.policy
        // The leader schedules the job's checkpoint rounds.
        if configuration.cluster != nil { policy.checkpointEvery = nil }
        coordinator = Coordinator(rankCount: configuration.ranks, policy: policy, clusterMember: configuration.cluster != nil)
        if let cluster = configuration.cluster { console.prefix = "graceful[node \(cluster.nodeRank)]: " }
    }

    /// Runs to the end and returns the exit code for `graceful`.
    public func run() -> Int32 {
        graceful_ensure_stdio()
        graceful_unblock_signals()
        let code: Int32
        do {
            preflight = try Preflight.check(configuration, warn: console.report)
            code = try supervise()
        } catch {
            console.error(error.message)
            code = error.exitCode
        }
        console.drain(milliseconds: 2000)
        return code
    }

    // MARK: - The run

    private func supervise() throws(RunFailure) -> Int32 {
        defer { preflight.lock.release() }
        do {
            loop = try EventLoop()
            signals = try SignalPipe()
            watcher = ControlFileWatcher(path: configuration.controlFile)
            try loop.register(signals.readFD, token: Token.signals)
            if watcher.inotifyFD >= 0 { try loop.register(watcher.inotifyFD, token: Token.controlFile) }
            let subreaperError = graceful_become_subreaper()
            if subreaperError != 0 { throw SystemError("prctl(PR_SET_CHILD_SUBREAPER)", errno: subreaperError) }
            processGuard = try ProcessGuard(keeping: preflight.lock.fd)
        } catch let error as SystemError {
            throw .system(error)
        } catch {
            throw .system(SystemError("setting up", errno: EINVAL))
        }
        defer { processGuard.release() }
        if watcher.inotifyFD < 0 {
            console.report("warning: cannot watch \(configuration.controlFile) with inotify; checking it every \(format(ControlFileWatcher.statInterval))s instead")
        }
        resumeRecord = preflight.resume
        if let cluster = configuration.cluster { try rendezvous(cluster) }
        defer { session?.close() }
        try prepareLaunch()
        defer { logFDs.forEach(closeDescriptor) }
        lastRecord = resumeRecord
        if let completed = preflight.completedRecord {
            console.report("the previous run completed at \(completed.completed ?? "?") after committing step \(completed.step); starting from scratch (its record is kept as \(preflight.runDirectory)/\(CommitRecord.completedFileName))")
        }
        if let resume = resumeRecord {
            console.report("resuming from committed step \(resume.step) (\(preflight.runDirectory)/\(CommitRecord.fileName))")
        }
        console.report("run \(runID): launching \(configuration.ranks) rank(s): \(configuration.command.joined(separator: " "))")
        try launchAuxiliary()
        try launchGang(restart: world?.restart ?? 0)
        supervisionLoop()
        return finish()
    }

    /// The run id, the port, the doorbell, the environment and the logs.
    private func prepareLaunch() throws(RunFailure) {
        if runID.isEmpty { runID = configuration.runID ?? Self.newRunID() }
        let port = configuration.masterPort ?? (configuration.cluster != nil ? ClusterOptions.defaultMasterPort : Int(graceful_free_tcp_port()))
        guard port > 0 else { throw .noFreePort }
        environment = RankEnvironment(
            runID: runID, runDirectory: preflight.runDirectory, worldSize: world?.worldSize ?? configuration.ranks,
            masterAddress: configuration.masterAddress, masterPort: port, resume: resumeRecord)
        environment.localWorldSize = configuration.ranks
        environment.nodeRank = configuration.cluster?.nodeRank ?? 0
        environment.maxRestarts = configuration.policy.maxRestarts
        var page: UnsafeMutablePointer<UInt32>?
        let fd = graceful_doorbell_create(&page)
        if fd >= 0, let page {
            doorbell = (page, fd)
            environment.hasDoorbell = true
        } else {
            // Only speed is lost: every request still goes out on the channels.
            console.report("warning: no doorbell (\(SystemError("memfd_create"))); ranks learn of requests from their channel alone")
        }
        inherited = RankEnvironment.processEnvironment().filter { configuration.extraEnvironment[$0.name] == nil }
            + configuration.extraEnvironment.sorted { $0.key < $1.key }.map { ($0.key, Array($0.value.utf8)) }
        let header = "=== graceful run \(runID), \(Self.timestamp()) ===\n"
        for rank in 0..<configuration.ranks {
            let logPath = configuration.rankLogPath(rank, runDirectory: preflight.runDirectory)
            let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            if fd < 0 { throw .logFile(SystemError("open \(logPath)")) }
            logFDs.append(fd)
            if !writeAll(fd, header) { throw .logFile(SystemError("write \(logPath)")) }
        }
    }

    private func supervisionLoop() {
        var nextStatCheck = clock() + ControlFileWatcher.statInterval
        var nextGuardRefresh = clock() + Self.guardRefreshInterval
        while exitCode == nil {
            let now = clock()
            var wake = min(nextStatCheck, nextGuardRefresh)
            if let deadline = coordinator.nextDeadline, deadline < wake { wake = deadline }
            if let deadline = auxiliary?.lifecycle.nextDeadline, deadline < wake { wake = deadline }
            if let deadline = session?.nextDeadline, deadline < wake { wake = deadline }
            if awaitingGangExit, now + Self.gangCheckInterval < wake { wake = now + Self.gangCheckInterval }
            var timeout = max(0, (wake.nanoseconds - now.nanoseconds + 999_999) / 1_000_000)
            if console.hasPending || session?.hasQueued == true { timeout = min(timeout, Self.consoleRetryMilliseconds) }
            let events: [EventLoop.Event]
            do {
                events = try loop.wait(timeoutMilliseconds: Int32(min(timeout, 60_000)))
            } catch {
                console.error("\(error); killing every process of the job")
                killDescendants()
                exitCode = ExitCode.systemError
                return
            }
            var signalsReady = false
            var controlFileChanged = false
            // Output and channels first: a hello already sent counts before a signal in the same batch.
            for event in events {
                switch event.token {
                case Token.signals: signalsReady = true
                case Token.controlFile: controlFileChanged = watcher.drainEvents() || controlFileChanged
                case Token.auxiliaryStdout, Token.auxiliaryStderr:
                    auxiliary?.io.readOutput(stream: event.token == Token.auxiliaryStdout ? 0 : 1, loop: loop, console: console)
                case let token where ClusterSession.isSessionToken(token):
                    guard let session else { continue }
                    session.handle(token: token, now: clock())
                    // The leader's word is acted on at once (a stop reaches this node's ranks before
                    // anything else of the batch is read); a relaunch closes the old ranks' descriptors,
                    // so later events of the batch read the new ranks' harmlessly.
                    obeyLeader(session)
                default:
                    let (rank, kind) = Token.decode(event.token)
                    // Events of an attempt already replaced are stale: their descriptors are closed.
                    guard rank < ranks.count else { continue }
                    if kind == Token.channelKind {
                        handle(ranks[rank].readChannel(loop: loop), from: rank)
                    } else {
                        if ranks[rank].readOutput(stream: kind - 1, loop: loop, console: console) {
                            apply(coordinator.handle(.output(rank: rank), now: clock()))
                        }
                        reportLostLog(of: rank)
                    }
                }
            }
            if clock() >= nextStatCheck {
                nextStatCheck = clock() + ControlFileWatcher.statInterval
                controlFileChanged = watcher.changedSinceLastCheck() || controlFileChanged
            }
            if controlFileChanged && watcher.evaluate(warn: console.report) {
                controlFileAskedToStop = true
                requestStop(.controlFile)
            }
            if signalsReady { handleSignals() }
            if awaitingGangExit {
                if gangIsGone() {
                    awaitingGangExit = false
                    apply(coordinator.handle(.gangGone, now: clock()))
                } else {
                    // Orphans adopted since the last pass (a child of a dying process) get theirs too.
                    killDescendants()
                }
            }
            if clock() >= nextGuardRefresh {
                nextGuardRefresh = clock() + Self.guardRefreshInterval
                // The ranks were handed over at launch: only adopted orphans are new.
                var children = Descendants.walk(
                    excluding: guardExclusion.union(rankByPID.keys).union([auxiliary?.pid].compactMap { $0 }), childrenOnly: true)
                processGuard.watch(children)
                children.close()
            }
            apply(coordinator.handle(.tick, now: clock()))
            auxiliary?.handle(console: console) { $0.tick(now: clock()) }
            if let session {
                session.tick(now: clock())
                obeyLeader(session)
            }
            settleExitCode()
            console.flush()
            // The leader serves the other nodes until each has finished or is lost.
            if exitCode != nil, let session, !session.allEnded {
                if !leaderWaits { console.report("this node's ranks ended; the leader serves the other nodes until they end") }
                leaderWaits = true
                exitCode = nil
            }
        }
    }

    private func handleSignals() {
        for signal in signals.drain() {
            switch signal {
            case SIGCHLD:
                reapChildren()
            case SIGUSR2:
                if let session {
                    session.tell(.checkpointRequest("SIGUSR2"), now: clock())
                    obeyLeader(session)
                } else {
                    apply(coordinator.handle(.requestCheckpoint("SIGUSR2"), now: clock()))
                }
            case SIGTSTP:
                pauseJob()
            case SIGCONT:
                // Also after a SIGSTOP sent to the coordinator alone: the job goes on with it.
                deliverToAll(SIGCONT)
            case _ where ranksExitCode != nil && session == nil && (SignalPipe.quitSignals.contains(signal) || signals.stopSignals.contains(signal)):
                auxiliary?.handle(console: console) { $0.interrupted(now: clock()) }
            case _ where SignalPipe.quitSignals.contains(signal):
                requestStop(.quit(signal))
            case _ where signals.stopSignals.contains(signal):
                requestStop(.signal(signal))
            default:
                break
            }
        }
    }

    // MARK: - Several nodes

    /// A stop trigger seen here: this node's coordinator takes it, or, in a multi-node job, the
    /// leader, which asks every node. A storm of signals is passed on as one.
    private func requestStop(_ trigger: Trigger) {
        guard let session else {
            apply(coordinator.handle(.trigger(trigger), now: clock()))
            return
        }
        if trigger.signalNumber != nil {
            let now = clock()
            defer { lastForwardedSignalAt = now }
            if let last = lastForwardedSignalAt, now.seconds(since: last) < configuration.policy.signalDebounce { return }
        }
        session.tell(.trigger(trigger), now: clock())
        obeyLeader(session)
    }

    private func tellLeader(_ report: NodeReport) {
        guard let session else { return }
        switch report {
        case .position(let local, let furthest):
            if let round = leaderID(ofLocal: local) { session.tell(.position(round: round, furthest: furthest), now: clock()) }
        case .roundFailed(let local, let problem):
            if let round = leaderID(ofLocal: local) { session.tell(.roundFailed(round: round, "\(problem)"), now: clock()) }
        case .rankFailed(let rank, let status):
            session.tell(.rankFailed("rank \(globalRank(rank)) failed (\(status))"), now: clock())
        case .cleared(let restart):
            session.tell(.cleared(restart: restart), now: clock())
        }
    }

    private func globalRank(_ localRank: Int) -> Int {
        (configuration.cluster?.nodeRank ?? 0) * configuration.ranks + localRank
    }

    /// Carries out what the leader said to this node, then sends what the leader queued for the other
    /// nodes (already sent if this node's doorbell rang: `apply`).
    private func obeyLeader(_ session: ClusterSession) {
        obey(session.takeCommands())
        session.sendQueued()
    }

    /// Carries out what the leader says to this node.
    private func obey(_ commands: [ClusterCommand]) {
        for command in commands {
            switch command {
            case .stop(let round, let trigger):
                startLeadersRound(round) { apply(coordinator.handle(.trigger(trigger), now: clock())) }
            case .checkpoint(let round, let trigger):
                startLeadersRound(round) { apply(coordinator.handle(.requestCheckpoint(trigger), now: clock())) }
            case .escalate(let trigger):
                apply(coordinator.handle(.escalate(trigger), now: clock()))
            case .step(let round, let step):
                if let mapped = leaderRound, mapped.leader == round {
                    apply(coordinator.handle(.stepChosen(round: mapped.local, step: step), now: clock()))
                }
            case .committed(let round, let text):
                guard let mapped = leaderRound, mapped.leader == round else { continue }
                keepCopy(of: text)
                apply(coordinator.handle(.commitWritten, now: clock()))
            case .roundFailed(let round, let reason):
                if let mapped = leaderRound, mapped.leader == round {
                    apply(coordinator.handle(.roundFailedElsewhere(round: mapped.local, reason), now: clock()))
                }
            case .nodeFailed(let reason):
                apply(coordinator.handle(.nodeFailed(reason), now: clock()))
            case .restart(let restart, let maxRestarts, let reason):
                apply(coordinator.handle(.restartJob(restart: restart, maxRestarts: maxRestarts, reason), now: clock()))
            case .launch(let world, let record):
                // A restart's relaunch, from the job's last commit.
                if let record { keepCopy(of: record) }
                leaderRound = nil
                apply(coordinator.handle(.relaunch(restart: world.restart), now: clock()))
            case .refused, .ping:
                break
            }
        }
    }

    /// Feeds the leader's round request to this node's coordinator; a node that cannot take part
    /// (its ranks failed or ended) says so at once, so the round fails everywhere without waiting.
    private func startLeadersRound(_ round: Int, _ start: () -> Void) {
        let before = coordinator.currentRoundID
        startingLeaderRound = round
        start()
        startingLeaderRound = nil
        if let local = coordinator.currentRoundID, local != before {
            leaderRound = (round, local)
        } else {
            session?.tell(.roundFailed(round: round, "its ranks are not running (\(coordinator.phase))"), now: clock())
        }
    }

    /// The leader's number of this node's round `local`. While a round of the leader's starts here,
    /// what the coordinator reports of a new round (all at once, when no rank speaks the protocol)
    /// is that round's.
    private func leaderID(ofLocal local: Int) -> Int? {
        if let starting = startingLeaderRound, leaderRound?.local != local { leaderRound = (starting, local) }
        guard let round = leaderRound, round.local == local else { return nil }
        return round.leader
    }

    /// A follower's copy of the leader's record: what the next launch checks against the leader's.
    private func keepCopy(of text: String) {
        guard let record = try? CommitRecord(contents: Array(text.utf8)) else { return }
        lastRecord = record
        guard session?.isLeader == false else { return }
        do {
            try AtomicFile.write(text, to: preflight.runDirectory + "/" + CommitRecord.fileName)
        } catch {
            console.report("warning: could not keep a copy of the leader's record of step \(record.step) in \(preflight.runDirectory): \(error)")
        }
    }

    /// Waits until every node joined and the leader launches (or refuses) the job.
    private func rendezvous(_ options: ClusterOptions) throws(RunFailure) {
        let masterPort = configuration.masterPort ?? ClusterOptions.defaultMasterPort
        let settings = ClusterSession.Settings(
            nodeCount: options.nodeCount, nodeRank: options.nodeRank,
            rendezvousHost: options.rendezvousHost ?? configuration.masterAddress,
            rendezvousPort: options.rendezvousPort ?? masterPort + 1,
            rendezvousTimeout: options.rendezvousTimeout, heartbeatTimeout: options.heartbeatTimeout,
            secret: preflight.clusterSecret ?? [])
        let join = ClusterJoin(
            node: options.nodeRank, nodeCount: options.nodeCount, localRanks: configuration.ranks, command: configuration.command,
            commit: resumeRecord.map { .init(runID: $0.runID, step: $0.step) }, host: NetworkAddress.hostName())
        if options.nodeRank == 0 { runID = configuration.runID ?? Self.newRunID() }
        let policy = ClusterLeader.Policy(
            grace: configuration.policy.grace, alignTimeout: configuration.policy.alignTimeout,
            checkpointEvery: configuration.policy.checkpointEvery, rendezvousTimeout: options.rendezvousTimeout,
            maxRestarts: configuration.policy.maxRestarts, restartBackoff: configuration.policy.restartBackoff)
        let session: ClusterSession
        do {
            session = try ClusterSession(
                settings: settings, join: join, runID: runID, record: resumeRecord?.json, policy: policy,
                loop: loop, now: clock(), report: console.report)
        } catch {
            throw .system(error)
        }
        self.session = session
        session.writeRecord = { [unowned self] step, paths, trigger in self.writeJobRecord(step: step, paths: paths, trigger: trigger) }
        if !session.isLeader { console.report("joining the job at \(settings.rendezvousHost):\(settings.rendezvousPort)") }
        while session.outcome == .gathering {
            let wait = max(0, min(1000, (session.nextDeadline.nanoseconds - clock().nanoseconds) / 1_000_000 + 1))
            let events: [EventLoop.Event]
            do {
                events = try loop.wait(timeoutMilliseconds: Int32(session.hasQueued ? min(wait, 20) : wait))
            } catch {
                throw .system(SystemError("epoll_wait"))
            }
            var controlFileChanged = false
            for event in events {
                if ClusterSession.isSessionToken(event.token) { session.handle(token: event.token, now: clock()) }
                // Read, or epoll reports the watch ready at once, forever.
                if event.token == Token.controlFile { controlFileChanged = watcher.drainEvents() || controlFileChanged }
            }
            if controlFileChanged && watcher.evaluate(warn: console.report) {
                // Nothing was launched: as when the file requests the exit before the start.
                session.drain(milliseconds: 200)
                throw .controlFileRequestsExit(path: configuration.controlFile)
            }
            for signal in signals.drain() where signals.stopSignals.contains(signal) || SignalPipe.quitSignals.contains(signal) {
                session.drain(milliseconds: 200)
                throw .stoppedBeforeLaunch(signal)
            }
            session.tick(now: clock())
            console.flush()
        }
        switch session.outcome {
        case .gathering:
            break
        case .refused(let reason):
            session.drain(milliseconds: 500)
            throw .rendezvous(reason)
        case .launched(let launched, let text):
            world = launched
            runID = launched.runID
            if launched.restart > 0 {
                // This node joined the job's restart: its attempts are numbered as the job's.
                coordinator = Coordinator(
                    rankCount: configuration.ranks, policy: coordinator.policy, clusterMember: true, restarts: launched.restart)
            }
            if let text {
                guard let record = try? CommitRecord(contents: Array(text.utf8)), record.worldSize == launched.worldSize else {
                    throw .rendezvous("the leader's record does not fit a job of \(launched.worldSize) rank(s)")
                }
                if record != resumeRecord { keepCopy(of: text) }
                resumeRecord = record
            }
        }
    }

    /// The leader's commit of the whole job's record.
    private func writeJobRecord(step: Int, paths: [CheckpointPath?], trigger: String) -> Result<String, ClusterSession.CommitFailure> {
        // Every node checked its own ranks' files before confirming (the leader may not see them).
        if let failure = writeRecord(step: step, paths: paths, trigger: trigger) { return .failure(.init(reason: failure)) }
        return .success(lastRecord?.json ?? "")
    }

    /// Starts the auxiliary process, if the run has one, before any rank (msrun starts MindSpore's
    /// scheduler first).
    private func launchAuxiliary() throws(RunFailure) {
        guard let wanted = configuration.auxiliary else { return }
        let process = try AuxiliaryProcess.launch(
            wanted, executable: preflight.executable, arguments: Array(configuration.command.dropFirst()),
            environment: environment.schedulerVariables(inherited: inherited), openFilesLimit: preflight.rankOpenFilesLimit,
            killAfter: configuration.policy.killAfter, header: "=== graceful run \(runID), \(Self.timestamp()) ===\n",
            loop: loop, tokens: [Token.auxiliaryStdout, Token.auxiliaryStderr])
        processGuard.watch(rank: process.io.process)
        auxiliary = process
        console.report("started the \(wanted.name) (pid \(process.pid)), log \(wanted.logPath)")
    }

    /// The run ends once every rank ended and the auxiliary process, if any, has too; its failure
    /// fails a job that otherwise succeeded.
    private func settleExitCode() {
        guard let code = ranksExitCode, exitCode == nil else { return }
        guard let auxiliary else {
            exitCode = code
            return
        }
        if auxiliary.lifecycle.hasEnded { exitCode = auxiliary.lifecycle.exitCode(ranks: code) }
    }

    /// Spawns every rank of an attempt; on failure, kills what it had started.
    private func launchGang(restart: Int) throws(RunFailure) {
        environment.restartCount = restart
        ranks = []
        rankByPID = [:]
        for rank in 0..<configuration.ranks {
            do {
                let process = try RankProcess.spawn(
                    rank: rank, executable: preflight.executable, arguments: Array(configuration.command.dropFirst()),
                    environment: environment.variables(rank: rank, inherited: inherited),
                    doorbellFD: doorbell?.fd, openFilesLimit: preflight.rankOpenFilesLimit)
                processGuard.watch(rank: process)
                session?.keepAlive(now: clock())
                let io = RankIO(
                    process: process, log: logFDs[rank], label: "rank\(globalRank(rank))",
                    showsOnConsole: configuration.consoleRanks?.contains(rank) ?? true)
                ranks.append(io)
                rankByPID[process.pid] = rank
                try loop.register(process.channelFD, token: Token.channel(rank))
                try loop.register(process.outputFDs[0], token: Token.output(rank, stream: 0))
                try loop.register(process.outputFDs[1], token: Token.output(rank, stream: 1))
            } catch {
                abandonLaunch()
                throw .spawning(error, executable: preflight.executable)
            }
        }
        apply(coordinator.handle(.launched, now: clock()))
    }

    /// Kills and reaps every process started so far (a launch failed half-way).
    private func abandonLaunch() {
        for _ in 0..<Self.finalSweeps where killDescendants() > 0 {
            _ = waitForSignals(milliseconds: Int32(Self.gangCheckInterval * 1000))
            reapChildren()
        }
        ranks.forEach { $0.close(loop: loop) }
        ranks = []
    }

    /// Reaps every ended child: ranks become `.exited` events; orphans adopted as subreaper are just
    /// reaped, so no zombie is ever left.
    private func reapChildren() {
        while true {
            var status: Int32 = 0
            let pid = graceful_reap_any(&status)
            guard pid > 0 else { return }
            if pid == processGuard.pid {
                if processGuard.replace(handing: ranks.map(\.process) + [auxiliary?.io.process].compactMap { $0 }) {
                    console.report("warning: the guard process ended unexpectedly; started a new one")
                } else {
                    console.report("warning: the guard process ended unexpectedly and cannot be replaced (\(SystemError("fork"))); the ranks are not protected against the coordinator's own death")
                }
                continue
            }
            if let auxiliary, pid == auxiliary.pid {
                auxiliary.reaped(Self.exitStatus(status), now: clock(), console: console)
                continue
            }
            guard let rank = rankByPID[pid], coordinator.ranks[rank].isAlive else { continue }
            // A rank that confirmed and then exited at once: its confirmation must count first.
            handle(ranks[rank].drainChannel(loop: loop), from: rank)
            ranks[rank].process.closePidfd()
            apply(coordinator.handle(.exited(rank: rank, Self.exitStatus(status)), now: clock()))
        }
    }

    private static func exitStatus(_ status: Int32) -> ExitStatus {
        graceful_status_signaled(status) != 0 ? .signaled(graceful_status_signal(status)) : .exited(graceful_status_exit_code(status))
    }

    /// True when no process of the job is left: the coordinator, subreaper of them all, has no child
    /// but its guard.
    private func gangIsGone() -> Bool {
        reapChildren()
        var snapshot = Descendants.walk(excluding: guardExclusion)
        defer { snapshot.close() }
        return snapshot.isEmpty
    }

    private var guardExclusion: Set<pid_t> {
        processGuard.pid > 0 ? [processGuard.pid] : []
    }

    // MARK: - Reading ranks

    private func handle(_ lines: [RankIO.ChannelLine], from rank: Int) {
        for line in lines {
            switch line {
            case .message(let message):
                let event: CoordinatorEvent
                switch message {
                case .hello(let version, let pid):
                    // docs/PROTOCOL.md, "hello": one per launch of a rank; a second one (a process the
                    // rank started that inherited its channel) is warned about once and changes nothing.
                    guard hellos.insert([environment.restartCount, rank]).inserted else {
                        if warnedSecondHello.insert(rank).inserted {
                            console.report("warning: rank \(rank) said hello a second time (pid \(pid)); ignored: a process it started has probably inherited its channel")
                        }
                        continue
                    }
                    if version != gracefulProtocolVersion {
                        console.report("warning: rank \(rank) speaks protocol version \(version); this graceful speaks \(gracefulProtocolVersion), and treats it as such")
                    }
                    event = .hello(rank: rank)
                case .position(let id, let step):
                    event = .position(rank: rank, id: id, step: step)
                case .checkpointed(let step, let path):
                    event = .checkpointed(rank: rank, step: step, path: path)
                }
                apply(coordinator.handle(event, now: clock()))
            case .invalid(let problem):
                console.report("warning: rank \(rank) wrote something that is not a protocol message (\(problem)); ignored, as is anything else it writes that is not one")
            }
        }
    }

    private func reportLostLog(of rank: Int) {
        let lost = ranks[rank].relay.logLostBytes
        guard lost > 0, reportedLostLogs.insert(rank).inserted else { return }
        console.report("warning: \(configuration.rankLogPath(rank, runDirectory: preflight.runDirectory)) cannot be written (\(SystemError("write").reason)); its lines go to the console only")
    }

    // MARK: - Carrying out decisions

    private func apply(_ actions: [CoordinatorAction]) {
        var signalsDue: [(rank: Int, signal: Int32)] = []
        // A ring stores the request, says so, then wakes: see `.ring`.
        var rang = false
        func wake() {
            guard rang else { return }
            rang = false
            session?.sendQueued()
            if let doorbell { graceful_doorbell_wake(doorbell.page) }
        }
        defer { wake() }
        for action in actions {
            if case .report = action {} else { wake() }
            if case .signal(let rank, let signal) = action {
                signalsDue.append((rank, signal))
                continue
            }
            // One walk of the process tree serves a whole run of signals (a stop of 1024 plain ranks).
            deliver(signalsDue)
            signalsDue = []
            switch action {
            case .ring(let id):
                // Every rank of this node has the request in memory from this store on. The line
                // saying so follows at once; then, on the leader, the other nodes hear of it, before
                // this node wakes anything of its own (a waiter or a rank's reader woken first would
                // take this CPU); then the waiters, then the channels.
                if let doorbell { graceful_doorbell_store(doorbell.page, UInt32(truncatingIfNeeded: id)) }
                rang = true
            case .send(let rank, let message):
                _ = ranks[rank].process.send(message.line)
            case .signal:
                break
            case .commit(let step, let paths, let trigger):
                if let session {
                    // This node's ranks confirmed: the leader commits for the whole job, once each
                    // node checked its own ranks' files (the leader may not see this node's disk).
                    if let missing = paths.indices.first(where: { paths[$0].map { !$0.exists } ?? false }) {
                        apply(coordinator.handle(.commitFailed("rank \(globalRank(missing))'s checkpoint \(paths[missing]!) does not exist"), now: clock()))
                    } else if let round = leaderRound {
                        session.tell(.confirmed(round: round.leader, step: step, paths: paths), now: clock())
                    }
                } else {
                    apply(coordinator.handle(commit(step: step, paths: paths, trigger: trigger), now: clock()))
                }
            case .tellLeader(let report):
                tellLeader(report)
            case .awaitGangExit:
                killDescendants()
                awaitingGangExit = true
            case .launch(let restart):
                for io in ranks { io.close(loop: loop) }
                environment.resume = lastRecord
                console.report("restart \(restart): launching \(configuration.ranks) rank(s)")
                do {
                    try launchGang(restart: restart)
                } catch {
                    console.error(error.message)
                    exitCode = error.exitCode
                }
            case .report(let line):
                console.report("\(line)")
            case .finish(let code):
                ranksExitCode = code
                session?.tell(.finished(exitCode: code), now: clock())
                auxiliary?.handle(console: console) { $0.ranksEnded(now: clock()) }
                settleExitCode()
            }
        }
        deliver(signalsDue)
    }

    /// Sends each signal to its rank: the rank itself, everything below it in the process tree (also
    /// what left its process group), and what is still in its group.
    private func deliver(_ due: [(rank: Int, signal: Int32)]) {
        guard !due.isEmpty else { return }
        var snapshot = Descendants.walk(excluding: guardExclusion)
        defer { snapshot.close() }
        for (rank, signal) in due {
            let process = ranks[rank].process
            process.signal(signal)
            for member in snapshot.members(ofRankLed: process.pid) where member.pid != process.pid {
                member.send(signal)
            }
        }
    }

    /// Ctrl+Z: every process of the job stops, then the coordinator, so the shell sees the job
    /// stopped; it goes on from here when continued, and the job with it.
    private func pauseJob() {
        // Handed to the guard too: a coordinator dying while they are stopped must find them held.
        deliverToAll(SIGSTOP, handingToGuard: true)
        console.report("paused: every rank is stopped (SIGSTOP); fg or SIGCONT resumes the job")
        console.drain(milliseconds: 100)
        let before = monotonicNow()
        kill(getpid(), SIGSTOP)
        paused += monotonicNow().seconds(since: before)
        deliverToAll(SIGCONT)
        console.report("resumed after \(format((monotonicNow().seconds(since: before) * 10).rounded() / 10))s")
    }

    /// `signal` to every descendant but the guard. Returns how many were signalled.
    @discardableResult
    private func deliverToAll(_ signal: Int32, handingToGuard: Bool = false) -> Int {
        var snapshot = Descendants.walk(excluding: guardExclusion)
        defer { snapshot.close() }
        snapshot.processes.forEach { $0.send(signal) }
        if handingToGuard { processGuard.watch(snapshot) }
        return snapshot.processes.count
    }

    /// The coordinator's clock: monotonic, without the time the job was paused.
    private func clock() -> Instant {
        monotonicNow() + -paused
    }

    /// SIGKILL to every descendant but the guard. Returns how many were signalled.
    @discardableResult
    private func killDescendants() -> Int {
        deliverToAll(SIGKILL)
    }

    /// Waits up to `milliseconds` for a signal (SIGCHLD: a child changed state); the signals received.
    private func waitForSignals(milliseconds: Int32) -> [Int32] {
        var ready = pollfd(fd: signals.readFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&ready, 1, milliseconds)
        return signals.drain()
    }

    /// Writes the record if every reported checkpoint exists; the event to feed back.
    private func commit(step: Int, paths: [CheckpointPath?], trigger: String) -> CoordinatorEvent {
        for (rank, path) in paths.enumerated() {
            guard let path else { continue }
            if !path.exists {
                return .commitFailed("rank \(rank)'s checkpoint \(path) does not exist")
            }
        }
        return writeRecord(step: step, paths: paths, trigger: trigger).map { .commitFailed($0) } ?? .commitWritten
    }

    /// Writes the commit record atomically; nil, or why it failed (the previous record stands).
    private func writeRecord(step: Int, paths: [CheckpointPath?], trigger: String) -> String? {
        let record = CommitRecord(
            runID: runID, step: step, paths: paths, trigger: trigger, time: Self.timestamp(),
            directory: currentDirectory().flatMap { CheckpointPath(bytes: $0) })
        guard preflight.lock.isStillHeld(in: preflight.runDirectory) else { return Self.runDirectoryLost(preflight.runDirectory) }
        do {
            try AtomicFile.write(record.json, to: preflight.runDirectory + "/" + CommitRecord.fileName)
            lastRecord = record
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// The record on disk now (the one resumed from, or a later commit of this run).
    private func currentRecord() -> CommitRecord? {
        (try? CommitRecord.load(from: preflight.runDirectory + "/" + CommitRecord.fileName)) ?? nil
    }

    // MARK: - The end

    /// Every rank has ended: kills what they left behind until nothing is left (a process whose
    /// parent dies during a sweep is adopted and found by the next), relays what is left in the
    /// pipes, reports, and resets the control file after a stop it asked for.
    private func finish() -> Int32 {
        var code = exitCode ?? ExitCode.systemError
        // The leader's node may have finished its training while another node was lost: the job
        // failed, and its record must not be marked completed. (A stop's exit code stands.)
        let jobFailure = code == ExitCode.success && coordinator.stopTrigger == nil ? session?.jobFailure : nil
        if jobFailure != nil { code = ExitCode.rankFailed }
        let leftoversOutlivedTheGrace = !awaitLeftovers()
        if leftoversOutlivedTheGrace && code == ExitCode.success && !coordinator.ranks.contains(where: \.speaksProtocol) {
            // Nothing was committed: a clean stop of plain ranks is one where everything they started
            // stopped too; a worker SIGKILLed at the end may have lost its state.
            console.report("error: processes the ranks left behind did not exit within the grace and are killed: the stop was not clean")
            code = ExitCode.notCommitted
        }
        var killed = 0
        for _ in 0..<Self.finalSweeps {
            reapChildren()
            let count = killDescendants()
            if count == 0 { break }
            killed += count
            _ = waitForSignals(milliseconds: Int32(Self.gangCheckInterval * 1000))
        }
        if killed > 0 {
            console.report("killed \(killed) process(es) the ranks left behind")
        }
        for io in ranks + [auxiliary?.io].compactMap({ $0 }) { io.drainOutput(loop: loop, console: console) }
        let failure = coordinator.firstFailure.flatMap { failure in
            failure.rank < ranks.count ? (failure, ranks[failure.rank].relay.tail) : nil
        }
        let report = RunReport(
            attempts: coordinator.attempts, maximumAttempts: configuration.policy.maxRestarts + 1, failure: failure, pids: ranks.map(\.process.pid),
            runDirectory: preflight.runDirectory, exitCode: code, droppedConsoleLines: console.droppedLines,
            rankLogPaths: configuration.rankLogPaths, firstRank: globalRank(0))
        let lines = report.lines
        lines.dropLast().forEach(console.report)
        if controlFileAskedToStop { resetControlFile() }
        if code == ExitCode.success && coordinator.stopTrigger == nil { markCompleted() }
        if let jobFailure {
            console.report("exit 1: \(jobFailure)")
        } else if let failure = auxiliary?.lifecycle.failure, code == ExitCode.rankFailed, coordinator.firstFailure == nil {
            console.report("exit 1: \(failure)")
        } else if let elsewhere = coordinator.failedElsewhere, code == ExitCode.rankFailed, coordinator.firstFailure == nil {
            console.report("exit 1: \(elsewhere)")
        } else {
            lines.last.map(console.report)
        }
        for io in ranks { io.close(loop: loop) }
        auxiliary?.close(loop: loop)
        // The leader must hear how this node ended before it goes.
        session?.drain(milliseconds: 1000)
        if let doorbell {
            munmap(doorbell.page, Int(GRACEFUL_DOORBELL_SIZE))
            closeDescriptor(doorbell.fd)
        }
        return code
    }

    /// Every rank finished its work: the record, if any, says so, and the next launch starts from
    /// scratch instead of silently training again from the last commit.
    private func markCompleted() {
        guard var record = currentRecord() else { return }
        guard preflight.lock.isStillHeld(in: preflight.runDirectory) else {
            console.report("warning: could not mark \(preflight.runDirectory)/\(CommitRecord.fileName) completed: \(Self.runDirectoryLost(preflight.runDirectory))")
            return
        }
        record.completed = Self.timestamp()
        do {
            try AtomicFile.write(record.json, to: preflight.runDirectory + "/" + CommitRecord.fileName)
            console.report("the run completed: the next launch starts from scratch (the record of step \(record.step) is kept, marked completed)")
        } catch {
            console.report("warning: could not mark \(preflight.runDirectory)/\(CommitRecord.fileName) completed: \(error); the next launch would resume from step \(record.step)")
        }
    }

    /// After a stop, what the ranks left behind (a launcher's workers that left its process group
    /// with `setsid`, a daemonized helper) gets SIGTERM and the rest of the grace to save and exit, as
    /// the ranks had; the sweep then kills what is still there. A stop signal meanwhile cuts it short.
    /// Returns false when some are still there at the end of the grace.
    private func awaitLeftovers() -> Bool {
        guard let deadline = coordinator.leftoversDeadline, !gangIsGone() else { return true }
        // A protocol rank's leftovers had no SIGTERM yet: the stop sequence starts for them now.
        let left = deliverToAll(SIGTERM)
        console.report("\(left) process(es) the ranks left behind got SIGTERM; waiting up to \(format(max(0, deadline.seconds(since: clock()).rounded())))s (the rest of the grace) before SIGKILL")
        console.flush()
        while clock() < deadline {
            let received = waitForSignals(milliseconds: Int32(min(100, max(1, deadline.seconds(since: clock()) * 1000))))
            if received.contains(where: { signals.stopSignals.contains($0) || SignalPipe.quitSignals.contains($0) }) { return false }
            if gangIsGone() { return true }
        }
        return gangIsGone()
    }

    /// After a stop the control file asked for, its flag goes back to 0 (every other byte kept), so the
    /// next launch is not refused.
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

    // MARK: - Helpers

    private enum Token {
        static let signals = UInt64.max
        static let controlFile = UInt64.max - 1
        static let auxiliaryStdout = UInt64.max - 2
        static let auxiliaryStderr = UInt64.max - 3
        static let channelKind = 0
        static func channel(_ rank: Int) -> UInt64 { UInt64(rank) << 2 }
        static func output(_ rank: Int, stream: Int) -> UInt64 { UInt64(rank) << 2 | UInt64(stream + 1) }
        static func decode(_ token: UInt64) -> (rank: Int, kind: Int) { (Int(token >> 2), Int(token & 3)) }
    }

    static func runDirectoryLost(_ directory: String) -> String {
        "\(directory) or its lock was removed during the run (another run may own it now); nothing is written there"
    }

    /// 16 hex digits, always.
    static func newRunID() -> String {
        let digits = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
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
