import Glibc
import GracefulProtocol

/// `graceful queue run|status`: parsed by hand, in the conventions of the rest of the command line.
enum QueueCommandLine {
    static let help = """
        OVERVIEW: Run many independent tasks, each in a fresh process, from a queue every worker and
        host shares; stop and resume the whole sweep mid-task.

        USAGE: graceful queue run <directory> [<options>] [--] [<command> [<arguments> ...]]
               graceful queue status <directory> [--json]

        The first 'queue run' creates the queue in <directory> from --grid or --tasks; every later one,
        on any host sharing the directory, joins it (the grid and the command may be left out then).
        Each attempt of a task is a 'graceful run' of <command>, with each {name} replaced by the
        task's parameter (README, "graceful queue"). Ctrl+C, SIGTERM or the control file stop every
        running task gracefully and put it back with its record; the next 'queue run' resumes it.

        OPTIONS (queue run):
          --grid <name=v1,v2,...> A parameter and its values; repeat it: the tasks are every
                                  combination.
          --tasks <file.jsonl>    One JSON object of parameters per line, a task each.
          --workers <n>           Tasks run at once by this process. (default: 1)
          -n, --ranks <n>         Ranks of each task's graceful run. (default: 1)
          --lease <seconds>       A claim whose holder has not renewed it for this long is taken
                                  back and its task run again. (default: 30; renewed every third
                                  of it, at most every 5 s)
          --max-attempts <n>      Failed attempts after which a task is failed. (default: 3)
          --max-lease-expiries <n>
                                  Expired leases (the worker running the task died or hung)
                                  after which a task is failed rather than taken back.
                                  (default: 3)
          --backoff <seconds>     Wait before a failed task's next attempt, doubled after each
                                  failure, up to 60. (default: 1)
          --timeout <seconds>     Stop an attempt (gracefully, then kill) that runs longer; it
                                  counts as failed. (default: none)
          --max-memory <size>     Stop an attempt whose processes together use more resident
                                  memory (bytes, or with K, M, G, T); it counts as failed.
                                  (default: none)
          --stragglers on|off     When no task is pending, an idle worker runs a second copy of
                                  the task that has run longest; the first to finish wins.
                                  (default: off)
          --gpus auto|<list>      Give each worker its own CUDA_VISIBLE_DEVICES (and
                                  ASCEND_RT_VISIBLE_DEVICES): from the list (0,1,2), or from
                                  nvidia-smi, most free memory first. (default: unchanged)
          --host-id <id>          This host's name in claims; unique per host. (default: the
                                  host name)
          --grace <seconds>       Each task's graceful run --grace. (default: 30)
          --kill-after <seconds>  Each task's graceful run --kill-after. (default: 10)
          --control-file <path>   The file whose {"GracefulExit": 1} stops the sweep.
                                  (default: graceful_exit.json)
          --json                  (queue status) Print JSON instead of a table.
          -h, --help              Show help information.

        EXIT CODES:
          0    every task finished          1    some task failed (all others finished)
          64   usage error (a bad grid, tasks file or {name}: nothing changed)
          65   not a queue, a queue of another definition, or a corrupted queue file
          71   system error                 75   the control file already requests an exit
          128+N  stopped by signal N (130: Ctrl+C; 143: SIGTERM or the control file); the
               running tasks were put back with their records

        """

    static let hint = "see 'graceful queue --help'"

    static func parse(_ arguments: [String], host: CommandLineInterface.Host) throws(CommandLineInterface.UsageError) -> CommandLineInterface.Invocation {
        guard let sub = arguments.first, sub != "-h", sub != "--help" else { return .help(help) }
        let rest = Array(arguments.dropFirst())
        if rest.prefix(while: { $0 != "--" }).contains(where: { $0 == "-h" || $0 == "--help" }) {
            return .help(help)
        }
        switch sub {
        case "run": return .queueRun(try parseRun(rest, host: host))
        case "status":
            var json = false
            var directory: String?
            for argument in rest {
                if argument == "--json" {
                    json = true
                } else if argument.hasPrefix("-") {
                    throw usage("unknown option '\(argument)'")
                } else if directory == nil {
                    directory = argument
                } else {
                    throw usage("unexpected argument '\(argument)'")
                }
            }
            guard let directory else { throw usage("missing the queue's directory") }
            return .queueStatus(directory: trimmed(directory), json: json)
        default:
            throw usage("unknown queue subcommand '\(sub)' (run or status)")
        }
    }

    private static func usage(_ message: String) -> CommandLineInterface.UsageError {
        CommandLineInterface.UsageError(message: "\(message) (\(hint))")
    }

    private static func trimmed(_ directory: String) -> String {
        var directory = directory
        while directory.count > 1 && directory.hasSuffix("/") { directory.removeLast() }
        return directory
    }

