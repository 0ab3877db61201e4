/// `graceful torchrun`: torchrun's command line (`torch.distributed.run` of PyTorch 2.x) on one node,
/// mapped onto the `RunConfiguration` of `graceful run`. Every torchrun option is honoured, accepted
/// as harmless, or refused with its reason: none is silently misread. As in argparse, which torchrun
/// uses, a long option may be any unambiguous prefix, `_` and `-` are the same in its name, and an
/// option left out takes its value from `PET_<NAME>` where torchrun reads one.
enum TorchrunCommandLine {
    static let usageHint = "see 'graceful torchrun --help'"

    static let help = """
        OVERVIEW: torchrun's command line, with graceful's aligned, confirmed, committed stop.

        'torchrun ...' becomes 'graceful torchrun ...': the same options, the script run the same
        way, the same environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...).
        Unlike torchrun, a stop signal is not forwarded with a SIGKILL 30 s later: ranks using the
        client stop after the same step, save, and confirm, and graceful exits 0 once it committed
        the checkpoint (torchrun exits 1); a failed gang restarts from the last commit. Several
        nodes take one graceful torchrun each, with a fixed node count (no elastic rendezvous).
        See 'graceful run --help' for stops, signals, several nodes and exit codes.

        USAGE: graceful torchrun [<options>] [--] <script> [<arguments> ...]

        ARGUMENTS:
          <script>                The training script every rank runs as 'python3 -u <script>'
                                  (the interpreter is $PYTHON_EXEC if set, else python3 in PATH),
                                  a module with -m, a program with --no-python.
          <arguments>             Its arguments, passed unchanged.

        OPTIONS (honoured):
          --nproc-per-node <n>    Ranks to launch: a number, cpu (the processors), gpu (the NVIDIA
                                  GPUs, refused without one), or auto (the GPUs, else the
                                  processors). (default: 1)
          --nnodes <n>            Nodes in the job, one graceful per node; N:N is N (an
                                  elastic MIN:MAX is refused). (default: 1)
          --node-rank <n>         This node's rank; node 0 leads. (default: 0)
          --max-restarts <n>      Restart the whole gang (every node's ranks) from the last commit
                                  after a failure, up to n times. (default: 0)
          --rdzv-id <id>          The run id (TORCHELASTIC_RUN_ID, GRACEFUL_RUN_ID), unless
                                  --standalone, which takes a new one as torchrun does.
                                  (default: random)
          --master-addr <addr>    MASTER_ADDR, with the static rendezvous only, as in torchrun.
                                  (default: 127.0.0.1)
          --master-port <port>    MASTER_PORT, likewise. (default: a free port on one node,
                                  29500 with several)
          --rdzv-endpoint <host:port>
                                  With the static rendezvous, MASTER_ADDR and MASTER_PORT, as in
                                  torchrun (graceful's leader at the port + 1); with another
                                  backend and several nodes, graceful's leader, the ranks getting
                                  its host and port + 1; otherwise harmless.
          -m, --module            Run the script as a module: 'python3 -u -m <script>'.
          --no-python             Run the script as a program, not under Python.
          --run-path              Run the script under Python (a fresh interpreter per rank, as
                                  without it: torchrun's runpy in its own worker gives the script
                                  the same __main__ and sys.argv).
          --log-dir <dir>         The run directory is <dir>/<job> (rank_N.log,
                                  last_checkpoint.json), one per job as torchrun makes one per
                                  run, but the same at each launch, so that the next resumes.
                                  (default: graceful_run/<job>)
          --shutdown-timeout <seconds>
                                  graceful's --grace: from the stop request until ranks that have
                                  not finished get SIGTERM. (default: 30)
          --role <name>           default; other roles are not supported yet.

        OPTIONS (accepted, harmless):
          --standalone            One node (refused with --nnodes above 1).
          --rdzv-backend <name>, --rdzv-conf <conf>, --local-addr <addr>
                                  graceful's own rendezvous serves every backend. One other than static
                                  (c10d, etcd, ...) leaves out --master-addr, --master-port and
                                  --rdzv-endpoint, as in torchrun.
          --monitor-interval <seconds>
                                  graceful learns of a rank's exit at once (SIGCHLD).
          --start-method <spawn|fork|forkserver>
                                  Every rank is a new process running the script.
          -r, --redirects <std>, -t, --tee <std>
                                  Every line of every rank goes to <run-dir>/rank_N.log and to the
                                  console, prefixed [rankN]:.
          --local-ranks-filter <ranks>, --log-line-prefix-template <template>,
          --duplicate-stdout-filters <filters>, --duplicate-stderr-filters <filters>
                                  The console shows every rank, prefixed [rankN]:; rank_N.log
                                  holds each rank's lines for grep.
          --event-log-handler <name>
                                  graceful reports its events on stderr, prefixed graceful:.
          --signals-to-handle <signals>
                                  graceful handles signals its own way: SIGINT, SIGTERM, SIGUSR1
                                  and SIGHUP stop gracefully, SIGUSR2 checkpoints, SIGQUIT stops
                                  now; a second stop signal escalates.

        OPTIONS (refused, with the reason):
          --logs-specs <name>     graceful writes the logs itself and loads no torchrun plugin.
          --numa-binding <mode>   graceful binds no rank to NUMA nodes.
          --virtual-local-rank    LOCAL_RANK is the rank, and CUDA_VISIBLE_DEVICES is left alone.
          --print-completion <shell>
                                  graceful prints no shell completion.

        OPTIONS (graceful's own):
          --grace <seconds>, --kill-after <seconds>, --checkpoint-every <seconds>,
          --control-file <path>, --restart-backoff <seconds>, --run-dir <dir>, --run-id <id>,
          --rdzv-timeout <seconds>, --heartbeat-timeout <seconds>, --token-file <path>
                                  As in 'graceful run --help'; --run-dir and --run-id win over
                                  --log-dir and --rdzv-id.
          -h, --help              Show help information.

        Long options may be written --name value or --name=value, with - or _ in the name, or as
        any unambiguous prefix; one left out takes its value from PET_<NAME> where torchrun reads
        one (PET_NNODES, PET_NPROC_PER_NODE, ...).

        """

