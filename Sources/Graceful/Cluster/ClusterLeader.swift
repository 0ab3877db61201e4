import GracefulProtocol

/// The leader of a multi-node job (the coordinator of node rank 0), as a state machine with no
/// system calls: the rendezvous, then one round at a time for the whole job. It is the single-node
/// protocol one level up: each node's coordinator aligns its own ranks and reports its furthest
/// position; the leader picks one step for every rank of every node; each node reports that its
/// ranks confirmed; the leader commits when every node did, and tells every node.
///
/// Node 0 is the leader's own node: its messages come in and its commands go out like any other's.
///
/// Guarantees (`ClusterLeaderPropertyTests` checks each after every input of random runs):
/// - `.launch` goes to every node only once every node rank of `0..<nodeCount` joined with the
///   same node count, rank count and command, and a commit that is the leader's or older; any
///   disagreement refuses every node before any launch, naming the node at fault;
/// - at most one round is in flight; every living node gets the same round's `stop`/`checkpoint`,
///   then the same `step`;
/// - `.commit` is asked for at most once per round, only when every node of the job confirmed the
///   round's step in that round and no node reported a problem with it, before the round's deadline;
/// - the first stop trigger starts the one stop; later triggers escalate only when a node repeats
///   its own stop signal, or sends a quit during a stop that was not one (the control file, and one
///   scheduler signal to every node, a quit included, never do);
/// - a node that is lost, or whose rank fails, makes every living node get `nodeFailed`, and no
///   round in flight can commit after it, unless the job restarts: then (while no stop trigger
///   arrived, no node finished, at most `maxRestarts` times) every living node gets `restart`, and
///   the relaunch (`.launch` of the next restart, with the last commit) goes to every node at once,
///   only once every node said `cleared` for it or joined again in agreement, not before the
///   restart's backoff; a stop trigger, a node ending, or `rendezvousTimeout` without every node
///   ready ends the restart: every living node gets `nodeFailed`, every node that joined again
///   `refused`;
/// - a stop that starts after a node finished cannot commit (that node's ranks confirm nothing): it
///   fails at once, and no checkpoint round starts.
public struct ClusterLeader: Sendable {
    public struct Policy: Equatable, Sendable {
        public var grace: Double
        public var alignTimeout: Double
        public var checkpointEvery: Double?
        /// Seconds from the leader's start to every node joined; also from a restart's start to every
        /// node ready for its relaunch.
        public var rendezvousTimeout: Double
        /// How many times the whole job relaunches from its last commit after a failure.
        public var maxRestarts: Int
        /// Seconds from a restart's start to its relaunch at the earliest, doubled for each further
        /// restart as `StopPolicy.backoff(beforeRestart:)` does on one node.
        public var restartBackoff: Double
        /// Added to the nodes' own deadlines: their reports travel over the network.
        public static let networkMargin = 1.0

        public init(
            grace: Double, alignTimeout: Double, checkpointEvery: Double?, rendezvousTimeout: Double,
            maxRestarts: Int = 0, restartBackoff: Double = StopPolicy.defaultRestartBackoff
        ) {
            self.grace = grace
            self.alignTimeout = alignTimeout
            self.checkpointEvery = checkpointEvery
            self.rendezvousTimeout = rendezvousTimeout
            self.maxRestarts = maxRestarts
            self.restartBackoff = restartBackoff
        }

        func backoff(beforeRestart restart: Int) -> Double {
            StopPolicy(restartBackoff: restartBackoff).backoff(beforeRestart: restart)
        }
    }

    public enum Action: Equatable, Sendable {
        case send(node: Int, ClusterCommand)
        /// Write the job's commit record (every rank's path, in global rank order), then answer with
        /// `commitWritten` or `commitFailed`.
        case commit(round: Int, step: Int, paths: [CheckpointPath?], trigger: String)
        /// The rendezvous failed: every node was told why; the leader ends with `ExitCode.rendezvous`.
        case abort(String)
        /// Refuse the join just received, on the connection it came on (it holds no node rank).
        case refuseJoin(String)
        case report(ClusterReport)
    }

