/// One line for the console, as decided by the coordinator. `description` is the only place where the
/// coordinator's English is built (with the wording of `Problem`, `RankRecord.Note` and `ExitStatus`).
public enum Report: Equatable, Sendable, CustomStringConvertible {
    /// How the teardown was hurried by a counted stop signal.
    public enum Escalation: Equatable, Sendable {
        /// SIGTERM to every rank not yet signalled, SIGKILL `killAfter` seconds later.
        case terminate(killAfter: Double)
        case kill
    }

    /// What the end of the grace does to each rank still running.
    public struct GraceExpiry: Equatable, Sendable {
        public let grace: Double
        public let killAfter: Double
        /// Ranks not signalled before: SIGTERM now, SIGKILL `killAfter` later.
        public let terminated: [Int]
        /// Ranks that had SIGTERM already and whose SIGKILL is due now (plain ranks, sent SIGTERM at the stop).
        public let killedNow: [Int]
        /// Ranks that had SIGTERM already and keep their earlier SIGKILL deadline.
        public let killedLater: [Int]
    }

    case stopRequested(Trigger, asking: Int, terminating: Int, grace: Double)
    /// Some ranks never said hello while others did: nothing can be committed.
    case mixedGang(neverSaidHello: [Int])
    case escalated(Trigger, Escalation)
    /// The first stop signal during a stop the control file requested: the same request, not a second.
    case alreadyStopping(Trigger)
    case graceExpired(GraceExpiry)
    case checkpointRequested(trigger: String, asking: Int)
    /// Some ranks ended or have not said hello: no checkpoint round.
    case checkpointSkipped(trigger: String, absent: [Int], periodic: Bool)
    /// During a stop's grace, every `StopPolicy.progressInterval`: who has not confirmed or ended yet.
    case waiting(ranks: [Int], step: Int?, graceLeft: Double)
    case checkpointInProgress(trigger: String)
    /// No checkpoint round while the ranks stop or restart.
    case checkpointRefused(trigger: String)
    case noAnswer(rank: Int, within: Double)
    case stepChosen(Coordinator.Round.Kind, step: Int, lowest: Int, highest: Int)
    /// No rank had reached a boundary: each stops or saves at its next one.
    case stepAtNextBoundary(Coordinator.Round.Kind)
    /// Something that prevents the stop's commit.
    case stopProblem(Problem)
    case checkpointAbandoned(Problem)
    case unsolicitedConfirmation(rank: Int, step: Int)
    case repeatedConfirmation(rank: Int, step: Int, first: Int)
    case lateConfirmation(rank: Int, step: Int, grace: Double)
    case committed(step: Int)
    case rankFailed(rank: Int, ExitStatus, stopping: Int)
    /// Another node of a multi-node job failed: this node's living ranks are torn down.
    case nodeFailed(String, stopping: Int)
    /// A stop trigger while a failed gang is torn down: the run ends once it is gone.
    case restartForbidden(Trigger)
    /// A counted signal while a failed gang is torn down after a stop was requested.
    case killingFailedGang(Trigger)
    /// A stop trigger during the backoff: the run ends now.
    case restartCancelled(Trigger)
    case clearingBeforeRestart(Coordinator.Failure, restart: Int, maxRestarts: Int)
    case restartScheduled(restart: Int, maxRestarts: Int, after: Double, from: Int?)
    case givingUp(restarts: Int, maxRestarts: Int)
    /// A member of a multi-node job: the leader restarts the whole job.
    case jobRestarting(String, restart: Int, maxRestarts: Int, stopping: Int)
    /// A member of a multi-node job: its ranks are gone; the leader relaunches once every node's are.
    case clearedForRestart(restart: Int)

