/// The numbers a `queue run` decides by; each is an option (README, "graceful queue").
public struct QueuePolicy: Equatable, Sendable {
    /// A claim whose heartbeat did not change for this long, on the observer's own clock, is taken back.
    public var lease: Double = 30
    /// Failed attempts after which a task is recorded failed.
    public var maxAttempts = 3
    /// Leases taken back (the holder died or stopped renewing) after which a task is recorded
    /// failed rather than claimed again: a task that kills or hangs its worker every time is not
    /// retried without end.
    public var maxLeaseExpiries = 3
    /// The wait after a task's first failure, doubled after each further one, up to `maximumBackoff`.
    public var backoff: Double = 1
    /// Whether an idle worker may start a second copy of the task that has run longest. Off by
    /// default: a copy doubles a task's use of devices.
    public var stragglers = false

    public static let maximumBackoff = 60.0

    public init() {}

    /// The wait before the attempt that follows `failures` failures (none before the first).
    public func backoff(afterFailures failures: Int) -> Double {
        guard failures > 0 else { return 0 }
        let doubled = backoff * Double(1 << min(failures - 1, 20))
        return min(doubled, max(Self.maximumBackoff, backoff))
    }

    /// How often a holder renews its lease: a third of it, so two renewals may be lost before it
    /// expires, and at most every 5 seconds.
    public var heartbeatInterval: Double { min(5, lease / 3) }
}
