/// The time limits of a stop, as documented for `--grace` and `--kill-after`.
///
/// The sequence for a rank that does not finish on its own is fixed and bounded:
/// 1. the stop request (a protocol message, or SIGTERM for a rank that does not speak the protocol);
/// 2. at `grace` seconds after the request, SIGTERM to the rank's process group;
/// 3. `killAfter` seconds later, SIGKILL to the process group.
/// A second stop signal moves step 2 to now; a third moves step 3 to now.
public struct StopPolicy: Equatable, Sendable {
    /// Seconds from the stop request until ranks that have not finished get SIGTERM.
    public var grace: Double
    /// Seconds from SIGTERM until SIGKILL.
    public var killAfter: Double
    /// Seconds the coordinator waits for every rank's position before choosing the stop step anyway.
    public var alignTimeout: Double

    public static let defaultGrace = 30.0
    public static let defaultKillAfter = 10.0
    public static let defaultAlignTimeout = 2.0

    public init(
        grace: Double = StopPolicy.defaultGrace,
        killAfter: Double = StopPolicy.defaultKillAfter,
        alignTimeout: Double = StopPolicy.defaultAlignTimeout
    ) {
        self.grace = grace
        self.killAfter = killAfter
        self.alignTimeout = alignTimeout
    }
}