    /// torchrun's options, by their dashed long name.
    private enum Option: String, CaseIterable {
        case nnodes = "--nnodes", nprocPerNode = "--nproc-per-node", nodeRank = "--node-rank"
        case standalone = "--standalone", rdzvBackend = "--rdzv-backend", rdzvEndpoint = "--rdzv-endpoint"
        case rdzvID = "--rdzv-id", rdzvConf = "--rdzv-conf", maxRestarts = "--max-restarts"
        case monitorInterval = "--monitor-interval", startMethod = "--start-method"
        case eventLogHandler = "--event-log-handler", role = "--role", module = "--module"
        case noPython = "--no-python", runPath = "--run-path", logDir = "--log-dir"
        case redirects = "--redirects", tee = "--tee", localRanksFilter = "--local-ranks-filter"
        case logLinePrefixTemplate = "--log-line-prefix-template"
        case duplicateStdoutFilters = "--duplicate-stdout-filters", duplicateStderrFilters = "--duplicate-stderr-filters"
        case masterAddr = "--master-addr", masterPort = "--master-port", localAddr = "--local-addr"
        case logsSpecs = "--logs-specs", numaBinding = "--numa-binding", signalsToHandle = "--signals-to-handle"
        case shutdownTimeout = "--shutdown-timeout", virtualLocalRank = "--virtual-local-rank"
        case printCompletion = "--print-completion"

        var isFlag: Bool {
            switch self {
            case .standalone, .module, .noPython, .runPath, .virtualLocalRank: true
            default: false
            }
        }

