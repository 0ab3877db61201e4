/// The `graceful` command line, parsed by hand in swift-argument-parser's conventions: `--help` text
/// in its shape, `error: ...` on one line, exit code 64 for usage errors.
public enum CommandLineInterface {
    public static let version = "0.1.0"

    /// What the command line asks for.
    public enum Invocation: Equatable, Sendable {
        case run(RunConfiguration)
        /// `graceful queue run`.
        case queueRun(QueueRunConfiguration)
        /// `graceful queue status`: print the queue's state (as JSON with `json`).
        case queueStatus(directory: String, json: Bool)
        /// Print this text on stdout and exit 0.
        case help(String)
    }

    /// A usage error: print `error: <message>` and exit 64.
    public struct UsageError: Error, Equatable, CustomStringConvertible {
        public let message: String
        public var description: String { message }
    }

    public static let overview = """
        OVERVIEW: Graceful-exit and checkpoint coordinator for multi-process training jobs.

        USAGE: graceful <subcommand>

        OPTIONS:
          --version               Show the version.
          -h, --help              Show help information.

        SUBCOMMANDS:
          run                     Launch ranks and stop them together, at one step, with one
                                  consistent checkpoint.
          torchrun                The same, from torchrun's command line: 'torchrun ...' becomes
                                  'graceful torchrun ...'.
          msrun                   The same, with msrun's command line and MindSpore's scheduler.
          queue                   Run many tasks from a queue shared by every worker and host;
                                  stop and resume the whole sweep mid-task.

          See 'graceful help <subcommand>' for detailed help.

        """

    public static let runHelp = """
        OVERVIEW: Launch N ranks and stop them together, at one step, with one consistent checkpoint.

        A stop is requested by SIGINT (Ctrl+C), SIGTERM, SIGUSR1, SIGHUP, or the control file holding
        {"GracefulExit": 1}. Ranks using the client stop after the same step, save, and confirm; the
        coordinator then commits <run-dir>/last_checkpoint.json, from which the next launch resumes.
        A second signal sends SIGTERM to the ranks still running, a third SIGKILL. SIGUSR2 asks for a
        consistent checkpoint without stopping.

        USAGE: graceful run [<options>] [--] <command> [<arguments> ...]

        ARGUMENTS:
          <command>               The program every rank runs (looked up in PATH). A script
                                  ending in .py runs as 'python3 -u <script>' (the interpreter
                                  is $PYTHON_EXEC if set), as torchrun runs it.
          <arguments>             Its arguments, passed unchanged.

        OPTIONS:
          -n, --ranks <n>         Number of ranks to launch. (default: 1)
                                  Also --nproc-per-node (torchrun), --local_worker_num (msrun).
          --run-dir <dir>         Where rank_N.log and last_checkpoint.json live. (default:
                                  graceful_run/<job>, the job named after the script or
                                  program: graceful_run/train for python3 train.py)
                                  Also --log-dir, --log_dir (msrun).
          --control-file <path>   The file whose {"GracefulExit": 1} requests a stop.
                                  (default: graceful_exit.json)
          --grace <seconds>       How long ranks have, from the stop request, to confirm their
                                  checkpoint and exit before they get SIGTERM. (default: 30)
          --kill-after <seconds>  How long from SIGTERM to SIGKILL. (default: 10)
          --max-restarts <n>      When a rank fails, stop the whole gang and relaunch it from the
                                  last commit, up to n times; with several nodes, every node's
                                  ranks (the leader's value counts). (default: 0)
                                  Also --max_restarts.
          --restart-backoff <seconds>
                                  Wait before the first restart, doubled for each further one, up
                                  to 60 (or the first wait, if longer). (default: 1)
          --checkpoint-every <seconds>
                                  Ask every rank for a checkpoint at one aligned step, without
                                  stopping, this long after launch and after each round ends.
                                  SIGUSR2 asks for one at once. (default: never)
          --master-addr <addr>    MASTER_ADDR for the ranks. (default: 127.0.0.1, or the
                                  step's first node in a multi-node Slurm step)
                                  Also --master_addr.
          --master-port <port>    MASTER_PORT for the ranks. (default: a free port; 29500 with
                                  several nodes, 20000 + (job id % 6000) * 2 in a Slurm step)
                                  Also --master_port.
          --run-id <id>           The run id (GRACEFUL_RUN_ID, TORCHELASTIC_RUN_ID).
                                  (default: random) Also --rdzv-id, --rdzv_id.
          --no-python             Run a .py command as it is, not under Python. Also --no_python.

        SEVERAL NODES (one graceful run per node; README, "Several nodes"):
          --nnodes <n>            Nodes in the job. (default: 1, or SLURM_NNODES in a Slurm step)
          --node-rank <n>         This node's rank; node 0 leads. (default: 0, or SLURM_NODEID)
                                  Also --node_rank.
          --rdzv-endpoint <host:port>
                                  Where the leader listens and the others connect. (default:
                                  --master-addr, port --master-port + 1) Also --rdzv_endpoint.
          --rdzv-timeout <seconds>
                                  How long every node waits for all to join, and the leader
                                  for every node to be ready for a restart. (default: 600)
          --heartbeat-timeout <seconds>
                                  Silence after which a node counts as lost. (default: 5)
          --token-file <path>     The job's secret, the same on every node. (default: the
                                  GRACEFUL_JOB_TOKEN variable; at least 16 bytes)
          -h, --help              Show help information.

        Numbers are plain decimal: counts and ports are whole numbers (4), seconds may have a
        fraction (30, 0.5, .5). No sign, exponent, hex, inf or nan.

        EXIT CODES:
          0    every rank exited 0, or a stop committed a consistent checkpoint
          1    a rank failed while no stop was pending (after --max-restarts restarts), or
               with several nodes, a node failed or was lost, or the leader is gone
          2    a stop was requested but nothing could be committed
          64   usage error            65   unusable last_checkpoint.json
          69   run directory in use   71   system error
          73   run directory not writable
          75   the control file already requests an exit: nothing launched
          78   several nodes did not all join, or disagree: nothing launched
          126  command not executable 127  command not found
          128+N  a stop that committed nothing was forced by signal N (130: Ctrl+C)

        """

