/// The time limits and counts that govern a run, as documented for the command-line options.
///
/// The teardown sequence for a rank that does not finish on its own is fixed and bounded:
/// 1. the stop request (a protocol message, or SIGTERM for a rank that does not speak the protocol);
/// 2. at `grace` seconds after the request, SIGTERM to the rank's process group;
/// 3. `killAfter` seconds later, SIGKILL to the process group.
/// A second stop signal moves step 2 to now; a third moves step 3 to now. Signals closer together
/// than `signalDebounce` count once, so a storm of signals is one request, not an instant SIGKILL.
public struct StopPolicy: Equatable, Sendable {
    /// Seconds from the stop request until ranks that have not finished get SIGTERM; also how long a
    /// checkpoint round may take before it is abandoned.
    public var grace: Double
    /// Seconds from SIGTERM until SIGKILL.
    public var killAfter: Double
    /// Seconds the coordinator waits for every rank's position before choosing the step anyway.
    public var alignTimeout: Double
    /// How many times a failed gang is relaunched from the last commit before the run fails.
    public var maxRestarts: Int
    /// Seconds before the first restart; doubled for each further one, up to `restartBackoffCap`.
    public var restartBackoff: Double
    /// Seconds between the end of one checkpoint round and the start of the next; nil: none.
    public var checkpointEvery: Double?
    /// Repeated stop signals closer together than this count as one.
    public var signalDebounce: Double

    public static let defaultGrace = 30.0
    public static let defaultKillAfter = 10.0
    public static let defaultAlignTimeout = 2.0
    public static let defaultRestartBackoff = 1.0
    /// The longest wait between two restarts, unless the first wait is longer already.
    public static let restartBackoffCap = 60.0
    public static let defaultSignalDebounce = 0.25
    /// A rank that does not speak the protocol has started running once it wrote output or ran this
    /// many seconds; one that a stop's SIGTERM ends before that never got past its start-up (an
    /// `init()` that was still connecting), so the stop did not end it cleanly.
    public static let plainStartupTime = 5.0
    /// Seconds between two lines, during a stop's grace, naming the ranks still waited for.
    public static let progressInterval = 5.0

    public init(
        grace: Double = StopPolicy.defaultGrace,
        killAfter: Double = StopPolicy.defaultKillAfter,
        alignTimeout: Double = StopPolicy.defaultAlignTimeout,
        maxRestarts: Int = 0,
        restartBackoff: Double = StopPolicy.defaultRestartBackoff,
        checkpointEvery: Double? = nil,
        signalDebounce: Double = StopPolicy.defaultSignalDebounce
    ) {
        self.grace = grace
        self.killAfter = killAfter
        self.alignTimeout = alignTimeout
        self.maxRestarts = maxRestarts
        self.restartBackoff = restartBackoff
        self.checkpointEvery = checkpointEvery
        self.signalDebounce = signalDebounce
    }

    /// The wait before restart number `restart` (1 for the first).
    public func backoff(beforeRestart restart: Int) -> Double {
        var wait = restartBackoff
        for _ in 1..<max(1, restart) where wait < Self.restartBackoffCap { wait *= 2 }
        return min(wait, max(Self.restartBackoffCap, restartBackoff))
    }
}