    private static func parseRun(_ arguments: [String], host: CommandLineInterface.Host) throws(CommandLineInterface.UsageError) -> QueueRunConfiguration {
        var directory: String?
        var grids: [String] = []
        var tasksFile: String?
        var command: [String] = []
        var configuration = QueueRunConfiguration(directory: "", hostID: NetworkAddress.hostName())
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--" {
                command = Array(arguments[(index + 1)...])
                break
            }
            guard argument.hasPrefix("-"), argument != "-" else {
                if directory == nil {
                    directory = argument
                    index += 1
                    continue
                }
                command = Array(arguments[index...])
                break
            }
            var name = argument
            var value: String?
            if let equals = argument.firstIndex(of: "="), argument.hasPrefix("--") {
                name = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            }
            if value == nil {
                index += 1
                guard index < arguments.count else { throw usage("missing value for '\(name)'") }
                value = arguments[index]
            }
            let text = value!
            switch name {
            case "--grid": grids.append(text)
            case "--tasks": tasksFile = text
            case "--workers":
                configuration.workers = try CommandLineInterface.wholeNumber(text, name: name, of: "a number of workers", in: 1...1024, hint: hint)
            case "-n", "--ranks":
                configuration.ranks = try CommandLineInterface.wholeNumber(text, name: name, of: "a number of ranks", in: 1...65536, hint: hint)
            case "--lease":
                configuration.policy.lease = try CommandLineInterface.seconds(text, name: name, hint: hint)
                guard configuration.policy.lease >= 1 else { throw usage("\(name): a lease must be at least 1 second") }
            case "--max-attempts":
                configuration.policy.maxAttempts = try CommandLineInterface.wholeNumber(text, name: name, of: "a number of attempts", in: 1...1_000_000, hint: hint)
            case "--max-lease-expiries":
                configuration.policy.maxLeaseExpiries = try CommandLineInterface.wholeNumber(text, name: name, of: "a number of lease expiries", in: 1...1_000_000, hint: hint)
            case "--backoff": configuration.policy.backoff = try CommandLineInterface.seconds(text, name: name, hint: hint)
            case "--timeout":
                let timeout = try CommandLineInterface.seconds(text, name: name, hint: hint)
                guard timeout > 0 else { throw usage("\(name): \"\(text)\" is not above 0 seconds") }
                configuration.timeout = timeout
            case "--max-memory": configuration.maxMemory = try size(text, name: name)
            case "--stragglers":
                guard text == "on" || text == "off" else { throw usage("\(name) takes on or off, not '\(text)'") }
                configuration.policy.stragglers = text == "on"
            case "--gpus":
                if text == "auto" {
                    configuration.gpus = .auto
                } else {
                    let list = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                    guard !list.isEmpty, list.allSatisfy({ !$0.isEmpty && CommandLineInterface.isDigits(Substring($0)) }) else {
                        throw usage("\(name) takes auto or a list of device numbers (0,1,2), not '\(text)'")
                    }
                    configuration.gpus = .list(list)
                }
            case "--host-id":
                guard !text.isEmpty, !text.contains(where: { $0.isWhitespace || $0 == "/" }) else {
                    throw usage("\(name) takes a name without spaces or '/', not '\(text)'")
                }
                configuration.hostID = text
            case "--grace": configuration.grace = try CommandLineInterface.seconds(text, name: name, hint: hint)
            case "--kill-after": configuration.killAfter = try CommandLineInterface.seconds(text, name: name, hint: hint)
            case "--control-file":
                guard !text.isEmpty, !text.hasSuffix("/") else { throw usage("'\(name)' takes a file path, not '\(text)'") }
                configuration.controlFile = text
            default: throw usage("unknown option '\(name)'")
            }
            index += 1
        }
        guard let directory else { throw usage("missing the queue's directory, e.g. 'graceful queue run sweep/ --grid lr=0.1,0.01 -- python3 train.py --lr {lr}'") }
        configuration.directory = trimmed(directory)
        configuration.command = command
        if !grids.isEmpty && tasksFile != nil { throw usage("give --grid or --tasks, not both") }
        guard !grids.isEmpty || tasksFile != nil else { return configuration }
        guard !command.isEmpty else { throw usage("a new queue needs the command each task runs, after '--'") }
        do {
            let sets: [[String: JSONValue]]
            if let tasksFile {
                let contents: [UInt8]?
                do { contents = try AtomicFile.read(tasksFile) } catch { throw usage("--tasks \(tasksFile): \(error)") }
                guard let contents else { throw usage("--tasks \(tasksFile): no such file") }
                sets = try QueueDefinition.tasksFile(contents, name: tasksFile)
            } else {
                sets = try QueueDefinition.grid(grids)
            }
            configuration.definition = try QueueDefinition(command: command, parameterSets: sets)
        } catch let problem as QueueDefinition.Problem {
            throw usage(problem.message)
        } catch let error as CommandLineInterface.UsageError {
            throw error
        } catch {
            throw usage("\(error)")
        }
        return configuration
    }

    /// Bytes, or a number with K, M, G or T (powers of 1024).
    static func size(_ text: String, name: String) throws(CommandLineInterface.UsageError) -> UInt64 {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = text.uppercased()
        var unit: UInt64 = 1
        if digits.hasSuffix("B") && digits.count > 1 && units[digits.dropLast().last ?? " "] != nil { digits.removeLast() }
        if let last = digits.last, let multiplier = units[last] {
            unit = multiplier
            digits.removeLast()
        }
        guard !digits.isEmpty, CommandLineInterface.isDigits(Substring(digits)), let number = UInt64(digits), number > 0,
              number <= UInt64.max / unit
        else { throw usage("\(name): \"\(text)\" is not a size (bytes, or a number with K, M, G or T)") }
        return number * unit
    }
}