    struct Round: Equatable, Sendable {
        enum Kind: Equatable, Sendable { case stop, checkpoint }
        let id: Int
        let kind: Kind
        let trigger: String
        let requestedAt: Instant
        var positions: [Int: Int?] = [:]
        /// nil while aligning; .some(step) once sent.
        var step: Int??
        var confirmations: [Int: (step: Int, paths: [CheckpointPath?])] = [:]
        var failed = false
        var commitAsked = false

        static func == (lhs: Round, rhs: Round) -> Bool { lhs.id == rhs.id }
    }

    public enum Phase: Equatable, Sendable {
        case gathering(deadline: Instant)
        case running
        /// Every node clears its ranks for restart `restart`; `deadline` for every node to be ready.
        case restarting(restart: Int, deadline: Instant)
        case aborted
    }

    public let policy: Policy
    public let nodeCount: Int
    public private(set) var phase: Phase
    public private(set) var joins: [Int: ClusterJoin] = [:]
    /// Nodes launched that have neither finished nor been lost.
    public private(set) var living: Set<Int> = []
    public private(set) var world: ClusterWorld
    /// Why the job failed, the first reason: the leader's own node may have finished well, the job
    /// has not (its exit is 1, and its record is not marked completed).
    public private(set) var failure: String?
    /// A rank failed or a node was lost: no round can complete any more.
    public var failed: Bool { failure != nil }
    public private(set) var stopTrigger: Trigger?
    var round: Round?
    private var nextRoundID = 1
    private var nextCheckpointAt: Instant?
    /// Per node, the stop signals it sent during the stop; its second one escalates.
    private var stopSignals: [Int: Int] = [:]
    private var leaderRecord: String?
    /// Nodes that said they finished (not lost).
    private var finished: Set<Int> = []
    /// Restarts started so far.
    public private(set) var restarts = 0
    /// During a restart: the nodes ready for its relaunch (cleared, or joined again).
    public private(set) var ready: Set<Int> = []
    /// During a restart: the earliest relaunch (its backoff).
    private var relaunchAt = Instant.seconds(0)
    /// The job's last commit, which a node joining again must not be ahead of.
    private var leaderCommit: ClusterJoin.Commit?

    /// `leader` is node 0's own join; `record` its commit record's JSON, sent to every node at launch.
    public init(leader: ClusterJoin, runID: String, record: String?, policy: Policy, now: Instant) {
        self.policy = policy
        nodeCount = leader.nodeCount
        world = ClusterWorld(runID: runID, nodeCount: leader.nodeCount, localRanks: leader.localRanks)
        // A job of one node has nobody to wait for: its first tick launches it.
        phase = .gathering(deadline: leader.nodeCount <= 1 ? now : now + policy.rendezvousTimeout)
        joins[0] = leader
        leaderRecord = record
        leaderCommit = leader.commit
    }

    /// Whether every node launched has finished or was lost.
    public var allEnded: Bool { phase == .running && living.isEmpty }

    public var nextDeadline: Instant? {
        switch phase {
        case .gathering(let deadline): return deadline
        case .aborted: return nil
        case .restarting(_, let deadline):
            return ready.count == nodeCount ? relaunchAt : deadline
        case .running:
            if let round {
                if round.step == nil { return round.requestedAt + policy.alignTimeout + Policy.networkMargin }
                if !round.failed && !round.commitAsked { return round.requestedAt + policy.grace + Policy.networkMargin }
                return nil
            }
            return canCheckpoint ? nextCheckpointAt : nil
        }
    }

    // MARK: - Rendezvous

