import Glibc

/// `graceful msrun`: msrun's command line (MindSpore 2.x, `mindspore/parallel/cluster/run.py`) read
/// the way msrun reads it, turned into a run with MindSpore's scheduler as an auxiliary process.
/// Each option is honoured, accepted because it is harmless here, or refused with one line saying why
/// (README, "Coming from msrun").
public enum MsrunOptions {
    /// Seconds the scheduler has to exit by itself after the last worker ended, by default. MindSpore's
    /// scheduler exits once every worker unregistered, or after its heartbeat timeout (about 30 s) when
    /// a worker was killed.
    public static let defaultSchedulerTimeout = 60.0

    public static let help = """
        OVERVIEW: msrun's command line, with graceful's aligned, committed stop.

        Starts MindSpore's scheduler process, then the workers, with the environment msrun gives
        them; Ctrl+C, SIGTERM or the control file stop every worker at one step with one consistent
        checkpoint. The scheduler is not a rank: it gets no stop request and no signal at a stop;
        once the last worker ended it has --scheduler-timeout seconds to exit by itself, then it
        gets SIGTERM, and SIGKILL --kill-after seconds later. Its failure fails the job.

        USAGE: graceful msrun [<options>] <task_script> [<task_script_args> ...]

        MSRUN'S OPTIONS (--opt value or --opt=value):
          --worker_num <n>          Workers in the whole job; a multiple of --local_worker_num:
                                    one graceful msrun per node. (default: 8)
          --local_worker_num <n>    Workers on this node. (default: 8)
          --master_addr <addr>      MS_SCHED_HOST. (default: 127.0.0.1)
          --master_port <port>      MS_SCHED_PORT. (default: a free port; msrun's is 8118)
          --log_dir <dir>           Where scheduler.log and worker_N.log go; also graceful's run
                                    directory. (default: logs in the current directory, run
                                    directory graceful_run/<job>)
          --worker_log_name <name>  Worker logs are <name>_N.log; {hostname} and {ip} (this
                                    machine's address toward --master_addr) are replaced.
          --cluster_time_out <s>    MS_TOPO_TIMEOUT for every process. (default: 600)
          --node_rank <n>           This node's rank, needed on every node of several; node 0
                                    (at --master_addr) leads and runs the scheduler. One node:
                                    ignored, as msrun does. (default: -1)
          --join <True|False>       Accepted; graceful always waits for the job.
          --tail_worker_log <list>  The workers whose output the console shows, prefixed, as
                                    0,1,...; -1: all. Every log keeps everything. (default: -1)
          --bind_core, --bind_numa  Only False; --sim_level, --sim_rank_id, --rank_table_file
                                    are refused.

        GRACEFUL'S OPTIONS:
          --grace <seconds>         From a stop request to SIGTERM of the workers. (default: 30)
          --kill-after <seconds>    From SIGTERM to SIGKILL. (default: 10)
          --scheduler-timeout <seconds>
                                    From the last worker's end to SIGTERM of the scheduler.
                                    (default: 60)
          --control-file <path>     (default: graceful_exit.json)
          --rdzv-timeout <seconds>, --heartbeat-timeout <seconds>, --token-file <path>
                                    Several nodes: as in 'graceful run --help'. The nodes meet
                                    at --master_addr, port --master_port + 1.
          -h, --help                Show help information.

        A script is run as 'python <task_script>', as msrun does; a task_script of python,
        python3 or pytest is run as given. Exit codes are graceful run's (see 'graceful help run').

        """

    private static let hint = "see 'graceful msrun --help'"

    /// Parses the arguments after `msrun`.
    public static func parse(_ arguments: [String]) throws(CommandLineInterface.UsageError) -> CommandLineInterface.Invocation {
        try parse(arguments, host: .current)
    }