    static let runUsageHint = "see 'graceful run --help'"

    /// Parses the arguments after the program name, on this machine.
    public static func parse(_ arguments: [String]) throws(UsageError) -> Invocation {
        try parse(arguments, host: .current)
    }

    /// Parses the arguments after the program name on `host`, which names the Python interpreter and
    /// counts the processors and GPUs.
    static func parse(_ arguments: [String], host: Host) throws(UsageError) -> Invocation {
        guard let first = arguments.first else { return .help(overview) }
        switch first {
        case "-h", "--help": return .help(overview)
        case "--version": return .help(version + "\n")
        case "help":
            switch arguments.dropFirst().first {
            case "run": return .help(runHelp)
            case "torchrun": return .help(TorchrunCommandLine.help)
            case "msrun": return .help(MsrunOptions.help)
            case "queue": return .help(QueueCommandLine.help)
            default: return .help(overview)
            }
        case "run": return try parseRun(Array(arguments.dropFirst()), host: host)
        case "torchrun": return try TorchrunCommandLine.parse(Array(arguments.dropFirst()), host: host)
        case "msrun": return try MsrunOptions.parse(Array(arguments.dropFirst()), host: host)
        case "queue": return try QueueCommandLine.parse(Array(arguments.dropFirst()), host: host)
        default:
            if first.hasPrefix("-") {
                throw UsageError(message: "unknown option '\(first)' (see 'graceful --help')")
            }
            throw UsageError(message: "unknown subcommand '\(first)' (see 'graceful --help')")
        }
    }

    /// The options `graceful run` has; `graceful torchrun` takes those torchrun lacks.
    enum Option {
        case ranks, runDirectory, controlFile, grace, killAfter, masterAddress, masterPort, runID
        case maxRestarts, restartBackoff, checkpointEvery
        case nodeCount, nodeRank, rendezvousEndpoint, rendezvousTimeout, heartbeatTimeout, tokenFile
    }