    public var description: String {
        switch self {
        case .stopRequested(let trigger, let asking, let terminating, let grace):
            var line = "stop requested (\(trigger))"
            if asking > 0 { line += "; asking \(asking) rank(s) for their position" }
            if terminating > 0 { line += "; SIGTERM to \(terminating) rank(s) that have not said hello (not using the client, or still starting)" }
            return line + "; grace \(format(grace))s"
        case .mixedGang(let plain):
            return "warning: rank(s) \(list(plain)) never said hello (not using the client, or not started yet): nothing will be committed"
        case .escalated(let trigger, .terminate(let killAfter)):
            let cause = if case .quit = trigger { "\(trigger): quitting now" } else { "\(trigger) again" }
            return "\(cause): sending SIGTERM to the ranks still running (SIGKILL in \(format(killAfter))s, or on another signal)"
        case .alreadyStopping(let trigger):
            return "\(trigger): the stop the control file requested is already under way; another \(trigger) sends SIGTERM to the ranks"
        case .escalated(let trigger, .kill):
            let cause = if case .quit = trigger { "\(trigger): quitting now" } else { "\(trigger) again" }
            return "\(cause): sending SIGKILL to the ranks still running"
        case .graceExpired(let expiry):
            let running = (expiry.terminated + expiry.killedNow + expiry.killedLater).sorted()
            var parts: [String] = []
            if !expiry.terminated.isEmpty {
                let whom = running == expiry.terminated ? "" : " to rank(s) \(list(expiry.terminated))"
                parts.append("SIGTERM now, SIGKILL in \(format(expiry.killAfter))s\(whom)")
            }
            if !expiry.killedNow.isEmpty {
                parts.append("SIGKILL now to rank(s) \(list(expiry.killedNow)), which had SIGTERM at the stop")
            }
            if !expiry.killedLater.isEmpty {
                parts.append("rank(s) \(list(expiry.killedLater)) had SIGTERM already and get SIGKILL at their earlier deadline")
            }
            return "grace of \(format(expiry.grace))s expired; rank(s) \(list(running)) still running: " + parts.joined(separator: "; ")
        case .checkpointRequested(let trigger, let asking):
            return "checkpoint requested (\(trigger)); asking \(asking) rank(s) for their position"
        case .waiting(let ranks, let step, let left):
            let target = step.map { "step \($0)" } ?? "their stop"
            return "waiting for rank(s) \(list(ranks)) to confirm \(target) or end (\(format(max(0, left.rounded())))s of grace left)"
        case .checkpointSkipped(let trigger, let absent, let periodic):
            let line = "checkpoint (\(trigger)) skipped: rank(s) \(list(absent)) ended or have not said hello"
            return periodic ? line + "; further periodic ones are skipped silently until one can start" : line
        case .checkpointInProgress(let trigger):
            return "\(trigger): a checkpoint is already in progress; ignored"
        case .checkpointRefused(let trigger):
            return "\(trigger): no checkpoint while the ranks are stopping or restarting; ignored"
        case .noAnswer(let rank, let within):
            return "warning: rank \(rank) did not report its position within \(format(within))s"
        case .stepChosen(let kind, let step, let lowest, let highest):
            let positions = lowest == highest ? "every rank was at step \(lowest)" : "ranks were at steps \(lowest) to \(highest)"
            return "\(noun(kind)) step \(step) (\(positions))"
        case .stepAtNextBoundary(let kind):
            return "\(noun(kind)) at each rank's next step boundary (no rank had reached one)"
        case .stopProblem(let problem):
            return "error: \(problem); nothing will be committed"
        case .checkpointAbandoned(let problem):
            return "warning: checkpoint round abandoned: \(problem); the previous record stays, training goes on"
        case .unsolicitedConfirmation(let rank, let step):
            return "warning: rank \(rank) confirmed step \(step) while no stop or checkpoint step was set; ignored"
        case .repeatedConfirmation(let rank, let step, let first):
            return "warning: rank \(rank) confirmed again (step \(step), first step \(first)); ignored"
        case .lateConfirmation(let rank, let step, let grace):
            return "warning: rank \(rank) confirmed step \(step) after the grace of \(format(grace))s expired; ignored"
        case .committed(let step):
            return "committed step \(step)"
        case .nodeFailed(let reason, let stopping):
            if stopping == 0 { return "error: \(reason)" }
            return "error: \(reason); stopping this node's \(stopping) rank(s) with SIGTERM"
        case .rankFailed(let rank, let status, let stopping):
            if stopping == 0 { return "rank \(rank) failed (\(status))" }
            return "rank \(rank) failed (\(status)); stopping the other \(stopping) rank(s) with SIGTERM"
        case .restartForbidden(let trigger):
            return "\(trigger): stop requested while a failed gang is torn down; no restart"
        case .killingFailedGang(let trigger):
            return "\(trigger): sending SIGKILL to the ranks still running"
        case .restartCancelled(let trigger):
            return "stop requested (\(trigger)) before the restart; not restarting"
        case .clearingBeforeRestart(let failure, let restart, let maxRestarts):
            return "rank \(failure.rank) failed (\(failure.status)); clearing the gang before restart \(restart) of \(maxRestarts)"
        case .restartScheduled(let restart, let maxRestarts, let wait, let step):
            let from = step.map { "committed step \($0)" } ?? "the beginning (nothing committed)"
            return "restart \(restart) of \(maxRestarts) in \(format(wait))s, from \(from)"
        case .givingUp(let restarts, let maxRestarts):
            return "giving up after \(restarts) restart(s) (--max-restarts \(maxRestarts))"
        case .jobRestarting(let reason, let restart, let maxRestarts, let stopping):
            let line = "restart \(restart) of \(maxRestarts) of the whole job (\(reason))"
            return stopping == 0 ? line : line + "; stopping this node's \(stopping) rank(s) with SIGTERM"
        case .clearedForRestart(let restart):
            return "this node's ranks are gone; waiting for every node before restart \(restart)"
        }
    }

