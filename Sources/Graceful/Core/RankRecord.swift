import GracefulProtocol

/// What the coordinator knows about one rank in the current attempt.
public struct RankRecord: Equatable, Sendable {
    /// Where the rank is in the teardown sequence of `StopPolicy`.
    public enum Teardown: Equatable, Sendable {
        case none
        /// SIGTERM was sent; SIGKILL follows at `killAt`.
        case terminated(killAt: Instant)
        case killed
    }

    /// The rank's answer to the current request.
    public enum Position: Equatable, Sendable {
        case notAnswered
        /// The rank had not reached a step boundary yet.
        case noBoundary
        case step(Int)
        /// The largest `Int`: no step can follow it, so the answer takes no part in the choice.
        case unusable(Int)
    }

    /// What the summary must say about the rank; `Report.swift` words it.
    public enum Note: Equatable, Sendable {
        /// It confirmed a step past the stop step.
        case passedStopStep(Int)
        /// It confirmed a step before the stop step.
        case stoppedBeforeStopStep(Int)
        case didNotAnswerInTime
        case answeredUnusablePosition
        case noConfirmationBeforeDeadline
        case confirmedAfterDeadline
        case endedBeforeConfirming
        /// It had ended before the stop was requested.
        case endedBeforeStop
        /// A rank that does not speak the protocol ended otherwise than with 0 or on SIGTERM.
        case didNotStopCleanly
        /// A rank that does not speak the protocol was ended by the stop's SIGTERM before it had
        /// started running (`StopPolicy.plainStartupTime`).
        case stoppedBeforeStarting
    }

    /// A rank's confirmation of its checkpoint.
    public struct Confirmation: Equatable, Sendable {
        public var step: Int
        public var path: CheckpointPath?
    }

    /// The rank wrote output (`CoordinatorEvent.output`).
    public internal(set) var wroteOutput = false
    /// When a stop was requested, the rank had started running: it wrote output, spoke the
    /// protocol, or had run `StopPolicy.plainStartupTime` seconds.
    public internal(set) var startedBeforeStop = false
    /// The rank said hello before the stop was requested.
    public internal(set) var speaksProtocol = false
    public internal(set) var position: Position = .notAnswered
    /// The first confirmation for the current (or last) request, whether or not of the round's step.
    public internal(set) var confirmation: Confirmation?
    public internal(set) var exit: ExitStatus?
    public internal(set) var teardown: Teardown = .none
    public internal(set) var note: Note?

    public var isAlive: Bool { exit == nil }
}