    /// Parses the arguments after `msrun` on `host` (its environment holds the job token).
    static func parse(_ arguments: [String], host: CommandLineInterface.Host) throws(CommandLineInterface.UsageError) -> CommandLineInterface.Invocation {
        var workerNumber = 8
        var localWorkerNumber = 8
        var logDirectory = ""
        var workerLogName = ""
        var clusterTimeOut = 600
        var configuration = RunConfiguration(command: [])
        var schedulerTimeout = defaultSchedulerTimeout
        /// nil: every worker (msrun's -1).
        var tailedWorkers: Set<Int>?
        /// msrun's -1: the scheduler numbers the nodes, which graceful does not.
        var nodeRank = -1
        var index = 0
        while index < arguments.count {
            var argument = arguments[index]
            if argument == "-h" || argument == "--help" { return .help(help) }
            if argument == "--" {
                index += 1
                break
            }
            guard argument.hasPrefix("-"), argument != "-" else { break }
            var value: String?
            if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
                value = String(argument[argument.index(after: equals)...])
                argument = String(argument[..<equals])
            }
            let name = argument
            func takeValue() throws(CommandLineInterface.UsageError) -> String {
                if let value { return value }
                index += 1
                guard index < arguments.count else { throw usage("missing value for '\(name)'") }
                return arguments[index]
            }
            switch name {
            case "--worker_num":
                workerNumber = try integer(try takeValue(), name: name, minimum: 1)
            case "--local_worker_num":
                localWorkerNumber = try integer(try takeValue(), name: name, minimum: 1)
            case "--master_addr":
                let address = try takeValue()
                guard !address.isEmpty, !address.contains(where: \.isWhitespace) else {
                    throw usage("'\(name)' takes a host name or address, not '\(address)'")
                }
                configuration.masterAddress = address
            case "--master_port":
                configuration.masterPort = try integer(try takeValue(), name: name, minimum: 1, maximum: 65535)
            case "--node_rank":
                nodeRank = try integer(try takeValue(), name: name, minimum: -1)
            case "--log_dir":
                logDirectory = try takeValue()
            case "--worker_log_name":
                workerLogName = try takeValue()
                if workerLogName.contains("/") { throw usage("'\(name)' takes a file name, not a path") }
            case "--cluster_time_out":
                clusterTimeOut = try integer(try takeValue(), name: name)
            case "--join":
                _ = try boolean(try takeValue(), name: name)
            case "--tail_worker_log":
                let list = try takeValue()
                let workers = list.split(separator: ",", omittingEmptySubsequences: false).map { Int($0) }
                guard workers.allSatisfy({ $0 != nil }) else {
                    throw usage("'\(name)' takes -1 or a comma-separated list of worker numbers, not '\(list)'")
                }
                tailedWorkers = list == "-1" ? nil : Set(workers.compactMap { $0 })
            case "--bind_core", "--bind_numa":
                let setting = try takeValue()
                guard setting.lowercased() == "false" else {
                    throw usage("'\(name)': binding workers to cores or NUMA nodes is not supported by graceful; drop it or pass False")
                }
            case "--sim_level", "--sim_rank_id":
                _ = try takeValue()
                throw usage("'\(name)': simulation (dry run) is not supported by graceful; run msrun itself for it")
            case "--rank_table_file":
                guard try takeValue().isEmpty else {
                    throw usage("'\(name)': rank table files are for Ascend clusters, which graceful does not support")
                }
            case "--grace":
                configuration.policy.grace = try seconds(try takeValue(), name: name)
            case "--kill-after":
                configuration.policy.killAfter = try seconds(try takeValue(), name: name)
            case "--scheduler-timeout":
                schedulerTimeout = try seconds(try takeValue(), name: name)
            case "--rdzv-timeout":
                configuration.nodes.rendezvousTimeout = try seconds(try takeValue(), name: name)
            case "--heartbeat-timeout":
                configuration.nodes.heartbeatTimeout = try seconds(try takeValue(), name: name)
            case "--token-file":
                configuration.nodes.token = .file(try takeValue())
            case "--control-file":
                let path = try takeValue()
                guard !path.isEmpty, !path.hasSuffix("/") else { throw usage("'\(name)' takes a file path, not '\(path)'") }
                configuration.controlFile = path
            default:
                throw usage("unknown option '\(name)'")
            }
            index += 1
        }
        guard index < arguments.count, !arguments[index].isEmpty else {
            throw usage("missing the task script, e.g. 'graceful msrun --worker_num=2 --local_worker_num=2 train.py'")
        }
        if workerNumber > localWorkerNumber {
            guard workerNumber % localWorkerNumber == 0 else {
                throw usage("--worker_num \(workerNumber) is not a multiple of --local_worker_num \(localWorkerNumber): graceful runs the same number of workers on every node")
            }
            guard nodeRank >= 0 else {
                throw usage("--worker_num \(workerNumber) on nodes of \(localWorkerNumber) worker(s) needs --node_rank on every node (0 on the node at --master_addr): graceful numbers no node itself")
            }
            configuration.nodes.nodeCount = workerNumber / localWorkerNumber
            configuration.nodes.nodeRank = nodeRank
        }
        if localWorkerNumber > workerNumber {
            throw usage("Total worker number is \(workerNumber), but got exceeded local worker number: \(localWorkerNumber).")
        }
        let script = arguments[index]
        let scriptArguments = Array(arguments[(index + 1)...])
        configuration.command = ["python", "python3", "pytest"].contains(script)
            ? [script] + scriptArguments
            : ["python", script] + scriptArguments
        configuration.ranks = localWorkerNumber
        if !logDirectory.isEmpty { configuration.runDirectory = logDirectory }
        var logName = workerLogName.isEmpty ? "worker" : workerLogName.replacing("{hostname}", with: NetworkAddress.hostName())
        if logName.contains("{ip}") {
            guard let address = NetworkAddress.localAddress(toward: configuration.masterAddress) else {
                throw usage("'--worker_log_name': {ip} needs this machine's address toward --master_addr '\(configuration.masterAddress)', which does not resolve or cannot be reached")
            }
            logName = logName.replacing("{ip}", with: address)
        }
        // Named by rank id, as msrun names them: node K's first worker is K * local_worker_num.
        let firstWorker = workerNumber > localWorkerNumber ? nodeRank * localWorkerNumber : 0
        configuration.rankLogPaths = (0..<localWorkerNumber).map { join(logDirectory, "\(logName)_\(firstWorker + $0).log") }
        configuration.extraEnvironment = ["MS_TOPO_TIMEOUT": String(clusterTimeOut)]
        configuration.consoleRanks = tailedWorkers
        // The scheduler runs on the node at --master_addr: node 0.
        if configuration.nodes.nodeRank == 0 {
            configuration.auxiliary = AuxiliaryConfiguration(
                name: "scheduler", logPath: join(logDirectory, "scheduler.log"), exitDeadline: schedulerTimeout)
        }
        if configuration.cluster != nil && configuration.masterPort == nil { configuration.masterPort = 8118 }
        try CommandLineInterface.settleNodes(&configuration, host: host, hint: hint)
        if configuration.cluster != nil, !logDirectory.isEmpty { configuration.runDirectory = logDirectory + "/node\(configuration.nodes.nodeRank)" }
        return .run(configuration)
    }

    private static func usage(_ message: String) -> CommandLineInterface.UsageError {
        CommandLineInterface.UsageError(message: "\(message) (\(hint))")
    }

    /// Python's `os.path.join(directory, name)` for a plain name.
    private static func join(_ directory: String, _ name: String) -> String {
        directory.isEmpty || directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// An integer as msrun's `type=int` takes it (an optional sign, decimal digits).
    private static func integer(
        _ value: String, name: String, minimum: Int = Int.min, maximum: Int = Int.max
    ) throws(CommandLineInterface.UsageError) -> Int {
        let digits = value.hasPrefix("-") || value.hasPrefix("+") ? value.dropFirst() : Substring(value)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              let number = Int(value.hasPrefix("+") ? String(digits) : value)
        else { throw usage("\(name): \"\(value)\" is not an integer") }
        guard number >= minimum, number <= maximum else {
            throw usage("\(name): \(number) is out of range")
        }
        return number
    }

    /// `--join`'s values as msrun's `ast.literal_eval` with `choices=[True, False]` takes them.
    private static func boolean(_ value: String, name: String) throws(CommandLineInterface.UsageError) -> Bool {
        switch value {
        case "True", "1": return true
        case "False", "0": return false
        default: throw usage("\(name): \"\(value)\" is not True or False")
        }
    }

    /// Plain decimal seconds (`30`, `0.5`), at most a year.
    private static func seconds(_ value: String, name: String) throws(CommandLineInterface.UsageError) -> Double {
        let parts = value.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let isDigits = { (text: Substring) in text.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") } }
        let wellFormed = isDigits(parts[0]) && (parts.count == 2 ? !parts[1].isEmpty && isDigits(parts[1]) : !parts[0].isEmpty)
        guard wellFormed, let seconds = Double(value), seconds <= 31_536_000 else {
            throw usage("\(name): \"\(value)\" is not a number of seconds up to a year")
        }
        return seconds
    }

}