    private static let spellings: [String: Option] = [
        "-n": .ranks, "--ranks": .ranks, "--nproc-per-node": .ranks, "--nproc_per_node": .ranks,
        "--local_worker_num": .ranks, "--local-worker-num": .ranks,
        "--run-dir": .runDirectory, "--log-dir": .runDirectory, "--log_dir": .runDirectory,
        "--control-file": .controlFile,
        "--grace": .grace,
        "--kill-after": .killAfter,
        "--master-addr": .masterAddress, "--master_addr": .masterAddress,
        "--master-port": .masterPort, "--master_port": .masterPort,
        "--run-id": .runID, "--rdzv-id": .runID, "--rdzv_id": .runID,
        "--max-restarts": .maxRestarts, "--max_restarts": .maxRestarts,
        "--restart-backoff": .restartBackoff,
        "--checkpoint-every": .checkpointEvery,
        "--nnodes": .nodeCount, "--node-rank": .nodeRank, "--node_rank": .nodeRank,
        "--rdzv-endpoint": .rendezvousEndpoint, "--rdzv_endpoint": .rendezvousEndpoint,
        "--rdzv-timeout": .rendezvousTimeout, "--rdzv_timeout": .rendezvousTimeout,
        "--heartbeat-timeout": .heartbeatTimeout, "--token-file": .tokenFile,
    ]

