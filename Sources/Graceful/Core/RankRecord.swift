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

    /// A rank's confirmation of its checkpoint.
    public struct Confirmation: Equatable, Sendable {
        public var step: Int
        public var path: CheckpointPath?
    }

    /// The rank said hello before the stop was requested.
    public internal(set) var speaksProtocol = false
    /// The answer to the current request: `.some(nil)` means "no boundary yet".
    public internal(set) var position: Int??
    /// The confirmation for the current (or last) request.
    public internal(set) var confirmation: Confirmation?
    public internal(set) var exit: ExitStatus?
    public internal(set) var teardown: Teardown = .none
    /// Something the summary must say about this rank (passed the stop step, did not answer, ...).
    public internal(set) var note: String?

    public var isAlive: Bool { exit == nil }
}