    private func noun(_ kind: Coordinator.Round.Kind) -> String {
        kind == .stop ? "stop" : "checkpoint"
    }
}

extension Problem: CustomStringConvertible {
    public var description: String {
        switch self {
        case .wrongStep(let rank, let kind, let expected, let confirmed):
            let noun = kind == .stop ? "stop" : "checkpoint"
            return confirmed > expected
                ? "rank \(rank) passed the \(noun) step \(expected): it checkpointed step \(confirmed)"
                : "rank \(rank) checkpointed step \(confirmed), before the \(noun) step \(expected)"
        case .differentSteps(let lowest, let highest):
            return "the ranks checkpointed different steps, from \(lowest) to \(highest)"
        case .unusablePosition(let rank, let step):
            return "rank \(rank) answered position \(step), after which no step can follow"
        case .endedBeforeConfirming(let rank, let status):
            return "rank \(rank) ended (\(status)) before confirming a checkpoint"
        case .endedBeforeStop(let ended):
            let ranks = ended.map { "rank \($0.rank) (\($0.status))" }.joined(separator: ", ")
            return "\(ranks) ended before the stop was requested, so no step can be saved by every rank"
        case .didNotStopCleanly(let rank, let status):
            return "rank \(rank) (no protocol) did not stop cleanly (\(status))"
        case .stoppedBeforeStarting(let rank):
            return "rank \(rank) (no protocol) was ended by the stop's SIGTERM before it had started running "
                + "(no output, under \(format(StopPolicy.plainStartupTime))s): it saved nothing"
        case .notConfirmedInTime(let ranks, let grace):
            return "rank(s) \(list(ranks)) did not confirm within \(format(grace))s"
        case .commitFailed(let reason):
            return "the commit failed (\(reason)); the previous record is untouched"
        case .neverSaidHello(let ranks):
            return "rank(s) \(list(ranks)) never said hello, so they save nothing the record could name"
        case .failedElsewhere(let reason):
            return reason
        }
    }
}

extension RankRecord.Note: CustomStringConvertible {
    public var description: String {
        switch self {
        case .passedStopStep(let step): return "passed stop step \(step)"
        case .stoppedBeforeStopStep(let step): return "stopped before stop step \(step)"
        case .didNotAnswerInTime: return "did not answer in time"
        case .answeredUnusablePosition: return "answered an unusable position"
        case .noConfirmationBeforeDeadline: return "no confirmation before the deadline"
        case .confirmedAfterDeadline: return "confirmed after the deadline"
        case .endedBeforeConfirming: return "ended before confirming"
        case .endedBeforeStop: return "ended before the stop"
        case .didNotStopCleanly: return "did not stop cleanly"
        case .stoppedBeforeStarting: return "stopped before it started"
        }
    }
}

extension ExitStatus: CustomStringConvertible {
    public var description: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .signaled(let signal): return "killed by \(SignalNumber.name(signal))"
        }
    }
}

/// "1, 2, 3".
private func list(_ ranks: [Int]) -> String {
    ranks.map(String.init).joined(separator: ", ")
}

/// Seconds for messages: "30" rather than "30.0", "0.5" kept.
func format(_ seconds: Double) -> String {
    Int(exactly: seconds).map(String.init) ?? String(seconds)
}