    /// A node's join. Any disagreement refuses the whole job, before any launch.
    public mutating func joined(_ join: ClusterJoin, now: Instant) -> [Action] {
        switch phase {
        case .gathering: break
        case .restarting(let restart, _): return rejoined(join, restart: restart, now: now)
        case .running:
            let refusal = living.contains(join.node) ? ClusterReport.stillHeld(join, by: joins[join.node]?.host ?? "?") : ClusterReport.launchedWithout(join)
            return [.report(.lateJoin(node: join.node, host: join.host)), .refuseJoin(refusal)]
        case .aborted: return [.report(.lateJoin(node: join.node, host: join.host))]
        }
        if let problem = disagreement(join) { return abort(problem) }
        joins[join.node] = join
        guard joins.count == nodeCount else { return [.report(.joined(node: join.node, host: join.host, waiting: nodeCount - joins.count))] }
        return launch(now: now)
    }

    private mutating func launch(now: Instant) -> [Action] {
        phase = .running
        living = Set(0..<nodeCount)
        if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
        return [.report(.launching(world))] + (0..<nodeCount).map { .send(node: $0, .launch(world, record: leaderRecord)) }
    }

    /// `claims`: whether a node rank held already is a disagreement (not for a node joining again).
    private func disagreement(_ join: ClusterJoin, claims: Bool = true) -> String? {
        let leader = joins[0]!
        let name = "node \(join.node) (\(join.host))"
        if join.nodeCount != nodeCount {
            return "\(name) was started with --nnodes \(join.nodeCount), the leader with \(nodeCount)"
        }
        if join.node < 0 || join.node >= nodeCount {
            return "\(name) has a node rank outside 0...\(nodeCount - 1)"
        }
        if claims, let holder = joins[join.node] {
            return "node rank \(join.node) was claimed twice: by \(holder.host) and by \(join.host)"
        }
        if join.localRanks != leader.localRanks {
            return "\(name) was started with -n \(join.localRanks), the leader (\(leader.host)) with -n \(leader.localRanks)"
        }
        if join.command != leader.command {
            return "\(name) runs '\(join.command.joined(separator: " "))', the leader (\(leader.host)) '\(leader.command.joined(separator: " "))'"
        }
        if let commit = join.commit {
            // A follower's copy may lag behind the leader's record (the leader committed, then a
            // follower was lost before it heard): the leader's record is the job's. Anything else
            // names a commit the leader never made.
            guard let own = leaderCommit, commit == own || commit.step < own.step else {
                let leaderSide = leaderCommit.map { "\($0)" } ?? "none"
                return "\(name) last committed \(commit), the leader (\(leader.host)) \(leaderSide): they are not one job's records"
            }
        }
        return nil
    }

    private mutating func abort(_ reason: String) -> [Action] {
        phase = .aborted
        var actions: [Action] = []
        for node in joins.keys.sorted() where node != 0 { actions.append(.send(node: node, .refused(reason))) }
        actions.append(.abort(reason))
        return actions
    }

    /// A node's connection ended, or its heartbeats stopped.
    public mutating func lost(node: Int, reason: String, now: Instant) -> [Action] {
        switch phase {
        case .gathering:
            // It may come back before the deadline; its rank is free again.
            guard node != 0, joins.removeValue(forKey: node) != nil else { return [] }
            return [.report(.leftBeforeLaunch(node: node, reason: reason))]
        case .aborted:
            return []
        case .restarting(let restart, _):
            // It may come back before the restart's deadline.
            let wasLiving = living.remove(node) != nil
            guard ready.remove(node) != nil || wasLiving else { return [] }
            return [.report(.lostDuringRestart(node: node, restart: restart, reason: reason))]
        case .running:
            guard living.remove(node) != nil else { return [] }
            return failJob("node \(node) (\(joins[node]?.host ?? "?")) is gone: \(reason)", except: node, now: now)
        }
    }

    // MARK: - Restarts

    /// A failure while the job may restart: every living node clears its ranks; nodes that were
    /// lost must join again, before `rendezvousTimeout`.
    private mutating func startRestart(_ reason: String, now: Instant) -> [Action] {
        restarts += 1
        // A commit asked for still has its answer to come: the relaunch resumes from it if written.
        if round?.commitAsked != true { round = nil }
        ready = []
        relaunchAt = now + policy.backoff(beforeRestart: restarts)
        phase = .restarting(restart: restarts, deadline: now + policy.rendezvousTimeout)
        let command = ClusterCommand.restart(restart: restarts, maxRestarts: policy.maxRestarts, reason: reason)
        return [.report(.restarting(restart: restarts, maxRestarts: policy.maxRestarts, reason: reason))]
            + living.sorted().map { .send(node: $0, command) }
    }

