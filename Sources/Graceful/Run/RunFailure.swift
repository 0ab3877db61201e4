import Glibc

/// Why a run could not start, or could not go on: each case says what its one line says, and maps to
/// exactly one exit code (README, "Exit codes"). Nothing is launched after one of these before the
/// launch; one during the run comes after every rank was killed.
enum RunFailure: Error {
    case controlFileRequestsExit(path: String)
    case commandNotFound(String)
    case commandNotExecutable(String, reason: String?)
    case tooFewOpenFiles(needed: Int, limit: Int)
    case runDirectory(SystemError)
    case runDirectoryBusy(directory: String, holder: pid_t?, insideRank: Bool)
    case unusableRecord(path: String, reason: String)
    case recordWorldSize(path: String, committed: Int, asked: Int)
    case logFile(SystemError)
    case noFreePort
    case system(SystemError)
    /// A multi-node job without a usable secret.
    case token(String)
    /// The nodes of a multi-node job did not all join, or disagree; nothing was launched.
    case rendezvous(String)
    /// A stop signal before the launch: nothing was launched.
    case stoppedBeforeLaunch(Int32)

    var exitCode: Int32 {
        switch self {
        case .controlFileRequestsExit: return ExitCode.exitAlreadyRequested
        case .commandNotFound: return ExitCode.notFound
        case .commandNotExecutable: return ExitCode.notExecutable
        case .tooFewOpenFiles, .noFreePort, .system: return ExitCode.systemError
        case .runDirectory, .logFile: return ExitCode.cannotCreate
        case .runDirectoryBusy: return ExitCode.runDirectoryBusy
        case .unusableRecord, .recordWorldSize: return ExitCode.dataError
        case .token: return ExitCode.usage
        case .rendezvous: return ExitCode.rendezvous
        case .stoppedBeforeLaunch(let signal): return 128 + signal
        }
    }

    var message: String {
        switch self {
        case .controlFileRequestsExit(let path):
            return "control file \(path) already requests an exit (\"GracefulExit\": 1); set it to 0 to start"
        case .commandNotFound(let name):
            return "\(name): command not found"
        case .commandNotExecutable(let name, let reason):
            return "\(name): cannot execute (\(reason ?? "permission denied: not an executable file"))"
        case .tooFewOpenFiles(let needed, let limit):
            return "the ranks need about \(needed) open files but the limit is \(limit) (ulimit -n)"
        case .runDirectory(let error):
            return "run directory: \(error)"
        case .runDirectoryBusy(let directory, let holder, let insideRank):
            let owner = holder.map { "graceful run (pid \($0))" } ?? "another graceful run"
            if insideRank {
                return "\(directory) is in use by \(owner), which this command runs inside of as a rank; give this run its own --run-dir"
            }
            return "\(directory) is in use by \(owner), or by processes of its job still alive; wait for it to end or use another --run-dir"
        case .unusableRecord(let path, let reason):
            return "\(path) cannot be used (\(reason)); move it away to start from scratch"
        case .recordWorldSize(let path, let committed, let asked):
            return "\(path) was committed by \(committed) rank(s) but this launch asks for \(asked); use the same -n or another --run-dir"
        case .logFile(let error):
            return "\(error)"
        case .noFreePort:
            return "no free TCP port for MASTER_PORT; pass --master-port"
        case .system(let error):
            return "\(error)"
        case .token(let reason):
            return "\(reason); every node needs the same secret: export GRACEFUL_JOB_TOKEN=$(head -c 32 /dev/urandom | base64) before starting every node, or pass --token-file PATH to a file holding it"
        case .rendezvous(let reason):
            return "the job was not launched: \(reason)"
        case .stoppedBeforeLaunch(let signal):
            return "\(SignalNumber.name(signal)) before every node had joined: nothing was launched"
        }
    }
}
