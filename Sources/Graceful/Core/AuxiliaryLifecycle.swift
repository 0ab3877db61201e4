import Glibc

/// The decisions about a process of the job that is not a rank (msrun's scheduler): it gets no stop
/// request and no signal at a stop; once the last rank ended it has `exitDeadline` seconds to exit by
/// itself, then gets SIGTERM, and SIGKILL `killAfter` seconds later. Exiting non-zero (or on a signal
/// nobody sent it) before that fails the job. Fed with inputs and a clock like the `Coordinator`; the
/// supervisor carries out the actions.
public struct AuxiliaryLifecycle: Sendable {
    public enum Action: Equatable, Sendable {
        /// Send this signal to the process (through its pidfd).
        case signal(Int32)
        /// Print this line (prefixed `graceful: `).
        case report(String)
    }

    public enum Phase: Equatable, Sendable {
        /// Started; the ranks are still running.
        case running
        /// Every rank ended; it may exit by itself until then.
        case draining(until: Instant)
        /// It got SIGTERM; SIGKILL at that instant.
        case terminating(until: Instant)
        /// It got SIGKILL; only its reaping is awaited.
        case killed
        /// Reaped.
        case ended
    }

    /// What the process is called in lines: "scheduler".
    public let name: String
    /// Its log, named in every line about its failure.
    public let logPath: String
    public let exitDeadline: Double
    public let killAfter: Double
    public private(set) var phase = Phase.running
    /// The line saying how it failed the job, once it did.
    public private(set) var failure: String?

    public init(name: String, logPath: String, exitDeadline: Double, killAfter: Double) {
        self.name = name
        self.logPath = logPath
        self.exitDeadline = exitDeadline
        self.killAfter = killAfter
    }

    /// Reaped, with its status.
    public mutating func exited(_ status: ExitStatus, now: Instant) -> [Action] {
        let previous = phase
        phase = .ended
        switch previous {
        case .ended:
            return []
        case .running, .draining:
            guard !status.isSuccess else { return [] }
            let line = "the \(name) failed (\(status)); see \(logPath)"
            failure = line
            return [.report(line)]
        case .terminating, .killed:
            return [.report("the \(name) ended after it was signalled (\(status)); the job's result stands")]
        }
    }

    /// The last rank ended: the wait for its own exit begins.
    public mutating func ranksEnded(now: Instant) -> [Action] {
        guard phase == .running else { return [] }
        phase = .draining(until: now + exitDeadline)
        return []
    }

    /// Time passed: a deadline may have expired.
    public mutating func tick(now: Instant) -> [Action] {
        switch phase {
        case .draining(let until) where now >= until:
            phase = .terminating(until: now + killAfter)
            return [
                .report("the \(name) did not exit within \(format(exitDeadline))s after the last rank ended: SIGTERM, SIGKILL \(format(killAfter))s later"),
                .signal(SIGTERM),
            ]
        case .terminating(let until) where now >= until:
            phase = .killed
            return [.report("the \(name) did not exit on SIGTERM: SIGKILL"), .signal(SIGKILL)]
        default:
            return []
        }
    }

    /// A stop signal arrived while only this process is left: it is killed at once.
    public mutating func interrupted(now: Instant) -> [Action] {
        switch phase {
        case .draining, .terminating:
            phase = .killed
            return [.report("stop requested while waiting for the \(name) to exit: SIGKILL"), .signal(SIGKILL)]
        case .running, .killed, .ended:
            return []
        }
    }

    /// When `tick` has something to do next, if ever.
    public var nextDeadline: Instant? {
        switch phase {
        case .draining(let until), .terminating(let until): return until
        case .running, .killed, .ended: return nil
        }
    }

    public var hasEnded: Bool { phase == .ended }

    /// The job's exit code given the ranks': a failure of this process fails a job that otherwise
    /// succeeded; any other code already says the job did not succeed, and stands.
    public func exitCode(ranks code: Int32) -> Int32 {
        failure != nil && code == ExitCode.success ? ExitCode.rankFailed : code
    }
}