    /// A node joining a restarting job: one that was lost comes back.
    private mutating func rejoined(_ join: ClusterJoin, restart: Int, now: Instant) -> [Action] {
        var problem = disagreement(join, claims: false)
        if problem == nil, living.contains(join.node) || ready.contains(join.node) {
            problem = "node rank \(join.node) is held by \(joins[join.node]?.host ?? "?"), which is still in the job: \(join.host) cannot take it"
        }
        if let problem { return [.report(.rejoinRefused(problem)), .refuseJoin(problem)] }
        joins[join.node] = join
        ready.insert(join.node)
        return [.report(.rejoined(node: join.node, host: join.host, restart: restart, waiting: nodeCount - ready.count))] + relaunchIfReady(now: now)
    }

    private mutating func relaunchIfReady(now: Instant) -> [Action] {
        guard ready.count == nodeCount, now >= relaunchAt else { return [] }
        phase = .running
        living = Set(0..<nodeCount)
        ready = []
        round = nil
        failure = nil
        stopSignals = [:]
        world.restart = restarts
        if let every = policy.checkpointEvery { nextCheckpointAt = now + every }
        return [.report(.relaunching(world))] + (0..<nodeCount).map { .send(node: $0, .launch(world, record: leaderRecord)) }
    }

    /// The restart cannot complete: the living nodes fail (their ranks are gone or going), and the
    /// nodes that joined again are refused.
    private mutating func abandonRestart(_ reason: String) -> [Action] {
        phase = .running
        failure = failure ?? reason
        let rejoined = ready.subtracting(living)
        ready = []
        return [.report(.jobFailed(reason))] + living.sorted().map { .send(node: $0, .nodeFailed(reason)) }
            + rejoined.sorted().map { .send(node: $0, .refused(reason)) }
    }

    private mutating func receivedWhileRestarting(_ message: ClusterNodeMessage, from node: Int, restart: Int, now: Instant) -> [Action] {
        guard living.contains(node) else { return [] }
        switch message {
        case .cleared(let cleared) where cleared == restart:
            let report: [Action] = ready.insert(node).inserted ? [.report(.cleared(node: node, restart: restart, waiting: nodeCount - ready.count))] : []
            return report + relaunchIfReady(now: now)
        case .trigger(let trigger):
            // As on one node: a stop during a failed gang's teardown or backoff ends the job.
            stopTrigger = trigger
            if trigger.signalNumber != nil { stopSignals[node] = 1 }
            return abandonRestart("stop requested (\(trigger)) on node \(node) during restart \(restart); not restarting")
        case .finished(let code):
            living.remove(node)
            ready.remove(node)
            finished.insert(node)
            return [.report(.nodeFinished(node: node, exitCode: code))]
                + abandonRestart("node \(node) ended (exit \(code)) during restart \(restart)")
        case .checkpointRequest(let trigger):
            return [.report(.checkpointNotStarted(trigger: trigger))]
        case .join, .position, .confirmed, .roundFailed, .rankFailed, .cleared, .ping:
            return []
        }
    }

    // MARK: - Messages

