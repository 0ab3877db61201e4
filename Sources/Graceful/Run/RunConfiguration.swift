/// Everything `graceful run` was asked to do.
public struct RunConfiguration: Equatable, Sendable {
    /// The rank command and its arguments.
    public var command: [String]
    public var ranks = 1
    public var runDirectory = "graceful_run"
    public var controlFile = "graceful_exit.json"
    public var policy = StopPolicy()
    public var masterAddress = "127.0.0.1"
    /// `nil`: a port that is free at launch.
    public var masterPort: Int?
    /// `nil`: a new random id.
    public var runID: String?

    public init(command: [String]) {
        self.command = command
    }
}

/// Every exit code of `graceful`, as documented in the README.
public enum ExitCode {
    /// Every rank finished with 0, or a stop committed a consistent checkpoint.
    public static let success: Int32 = 0
    /// A rank failed while no stop was pending; the others were stopped.
    public static let rankFailed: Int32 = 1
    /// A stop was requested but no consistent checkpoint could be committed.
    public static let notCommitted: Int32 = 2
    /// Bad usage (sysexits EX_USAGE).
    public static let usage: Int32 = 64
    /// The commit record in the run directory is unreadable or does not fit this launch (EX_DATAERR).
    public static let dataError: Int32 = 65
    /// The coordinator could not set up its own machinery (EX_OSERR).
    public static let systemError: Int32 = 71
    /// Another run holds the run directory (EX_UNAVAILABLE): nothing was touched.
    public static let runDirectoryBusy: Int32 = 69
    /// The run directory or a log file cannot be created or written (EX_CANTCREAT).
    public static let cannotCreate: Int32 = 73
    /// The control file already requests an exit: nothing was launched (EX_TEMPFAIL).
    public static let exitAlreadyRequested: Int32 = 75
    /// The rank command exists but cannot be executed (as in a shell).
    public static let notExecutable: Int32 = 126
    /// The rank command was not found (as in a shell).
    public static let notFound: Int32 = 127
    // 128+N: a stop that committed nothing was forced by a repeated signal N (130 for Ctrl+C).
}