    private static func parseRun(_ arguments: [String], host: Host) throws(UsageError) -> Invocation {
        var configuration = RunConfiguration(command: [])
        var runsScriptsUnderPython = true
        var given: Set<Option> = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" {
                configuration.command = Array(arguments[(index + 1)...])
                break
            }
            if argument == "-h" || argument == "--help" { return .help(runHelp) }
            guard argument.hasPrefix("-"), argument != "-" else {
                configuration.command = Array(arguments[index...])
                break
            }
            var name = argument
            var value: String?
            if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
                name = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            } else if argument.hasPrefix("-n"), argument.count > 2, !argument.hasPrefix("--") {
                name = "-n"
                value = String(argument.dropFirst(2))
            }
            if name == "--no-python" || name == "--no_python" {
                guard value == nil else { throw UsageError(message: "'\(name)' takes no value (\(runUsageHint))") }
                runsScriptsUnderPython = false
                index += 1
                continue
            }
            guard let option = spellings[name] else {
                throw UsageError(message: "unknown option '\(name)' (\(runUsageHint))")
            }
            if value == nil {
                index += 1
                guard index < arguments.count else {
                    throw UsageError(message: "missing value for '\(name)' (\(runUsageHint))")
                }
                value = arguments[index]
            }
            try apply(option, name: name, value: value!, to: &configuration)
            given.insert(option)
            index += 1
        }
        guard let program = configuration.command.first, !program.isEmpty else {
            throw UsageError(message: "missing the command every rank runs, e.g. 'graceful run -n 4 -- python3 train.py' (\(runUsageHint))")
        }
        // The torchrun habit, `graceful run -n 4 train.py`: a script is rarely executable, and never
        // meant to run under another interpreter than Python.
        if runsScriptsUnderPython, program.hasSuffix(".py") {
            configuration.command = [host.python, "-u"] + configuration.command
        }
        try fitSlurm(&configuration, host: host, given: given)
        try settleNodes(&configuration, host: host)
        return .run(configuration)
    }

    /// Sets `option` to `value`; a usage error ends with `hint`, the help to see.
    static func apply(
        _ option: Option, name: String, value: String, to configuration: inout RunConfiguration,
        hint: String = runUsageHint
    ) throws(UsageError) {
        switch option {
        case .ranks:
            configuration.ranks = try wholeNumber(value, name: name, of: "a number of ranks", in: 1...65536, hint: hint)
        case .runDirectory:
            guard !value.isEmpty else { throw UsageError(message: "'\(name)' takes a directory, not an empty string (\(hint))") }
            configuration.runDirectory = value
        case .controlFile:
            guard !value.isEmpty, !value.hasSuffix("/") else {
                throw UsageError(message: "'\(name)' takes a file path, not '\(value)' (\(hint))")
            }
            configuration.controlFile = value
        case .grace:
            configuration.policy.grace = try seconds(value, name: name, hint: hint)
        case .killAfter:
            configuration.policy.killAfter = try seconds(value, name: name, hint: hint)
        case .maxRestarts:
            configuration.policy.maxRestarts = try wholeNumber(value, name: name, of: "a number of restarts", in: 0...1_000_000, hint: hint)
        case .restartBackoff:
            configuration.policy.restartBackoff = try seconds(value, name: name, hint: hint)
        case .checkpointEvery:
            let every = try seconds(value, name: name, hint: hint)
            guard every > 0 else {
                throw UsageError(message: "\(name): \"\(value)\" is not above 0 seconds (\(hint))")
            }
            configuration.policy.checkpointEvery = every
        case .masterAddress:
            guard !value.isEmpty, !value.contains(where: \.isWhitespace) else {
                throw UsageError(message: "'\(name)' takes a host name or address, not '\(value)' (\(hint))")
            }
            configuration.masterAddress = value
        case .masterPort:
            configuration.masterPort = try wholeNumber(value, name: name, of: "a TCP port", in: 1...65535, hint: hint)
        case .runID:
            guard !value.isEmpty, !value.contains(where: { $0.isWhitespace || $0 == "=" }) else {
                throw UsageError(message: "'\(name)' takes a non-empty id without spaces, not '\(value)' (\(hint))")
            }
            configuration.runID = value
        case .nodeCount:
            configuration.nodes.nodeCount = try wholeNumber(value, name: name, of: "a number of nodes", in: 1...65536, hint: hint)
        case .nodeRank:
            configuration.nodes.nodeRank = try wholeNumber(value, name: name, of: "a node rank", in: 0...65535, hint: hint)
        case .rendezvousEndpoint:
            let (host, port) = try endpoint(value, name: name, hint: hint)
            configuration.nodes.rendezvousHost = host
            configuration.nodes.rendezvousPort = port
        case .rendezvousTimeout:
            configuration.nodes.rendezvousTimeout = try seconds(value, name: name, hint: hint)
        case .heartbeatTimeout:
            let timeout = try seconds(value, name: name, hint: hint)
            guard timeout > 0 else { throw UsageError(message: "\(name): \"\(value)\" is not above 0 seconds (\(hint))") }
            configuration.nodes.heartbeatTimeout = timeout
        case .tokenFile:
            guard !value.isEmpty else { throw UsageError(message: "'\(name)' takes a file path (\(hint))") }
            configuration.nodes.token = .file(value)
        }
    }

    /// `HOST:PORT`, `[IPv6]:PORT`, or `HOST` alone (the port then follows from the master port).
    static func endpoint(_ value: String, name: String, hint: String) throws(UsageError) -> (String, Int?) {
        var host = value
        var port: Int?
        if let colon = value.lastIndex(of: ":"), !value.hasSuffix("]"), value.filter({ $0 == ":" }).count == 1 || value.hasPrefix("[") {
            host = String(value[..<colon])
            port = try wholeNumber(String(value[value.index(after: colon)...]), name: name, of: "a TCP port", in: 1...65535, hint: hint)
        }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(where: \.isWhitespace) else {
            throw UsageError(message: "'\(name)' takes HOST:PORT, not '\(value)' (\(hint))")
        }
        return (host, port)
    }

    /// Inside a Slurm job step, what the options leave out comes from Slurm: the node count, this
    /// node's rank, the leader (the first host of the step's node list; its NodeAddr when that name
    /// does not resolve here), a master port of the job's
    /// own (two jobs on one node must not share one), and a grace that ends before the cluster's
    /// KillWait, after which Slurm SIGKILLs every task.
    static func fitSlurm(_ configuration: inout RunConfiguration, host: Host, given: Set<Option>) throws(UsageError) {
        let allocation: SlurmAllocation?
        do {
            allocation = try SlurmAllocation.from(environment: host.environment)
        } catch {
            throw UsageError(message: "inside a Slurm job, \(error) (\(runUsageHint))")
        }
        guard let allocation else { return }
        if !given.contains(.nodeCount) && !given.contains(.nodeRank) && allocation.nodeCount > 1 {
            if let problem = SlurmAllocation.launchProblem(environment: host.environment) {
                throw UsageError(message: "\(problem) (\(runUsageHint))")
            }
            configuration.nodes.nodeCount = allocation.nodeCount
            configuration.nodes.nodeRank = allocation.nodeRank
            if !given.contains(.masterAddress) {
                // A node's name need not resolve (slurm.conf's NodeAddr is how Slurm reaches it):
                // then the leader's node is reached at Slurm's address for it.
                configuration.masterAddress = host.slurmNodeAddress(allocation.leaderHost) ?? allocation.leaderHost
            }
            if !given.contains(.masterPort), let job = Int(allocation.jobID) {
                configuration.masterPort = slurmMasterPort(jobID: job)
            }
        }
        guard !given.contains(.grace) || !given.contains(.killAfter), let killWait = host.slurmKillWait() else { return }
        var policy = configuration.policy
        // Slurm's SIGKILL comes KillWait after its SIGTERM: the whole teardown must fit before it.
        if !given.contains(.killAfter) { policy.killAfter = min(policy.killAfter, max(0.5, killWait / 6)) }
        if !given.contains(.grace) { policy.grace = min(policy.grace, max(0.5, killWait - policy.killAfter - max(1, killWait / 6))) }
        configuration.policy = policy
    }

    /// Two ports per job (the master's and the rendezvous'), in 20000...31999: below Linux's
    /// ephemeral ports (32768-60999 by default), one of which any connection on the node may hold
    /// when the ranks bind the master port.
    static func slurmMasterPort(jobID: Int) -> Int { 20000 + (jobID % 6000) * 2 }

    /// A multi-node job needs its nodes' options to agree with each other and a secret; one node is
    /// a plain run.
    static func settleNodes(_ configuration: inout RunConfiguration, host: Host, hint: String = runUsageHint) throws(UsageError) {
        guard let nodes = configuration.cluster else { return }
        if nodes.nodeCount == 1 {
            guard nodes.nodeRank == 0 else {
                throw UsageError(message: "--node-rank \(nodes.nodeRank) needs --nnodes above it (\(hint))")
            }
            configuration.cluster = nil
            return
        }
        guard nodes.nodeRank < nodes.nodeCount else {
            throw UsageError(message: "--node-rank \(nodes.nodeRank) is not below --nnodes \(nodes.nodeCount) (\(hint))")
        }
        if case .environment = nodes.token, host.environment["GRACEFUL_JOB_TOKEN"] == nil {
            throw UsageError(message: "--nnodes \(nodes.nodeCount) needs the job's secret on every node: export GRACEFUL_JOB_TOKEN=$(head -c 32 /dev/urandom | base64) (the same value everywhere), or pass --token-file PATH (\(hint))")
        }
    }

    /// Seconds as plain decimal: digits with an optional fraction (`30`, `0.5`, `.5`). `Double(_:)`
    /// alone would also take `0x10`, `1e3`, `inf` and `nan`.
    static func seconds(_ value: String, name: String, hint: String = runUsageHint) throws(UsageError) -> Double {
        let parts = value.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let fraction = parts.count == 2 ? parts[1] : nil
        let wellFormed = isDigits(parts[0]) && (fraction.map { !$0.isEmpty && isDigits($0) } ?? !parts[0].isEmpty)
        guard wellFormed, let seconds = Double(value) else {
            throw UsageError(message: "\(name): \"\(value)\" is not a number of seconds (\(hint))")
        }
        guard seconds <= maximumSeconds else {
            throw UsageError(message: "\(name): \"\(value)\" is more than \(Int(maximumSeconds)) seconds (\(hint))")
        }
        return seconds
    }

    /// A year: longer waits are surely a mistake.
    private static let maximumSeconds = 31_536_000.0

    /// A count or port as plain decimal digits, within `range`.
    static func wholeNumber(
        _ value: String, name: String, of what: String, in range: ClosedRange<Int>, hint: String = runUsageHint
    ) throws(UsageError) -> Int {
        guard !value.isEmpty, isDigits(Substring(value)) else {
            throw UsageError(message: "\(name): \"\(value)\" is not a whole number (\(hint))")
        }
        guard let number = Int(value), range.contains(number) else {
            throw UsageError(message: "\(name): \"\(value)\" is not \(what) from \(range.lowerBound) to \(range.upperBound) (\(hint))")
        }
        return number
    }

    static func isDigits(_ text: Substring) -> Bool {
        text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }
}