    public mutating func received(_ message: ClusterNodeMessage, from node: Int, now: Instant) -> [Action] {
        if case .restarting(let restart, _) = phase { return receivedWhileRestarting(message, from: node, restart: restart, now: now) }
        guard phase == .running else { return [] }
        guard living.contains(node) else {
            // The leader's own node finished but its coordinator serves on: its operator may still
            // stop the others. A lost node is gone: nothing it says counts.
            if case .trigger(let trigger) = message, node == 0, finished.contains(0), !living.isEmpty {
                return receiveTrigger(trigger, from: node, now: now)
            }
            return []
        }
        switch message {
        case .join:
            return [.report(.lateJoin(node: node, host: joins[node]?.host ?? "?"))]
        case .trigger(let trigger):
            return receiveTrigger(trigger, from: node, now: now)
        case .checkpointRequest(let trigger):
            guard round == nil, canCheckpoint else { return [.report(.checkpointNotStarted(trigger: trigger))] }
            return startRound(.checkpoint, trigger: trigger, now: now)
        case .position(let id, let furthest):
            guard var current = round, current.id == id, current.step == nil, current.positions[node] == nil else { return [] }
            current.positions[node] = .some(furthest)
            round = current
            return living.allSatisfy({ current.positions[$0] != nil }) ? decide(now: now) : []
        case .confirmed(let id, let step, let paths):
            return receiveConfirmation(id: id, step: step, paths: paths, from: node, now: now)
        case .roundFailed(let id, let reason):
            // Once its commit is asked for, the round's fate is the commit's outcome.
            guard var current = round, current.id == id, !current.failed, !current.commitAsked else { return [] }
            current.failed = true
            round = current
            return failRound("node \(node): \(reason)", except: node, now: now)
        case .rankFailed(let reason):
            return failJob("node \(node): \(reason)", except: node, now: now)
        case .finished(let code):
            living.remove(node)
            finished.insert(node)
            var actions: [Action] = [.report(.nodeFinished(node: node, exitCode: code))]
            if let current = round, !current.failed, !current.commitAsked, current.confirmations[node] == nil {
                round?.failed = true
                actions += failRound("node \(node) ended before confirming", except: node, now: now)
            }
            if living.isEmpty { round = nil }
            return actions
        case .cleared, .ping:
            return []
        }
    }

    /// No checkpoint round once a stop was asked for, the job failed, or a node finished (its ranks
    /// would confirm nothing).
    private var canCheckpoint: Bool { stopTrigger == nil && !failed && finished.isEmpty }

    private mutating func receiveTrigger(_ trigger: Trigger, from node: Int, now: Instant) -> [Action] {
        guard let stop = stopTrigger else {
            stopTrigger = trigger
            if case .signal = trigger { stopSignals[node] = 1 }
            if case .quit = trigger { stopSignals[node] = 1 }
            return startRound(.stop, trigger: trigger.description, stopTrigger: trigger, now: now)
        }
        // The control file cannot be told apart from the request itself; a node's first signal is
        // the same request as everybody's (a scheduler signals every node at once). A node's
        // second signal is somebody insisting; so is a quit during a stop that was no quit (on one
        // node too a quit during a stop is SIGKILL). A quit reaching every node is one quit.
        guard trigger.signalNumber != nil else { return [] }
        let count = (stopSignals[node] ?? 0) + 1
        stopSignals[node] = count
        let quits = if case .quit = trigger { true } else { false }
        let stopQuits = if case .quit = stop { true } else { false }
        guard count >= 2 || quits && !stopQuits else { return [.report(.alreadyStopping(node: node, trigger))] }
        return [.report(.escalating(node: node, trigger))] + living.sorted().map { .send(node: $0, .escalate(trigger)) }
    }

    private mutating func startRound(_ kind: Round.Kind, trigger: String, stopTrigger: Trigger? = nil, now: Instant) -> [Action] {
        var actions: [Action] = []
        if let current = round, !current.commitAsked {
            // A stop supersedes a checkpoint round: its positions and confirmations count no more.
            actions.append(.report(.roundSuperseded(round: current.id)))
        }
        let id = nextRoundID
        nextRoundID += 1
        round = Round(id: id, kind: kind, trigger: trigger, requestedAt: now)
        if failed { round?.failed = true }
        let command: ClusterCommand = if let stopTrigger { .stop(round: id, stopTrigger) } else { .checkpoint(round: id, trigger: trigger) }
        actions.append(.report(kind == .stop ? .stopping(trigger: trigger, nodes: living.count) : .checkpointing(trigger: trigger, nodes: living.count)))
        actions += living.sorted().map { .send(node: $0, command) }
        if !finished.isEmpty, round?.failed == false {
            // Stopping the others still saves their work, but no step can be committed for every rank.
            round?.failed = true
            let nodes = finished.sorted().map(String.init).joined(separator: ", ")
            actions += failRound("node(s) \(nodes) finished before the stop: their ranks confirm nothing", except: nil, now: now)
        }
        return actions
    }

