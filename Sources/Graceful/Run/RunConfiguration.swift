/// Everything `graceful run` was asked to do.
public struct RunConfiguration: Equatable, Sendable {
    /// The rank command and its arguments.
    public var command: [String]
    public var ranks = 1
    /// `nil`: `graceful_run/<job name>` (see `jobName`), so that different jobs started from one
    /// directory never share a record, logs or a lock.
    public var runDirectory: String?
    public var controlFile = "graceful_exit.json"
    public var policy = StopPolicy()
    public var masterAddress = "127.0.0.1"
    /// `nil`: a port that is free at launch.
    public var masterPort: Int?
    /// `nil`: a new random id.
    public var runID: String?
    /// Where each rank's log goes; `nil`: `<run dir>/rank_N.log`.
    public var rankLogPaths: [String]?
    /// The ranks whose output the console shows (msrun's `--tail_worker_log`); nil: every rank. The
    /// logs keep every rank's output either way.
    public var consoleRanks: Set<Int>?
    /// Variables every process of the job gets besides its own (msrun's `MS_TOPO_TIMEOUT`).
    public var extraEnvironment: [String: String] = [:]
    /// A process started before the ranks that is not one (msrun's scheduler).
    public var auxiliary: AuxiliaryConfiguration?
    /// Several nodes (README, "Several nodes"); nil: this machine alone.
    public var cluster: ClusterOptions?

    /// The multi-node options, created as one node of one when first set.
    var nodes: ClusterOptions {
        get { cluster ?? ClusterOptions(nodeCount: 1, nodeRank: 0) }
        set { cluster = newValue }
    }

    public init(command: [String]) {
        self.command = command
    }

    /// The run directory asked for, or the job's default. The nodes of a multi-node job launched
    /// from one shared directory each get their own: `graceful_run/<job>/node<K>`.
    public var effectiveRunDirectory: String {
        if let runDirectory { return runDirectory }
        let job = "graceful_run/" + Self.jobName(of: command)
        return cluster.map { "\(job)/node\($0.nodeRank)" } ?? job
    }

    /// Where rank `rank`'s log goes, given the run directory in use.
    public func rankLogPath(_ rank: Int, runDirectory: String) -> String {
        rankLogPaths?[rank] ?? "\(runDirectory)/rank_\((cluster?.nodeRank ?? 0) * ranks + rank).log"
    }

    /// A short name for the job a command runs: the script's name without `.py` for an interpreter
    /// (`python3 examples/python/train.py` is `train`; `python3 -m pkg.main` is `pkg.main`), the
    /// program's name otherwise (`./build/rank --fast` is `rank`). Only letters, digits, `.`, `_` and
    /// `-` are kept.
    public static func jobName(of command: [String]) -> String {
        guard let program = command.first else { return "job" }
        let base = basename(program)
        var name = base
        if base.hasPrefix("python") || base == "pypy3" || base == "pypy" {
            var arguments = command.dropFirst()[...]
            while let argument = arguments.first {
                arguments = arguments.dropFirst()
                if argument == "-m", let module = arguments.first {
                    name = module
                    break
                }
                if argument == "-c" { break }
                // Options of the interpreter come first; those with a value are few and rare here.
                if argument.hasPrefix("-") { continue }
                name = basename(argument)
                if name.hasSuffix(".py") { name.removeLast(3) }
                break
            }
        }
        let kept = name.filter { Self.jobNameCharacters.contains($0) }
        return kept.isEmpty || kept.allSatisfy({ $0 == "." }) ? "job" : kept
    }

    private static let jobNameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

    private static func basename(_ path: String) -> String {
        String(path.split(separator: "/").last ?? Substring(path))
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
    /// The nodes of a multi-node job did not all join within the rendezvous timeout, or disagree
    /// (EX_CONFIG): nothing was launched.
    public static let rendezvous: Int32 = 78
    /// The control file already requests an exit: nothing was launched (EX_TEMPFAIL).
    public static let exitAlreadyRequested: Int32 = 75
    /// The rank command exists but cannot be executed (as in a shell).
    public static let notExecutable: Int32 = 126
    /// The rank command was not found (as in a shell).
    public static let notFound: Int32 = 127
    // 128+N: a stop that committed nothing was forced by a repeated signal N (130 for Ctrl+C).
}

/// The options of a multi-node job (`--nnodes`, `--node-rank`, `--rdzv-*`, the job token).
public struct ClusterOptions: Equatable, Sendable {
    /// Seconds a node waits for every other one to join, by default (torchrun's join timeout).
    public static let defaultRendezvousTimeout = 600.0
    /// Seconds of silence after which a peer counts as lost, by default.
    public static let defaultHeartbeatTimeout = 5.0
    /// The framework's port when none is given: torchrun's default.
    public static let defaultMasterPort = 29500
    /// The shortest job token accepted, in bytes.
    public static let minimumTokenLength = 16

    /// Where the job's secret comes from.
    public enum TokenSource: Equatable, Sendable {
        case environment
        case file(String)
    }

    public var nodeCount: Int
    public var nodeRank: Int
    /// The leader's rendezvous endpoint; nil host: the master address; nil port: the master port + 1.
    public var rendezvousHost: String?
    public var rendezvousPort: Int?
    public var rendezvousTimeout = ClusterOptions.defaultRendezvousTimeout
    public var heartbeatTimeout = ClusterOptions.defaultHeartbeatTimeout
    public var token = TokenSource.environment

    public init(nodeCount: Int, nodeRank: Int) {
        self.nodeCount = nodeCount
        self.nodeRank = nodeRank
    }
}