        /// The variable torchrun reads when the option is left out (argparse_util's `env` and
        /// `check_env` actions), e.g. `PET_NPROC_PER_NODE`.
        var environmentName: String? {
            switch self {
            case .logsSpecs, .numaBinding, .logLinePrefixTemplate, .duplicateStdoutFilters, .duplicateStderrFilters,
                 .shutdownTimeout, .virtualLocalRank, .printCompletion:
                nil
            default:
                "PET_" + rawValue.dropFirst(2).uppercased().map { $0 == "-" ? "_" : $0 }
            }
        }
    }

    private static let shortSpellings: [String: Option] = ["-m": .module, "-r": .redirects, "-t": .tee]

    /// graceful's options that torchrun lacks, taken before the script as well.
    private static let gracefulOptions: [String: CommandLineInterface.Option] = [
        "--grace": .grace, "--kill-after": .killAfter, "--checkpoint-every": .checkpointEvery,
        "--control-file": .controlFile, "--restart-backoff": .restartBackoff, "--run-dir": .runDirectory,
        "--run-id": .runID, "--rdzv-timeout": .rendezvousTimeout, "--heartbeat-timeout": .heartbeatTimeout,
        "--token-file": .tokenFile,
    ]

    /// An option's value and where it came from: the spelling used, or the `PET_` variable.
    private struct Given {
        var source: String
        var value: String
    }

    /// An option on the command line, before it is looked up.
    private enum Known {
        case torchrun(Option)
        case graceful(CommandLineInterface.Option)
        case help
    }