    /// One step for the whole job: 1 + the furthest position of any rank of any node.
    private mutating func decide(now: Instant) -> [Action] {
        guard var current = round, current.step == nil else { return [] }
        let furthest = current.positions.values.compactMap { $0 }.max()
        if let furthest, furthest.addingReportingOverflow(1).overflow || furthest + 1 > maximumMessageInteger {
            let failedAlready = current.failed
            current.failed = true
            current.step = .some(nil)
            round = current
            // A round that failed already was said to have failed: once is enough.
            if failedAlready { return [] }
            return failRound("a rank answered position \(furthest), after which no step can follow", except: nil, now: now)
        }
        let step = furthest.map { $0 + 1 }
        current.step = .some(step)
        round = current
        return [.report(.stepChosen(round: current.id, step: step))] + living.sorted().map { .send(node: $0, .step(round: current.id, step: step)) }
    }

    private mutating func receiveConfirmation(
        id: Int, step: Int, paths: [CheckpointPath?], from node: Int, now: Instant
    ) -> [Action] {
        guard var current = round, current.id == id, case .some(let decided) = current.step,
              current.confirmations[node] == nil, !current.failed, !current.commitAsked
        else { return [] }
        if now >= current.requestedAt + policy.grace + Policy.networkMargin { return [] }
        guard paths.count == world.localRanks else {
            current.failed = true
            round = current
            return failRound("node \(node) confirmed \(paths.count) path(s) for \(world.localRanks) rank(s)", except: nil, now: now)
        }
        if let decided, step != decided {
            current.failed = true
            round = current
            return failRound("node \(node) checkpointed step \(step), not the round's step \(decided)", except: nil, now: now)
        }
        current.confirmations[node] = (step, paths)
        round = current
        guard (0..<nodeCount).allSatisfy({ current.confirmations[$0] != nil }) else { return [] }
        let steps = Set(current.confirmations.values.map(\.step))
        guard steps.count == 1 else {
            current.failed = true
            round = current
            return failRound("the nodes checkpointed different steps, from \(steps.min()!) to \(steps.max()!)", except: nil, now: now)
        }
        current.commitAsked = true
        round = current
        let allPaths = (0..<nodeCount).flatMap { current.confirmations[$0]!.paths }
        return [.commit(round: id, step: step, paths: allPaths, trigger: current.trigger)]
    }

    // MARK: - The commit's outcome

    /// The record of round `id` is durably on disk; `record` is its JSON, for every node's copy.
    public mutating func commitWritten(round id: Int, record: String, now: Instant) -> [Action] {
        guard let current = round, current.id == id, current.commitAsked else { return [] }
        leaderRecord = record
        if let step = current.confirmations.values.first?.step { leaderCommit = .init(runID: world.runID, step: step) }
        // During a restart the relaunch carries the record to every node.
        if case .restarting = phase {
            round = nil
            return []
        }
        endRound(now: now)
        return living.sorted().map { .send(node: $0, .committed(round: id, record: record)) }
    }

    public mutating func commitFailed(round id: Int, reason: String, now: Instant) -> [Action] {
        if case .restarting = phase, round?.id == id {
            round = nil
            return []
        }
        guard var current = round, current.id == id, current.commitAsked else { return [] }
        current.failed = true
        current.commitAsked = false
        round = current
        return failRound("the leader's commit failed (\(reason))", except: nil, now: now)
    }

    // MARK: - Time

    public mutating func tick(now: Instant) -> [Action] {
        switch phase {
        case .aborted:
            return []
        case .restarting(let restart, let deadline):
            if ready.count == nodeCount { return relaunchIfReady(now: now) }
            guard now >= deadline else { return [] }
            let missing = (0..<nodeCount).filter { !ready.contains($0) }.map(String.init).joined(separator: ", ")
            return abandonRestart("node(s) \(missing) were not ready for restart \(restart) within \(format(policy.rendezvousTimeout))s (--rdzv-timeout)")
        case .running where living.isEmpty:
            return []
        case .gathering(let deadline):
            guard now >= deadline else { return [] }
            if joins.count == nodeCount { return launch(now: now) }
            let missing = (0..<nodeCount).filter { joins[$0] == nil }
            return abort("node(s) \(missing.map(String.init).joined(separator: ", ")) did not join within \(format(policy.rendezvousTimeout))s (--rdzv-timeout)")
        case .running:
            if let current = round {
                if current.step == nil, now >= current.requestedAt + policy.alignTimeout + Policy.networkMargin {
                    return decide(now: now)
                }
                if current.step != nil, !current.failed, !current.commitAsked, now >= current.requestedAt + policy.grace + Policy.networkMargin {
                    round?.failed = true
                    let missing = (0..<nodeCount).filter { current.confirmations[$0] == nil }
                    // failRound tells every node and ends a checkpoint round.
                    return failRound("node(s) \(missing.map(String.init).joined(separator: ", ")) did not confirm within \(format(policy.grace))s", except: nil, now: now)
                }
                return []
            }
            if let due = nextCheckpointAt, now >= due, canCheckpoint {
                nextCheckpointAt = nil
                return startRound(.checkpoint, trigger: "periodic", now: now)
            }
            return []
        }
    }

    // MARK: - Failures

    /// Tells every living node (but `origin`, which knows) that the round failed. A checkpoint round
    /// ends there; a stop stays the stop (its escalation goes on), committing nothing.
    private mutating func failRound(_ reason: String, except origin: Int?, now: Instant) -> [Action] {
        guard let current = round else { return [] }
        var actions: [Action] = [.report(.roundFailed(round: current.id, reason: reason))]
        actions += living.sorted().filter { $0 != origin }.map { .send(node: $0, .roundFailed(round: current.id, reason)) }
        if current.kind == .checkpoint { endRound(now: now) }
        return actions
    }

    /// The round is over; after a checkpoint round, committed or not, the next periodic one is due
    /// `checkpointEvery` later.
    private mutating func endRound(now: Instant) {
        if round?.kind == .checkpoint, let every = policy.checkpointEvery { nextCheckpointAt = now + every }
        round = nil
    }

    /// A rank failed on node `origin`, or it was lost: the job restarts if it may, else every living
    /// node (`origin` too: it waits for this verdict) tears its ranks down.
    private mutating func failJob(_ reason: String, except origin: Int, now: Instant) -> [Action] {
        if stopTrigger == nil, !failed, finished.isEmpty, restarts < policy.maxRestarts { return startRestart(reason, now: now) }
        failure = failure ?? reason
        var actions: [Action] = [.report(.jobFailed(reason))]
        if let current = round, !current.failed, !current.commitAsked {
            round?.failed = true
            actions += living.sorted().filter { $0 != origin }.map { .send(node: $0, .roundFailed(round: current.id, reason)) }
        }
        actions += living.sorted().map { .send(node: $0, .nodeFailed(reason)) }
        return actions
    }
}

/// The leader's lines for the console; worded in one place.
public enum ClusterReport: Equatable, Sendable, CustomStringConvertible {
    case joined(node: Int, host: String, waiting: Int)
    case leftBeforeLaunch(node: Int, reason: String)
    case lateJoin(node: Int, host: String)
    case launching(ClusterWorld)
    case stopping(trigger: String, nodes: Int)
    case checkpointing(trigger: String, nodes: Int)
    case checkpointNotStarted(trigger: String)
    case alreadyStopping(node: Int, Trigger)
    case escalating(node: Int, Trigger)
    case roundSuperseded(round: Int)
    case stepChosen(round: Int, step: Int?)
    case roundFailed(round: Int, reason: String)
    case jobFailed(String)
    case nodeFinished(node: Int, exitCode: Int32)
    case restarting(restart: Int, maxRestarts: Int, reason: String)
    case cleared(node: Int, restart: Int, waiting: Int)
    case rejoined(node: Int, host: String, restart: Int, waiting: Int)
    case rejoinRefused(String)
    case lostDuringRestart(node: Int, restart: Int, reason: String)
    case relaunching(ClusterWorld)