    static func parse(_ arguments: [String], host: CommandLineInterface.Host) throws(CommandLineInterface.UsageError) -> CommandLineInterface.Invocation {
        var given: [Option: Given] = [:]
        for option in Option.allCases {
            if let variable = option.environmentName, let value = host.environment[variable] {
                given[option] = Given(source: variable, value: value)
            }
        }
        var gracefulGiven: [(CommandLineInterface.Option, Given)] = []
        var script: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" {
                script = Array(arguments[(index + 1)...])
                break
            }
            guard argument.hasPrefix("-"), argument != "-" else {
                script = Array(arguments[index...])
                break
            }
            var (name, value) = split(argument)
            let known = try lookUp(&name)
            switch known {
            case .help:
                return .help(help)
            case .torchrun(let option) where option.isFlag:
                guard value == nil else { throw usage("'\(name)' takes no value") }
                given[option] = Given(source: name, value: "1")
                index += 1
                continue
            default:
                break
            }
            if value == nil {
                index += 1
                // As argparse: a value may look like a negative number, not like an option.
                guard index < arguments.count, !arguments[index].hasPrefix("-") || Double(arguments[index]) != nil else {
                    throw usage("missing value for '\(name)'")
                }
                value = arguments[index]
            }
            switch known {
            case .torchrun(let option): given[option] = Given(source: name, value: value!)
            case .graceful(let option): gracefulGiven.append((option, Given(source: name, value: value!)))
            case .help: break
            }
            index += 1
        }
        guard let first = script.first, !first.isEmpty else {
            throw usage("missing the training script, e.g. 'graceful torchrun --nproc-per-node 4 train.py'")
        }
        var configuration = RunConfiguration(command: [])
        configuration.command = try command(script: first, arguments: Array(script.dropFirst()), given: given, host: host)
        try apply(given, to: &configuration, host: host)
        for (option, value) in gracefulGiven {
            try CommandLineInterface.apply(option, name: value.source, value: value.value, to: &configuration, hint: usageHint)
        }
        try CommandLineInterface.settleNodes(&configuration, host: host, hint: usageHint)
        if configuration.runDirectory == nil, let logDirectory = given[.logDir] {
            guard !logDirectory.value.isEmpty else { throw usage("'\(logDirectory.source)' takes a directory, not an empty string") }
            configuration.runDirectory = logDirectory.value + "/" + RunConfiguration.jobName(of: configuration.command)
                + (configuration.cluster.map { "/node\($0.nodeRank)" } ?? "")
        }
        return .run(configuration)
    }

    /// `--name=value` into its name and value; `-rVALUE` and `-r=VALUE` for a short option with a
    /// value, as argparse reads them.
    private static func split(_ argument: String) -> (String, String?) {
        if argument.hasPrefix("--") {
            guard let equals = argument.firstIndex(of: "=") else { return (argument, nil) }
            return (String(argument[..<equals]), String(argument[argument.index(after: equals)...]))
        }
        let name = String(argument.prefix(2))
        guard argument.count > 2, shortSpellings[name].map({ !$0.isFlag }) == true else { return (argument, nil) }
        let rest = argument.dropFirst(2)
        return (name, String(rest.hasPrefix("=") ? rest.dropFirst() : rest))
    }

    /// The option `name` spells, `name` made its full dashed spelling for messages. A long name may
    /// use `_` for `-` and be any unambiguous prefix, as argparse allows.
    private static func lookUp(_ name: inout String) throws(CommandLineInterface.UsageError) -> Known {
        if name == "-h" || name == "--help" { return .help }
        if let option = shortSpellings[name] { return .torchrun(option) }
        guard name.hasPrefix("--"), name.count > 2 else { throw usage("unknown option '\(name)'") }
        let dashed = "--" + String(name.dropFirst(2).map { $0 == "_" ? "-" : $0 })
        var candidates: [(String, Known)] = Option.allCases.map { ($0.rawValue, .torchrun($0)) }
        candidates += gracefulOptions.map { ($0.key, .graceful($0.value)) }
        candidates.append(("--help", .help))
        if let exact = candidates.first(where: { $0.0 == dashed }) {
            name = dashed
            return exact.1
        }
        let matches = candidates.filter { $0.0.hasPrefix(dashed) }.sorted { $0.0 < $1.0 }
        guard let only = matches.first else { throw usage("unknown option '\(name)'") }
        guard matches.count == 1 else {
            throw usage("ambiguous option '\(name)' could match \(matches.map(\.0).joined(separator: ", "))")
        }
        name = only.0
        return only.1
    }

    /// The rank command, built as torchrun builds it.
    private static func command(
        script: String, arguments: [String], given: [Option: Given], host: CommandLineInterface.Host
    ) throws(CommandLineInterface.UsageError) -> [String] {
        let module = try flag(.module, in: given)
        // torchrun: --run-path takes precedence over --no-python, and runs a file, never a module.
        if try flag(.runPath, in: given) { return [host.python, "-u", script] + arguments }
        if try flag(.noPython, in: given) {
            guard !module else { throw usage("don't use both '--no-python' and '--module' (torchrun refuses them too)") }
            return [script] + arguments
        }
        return [host.python, "-u"] + (module ? ["-m"] : []) + [script] + arguments
    }

    /// A flag's value; from `PET_<NAME>` it is a number, as torchrun's `bool(int(...))` reads it.
    private static func flag(_ option: Option, in given: [Option: Given]) throws(CommandLineInterface.UsageError) -> Bool {
        guard let value = given[option] else { return false }
        guard !value.value.isEmpty, CommandLineInterface.isDigits(Substring(value.value)) else {
            throw usage("\(value.source): \"\(value.value)\" is not 0 or 1")
        }
        return value.value.contains { $0 != "0" }
    }

    /// Every torchrun option but the command's, in a fixed order so that the first error is always
    /// the same one.
    private static func apply(
        _ given: [Option: Given], to configuration: inout RunConfiguration, host: CommandLineInterface.Host
    ) throws(CommandLineInterface.UsageError) {
        // As torchrun: --standalone picks the rendezvous itself and ignores --rdzv-*; only the static
        // rendezvous (torchrun's default) hands the ranks --master-addr and --master-port, or the
        // host and port of --rdzv-endpoint.
        let standalone = try flag(.standalone, in: given)
        let isStatic = !standalone && (given[.rdzvBackend]?.value ?? "static") == "static"
        for option in Option.allCases {
            guard let (source, value) = given[option].map({ ($0.source, $0.value) }) else { continue }
            switch option {
            case .nnodes:
                let bounds = value.split(separator: ":", omittingEmptySubsequences: false)
                guard (1...2).contains(bounds.count), bounds.allSatisfy({ !$0.isEmpty && CommandLineInterface.isDigits($0) }) else {
                    throw usage("\(source): \"\(value)\" is not a number of nodes or MIN:MAX")
                }
                guard bounds.count == 1 || bounds[0] == bounds[1] else {
                    throw usage("\(source): \"\(value)\": an elastic number of nodes is not supported; give one number")
                }
                let count = try CommandLineInterface.wholeNumber(String(bounds[0]), name: source, of: "a number of nodes", in: 1...65536, hint: usageHint)
                if count > 1 && standalone { throw usage("\(source): \"\(value)\": --standalone is one node") }
                configuration.nodes.nodeCount = count
            case .nodeRank:
                try CommandLineInterface.apply(.nodeRank, name: source, value: value, to: &configuration, hint: usageHint)
            case .nprocPerNode:
                configuration.ranks = try ranks(source, value, host: host)
            case .maxRestarts:
                try CommandLineInterface.apply(.maxRestarts, name: source, value: value, to: &configuration, hint: usageHint)
            case .shutdownTimeout:
                try CommandLineInterface.apply(.grace, name: source, value: value, to: &configuration, hint: usageHint)
            case .rdzvID:
                if !standalone {
                    try CommandLineInterface.apply(.runID, name: source, value: value, to: &configuration, hint: usageHint)
                }
            case .masterAddr, .masterPort:
                // Checked even where torchrun ignores them, as its argparse checks them.
                var addressed = configuration
                try CommandLineInterface.apply(
                    option == .masterAddr ? .masterAddress : .masterPort, name: source, value: value, to: &addressed, hint: usageHint)
                if isStatic { configuration = addressed }
            case .role:
                guard value == "default" else {
                    throw usage("\(source): \"\(value)\": every rank's role is 'default' (ROLE_NAME); other roles are not supported yet")
                }
            case .monitorInterval:
                // torchrun reads it with Python's float(), which Double(_:) matches closely enough
                // for an option that changes nothing here.
                guard Double(value) != nil else { throw usage("\(source): \"\(value)\" is not a number of seconds") }
            case .startMethod:
                guard ["spawn", "fork", "forkserver"].contains(value) else {
                    throw usage("\(source): \"\(value)\" is not spawn, fork or forkserver")
                }
            case .redirects, .tee:
                guard isStreamSpecification(value) else {
                    throw usage("\(source): \"\(value)\" is not 0 to 3, or LOCAL_RANK:0-3 pairs separated by commas")
                }
            case .localRanksFilter:
                guard value.isEmpty || value.split(separator: ",", omittingEmptySubsequences: false).allSatisfy({
                    !$0.isEmpty && CommandLineInterface.isDigits($0)
                }) else {
                    throw usage("\(source): \"\(value)\" is not local ranks separated by commas, e.g. 0,1,2")
                }
            case .logsSpecs:
                throw usage("'\(source)' is not supported: graceful writes every rank's log itself and loads no torchrun plugin")
            case .numaBinding:
                throw usage("'\(source)' is not supported: graceful binds no rank to NUMA nodes")
            case .virtualLocalRank:
                throw usage("'\(source)' is not supported: LOCAL_RANK is each rank's number, and CUDA_VISIBLE_DEVICES is left as it is")
            case .printCompletion:
                throw usage("'\(source)' is not supported: graceful prints no shell completion")
            case .module, .noPython, .runPath, .standalone, .rdzvEndpoint, .rdzvBackend, .rdzvConf, .eventLogHandler, .logDir,
                 .logLinePrefixTemplate, .duplicateStdoutFilters, .duplicateStderrFilters, .localAddr, .signalsToHandle:
                // The first three make the command, --standalone is read above, the endpoint below,
                // --log-dir once the command is known; the rest are harmless on one node (see the help).
                break
            }
        }
        if isStatic, let endpoint = given[.rdzvEndpoint], let (host, port) = try staticEndpoint(endpoint.source, endpoint.value) {
            configuration.masterAddress = host
            configuration.masterPort = port
        }
        // Several nodes: the static rendezvous is at the master's port + 1 (the framework binds the
        // master port itself); another backend's endpoint is graceful's rendezvous, and the
        // framework gets its port + 1 on the endpoint's host, as torchrun picks a port there.
        if configuration.nodes.nodeCount > 1, !isStatic, let endpoint = given[.rdzvEndpoint],
           let (host, port) = try staticEndpoint(endpoint.source, endpoint.value) {
            configuration.nodes.rendezvousHost = host
            configuration.nodes.rendezvousPort = port
            configuration.masterAddress = host
            configuration.masterPort = port == 65535 ? port - 1 : port + 1
        }
    }

    /// `--nproc-per-node`: a number, or what torchrun counts for `cpu`, `gpu` and `auto`.
    private static func ranks(_ source: String, _ value: String, host: CommandLineInterface.Host) throws(CommandLineInterface.UsageError) -> Int {
        switch value {
        case "cpu":
            return host.processors
        case "gpu":
            guard host.visibleGPUs > 0 else {
                throw usage("\(source): \"gpu\": no NVIDIA GPU here (no /dev/nvidiaN, or CUDA_VISIBLE_DEVICES hides them all)")
            }
            return host.visibleGPUs
        case "auto":
            return host.visibleGPUs > 0 ? host.visibleGPUs : host.processors
        default:
            guard !value.isEmpty, CommandLineInterface.isDigits(Substring(value)) else {
                throw usage("\(source): \"\(value)\" is not a number of ranks, cpu, gpu or auto (graceful counts no other accelerator: give the number)")
            }
            return try CommandLineInterface.wholeNumber(value, name: source, of: "a number of ranks", in: 1...65536, hint: usageHint)
        }
    }

    /// `host:port` or `[v6 address]:port` as a static rendezvous reads it; nil for an empty one (no
    /// endpoint). torchrun's static rendezvous has no default port.
    private static func staticEndpoint(_ source: String, _ value: String) throws(CommandLineInterface.UsageError) -> (String, Int)? {
        guard !value.isEmpty else { return nil }
        guard let colon = value.lastIndex(of: ":"), !value[..<colon].isEmpty,
              !value[..<colon].hasPrefix("[") || value[..<colon].hasSuffix("]")
        else { throw usage("\(source): \"\(value)\" is not host:port") }
        var host = String(value[..<colon])
        if host.hasPrefix("[") { host = String(host.dropFirst().dropLast()) }
        let port = try CommandLineInterface.wholeNumber(
            String(value[value.index(after: colon)...]), name: source, of: "a TCP port", in: 1...65535, hint: usageHint)
        return (host, port)
    }

    /// torchrun's `Std.from_str`: `0` to `3` for every rank, or `local_rank:0-3` pairs.
    private static func isStreamSpecification(_ value: String) -> Bool {
        func isStream(_ text: Substring) -> Bool { text.count == 1 && "0123".contains(text) }
        if isStream(Substring(value)) { return true }
        return value.split(separator: ",", omittingEmptySubsequences: false).allSatisfy { pair in
            let parts = pair.split(separator: ":", omittingEmptySubsequences: false)
            return parts.count == 2 && !parts[0].isEmpty && CommandLineInterface.isDigits(parts[0]) && isStream(parts[1])
        }
    }

    private static func usage(_ message: String) -> CommandLineInterface.UsageError {
        CommandLineInterface.UsageError(message: "\(message) (\(usageHint))")
    }
}