    /// Why a join after the launch is refused.
    static func launchedWithout(_ join: ClusterJoin) -> String {
        "the job was launched without node \(join.node) (\(join.host)); it cannot join now"
    }

    /// Why a join for a node rank the leader still counts as running is refused.
    static func stillHeld(_ join: ClusterJoin, by holder: String) -> String {
        "node rank \(join.node) is still held by \(holder) in the running job (a silent node counts as gone after --heartbeat-timeout); \(join.host) may join once the leader restarts the job"
    }

    public var description: String {
        switch self {
        case .joined(let node, let host, let waiting):
            return "leader: node \(node) (\(host)) joined; waiting for \(waiting) more"
        case .leftBeforeLaunch(let node, let reason):
            return "leader: node \(node) left before the launch (\(reason)); waiting for it again"
        case .lateJoin(let node, let host):
            return "warning: leader: node \(node) (\(host)) tried to join a job already launched; ignored"
        case .launching(let world):
            return "leader: every node joined: launching \(world.worldSize) rank(s) on \(world.nodeCount) node(s)"
        case .stopping(let trigger, let nodes):
            return "leader: stop requested (\(trigger)); asking \(nodes) node(s)"
        case .checkpointing(let trigger, let nodes):
            return "leader: checkpoint requested (\(trigger)); asking \(nodes) node(s)"
        case .checkpointNotStarted(let trigger):
            return "leader: checkpoint request (\(trigger)) ignored: a round is in progress, or the job is stopping"
        case .alreadyStopping(let node, let trigger):
            return "leader: \(trigger) on node \(node): the job is already stopping (send it again there to escalate)"
        case .escalating(let node, let trigger):
            return "leader: \(trigger) repeated on node \(node): escalating on every node"
        case .roundSuperseded(let round):
            return "leader: round \(round) superseded by the stop"
        case .stepChosen(let round, let step):
            return step.map { "leader: round \(round): step \($0) for every rank of every node" }
                ?? "leader: round \(round): no rank passed a step yet; each stops at its next boundary"
        case .roundFailed(let round, let reason):
            return "error: leader: round \(round) cannot commit: \(reason)"
        case .jobFailed(let reason):
            return "error: leader: \(reason); stopping every node"
        case .nodeFinished(let node, let code):
            return "leader: node \(node) finished (exit \(code))"
        case .restarting(let restart, let maxRestarts, let reason):
            return "error: leader: \(reason); restarting every node from the last commit (restart \(restart) of \(maxRestarts))"
        case .cleared(let node, let restart, let waiting):
            return waiting == 0 ? "leader: node \(node) cleared its ranks for restart \(restart); every node is ready"
                : "leader: node \(node) cleared its ranks for restart \(restart); waiting for \(waiting) more"
        case .rejoined(let node, let host, let restart, let waiting):
            return waiting == 0 ? "leader: node \(node) (\(host)) joined again for restart \(restart); every node is ready"
                : "leader: node \(node) (\(host)) joined again for restart \(restart); waiting for \(waiting) more"
        case .rejoinRefused(let reason):
            return "warning: leader: a node joining the restart was refused: \(reason)"
        case .lostDuringRestart(let node, let restart, let reason):
            return "warning: leader: node \(node) is gone during restart \(restart) (\(reason)); it may join again until --rdzv-timeout"
        case .relaunching(let world):
            return "leader: every node is ready: restart \(world.restart) launches \(world.worldSize) rank(s) on \(world.nodeCount) node(s)"
        }
    }
}
