import Glibc

/// A process of the job that is not a rank (msrun's scheduler): what `graceful msrun` asks for.
public struct AuxiliaryConfiguration: Equatable, Sendable {
    /// What it is called in lines and as its console prefix: "scheduler".
    public var name: String
    /// Its stdout and stderr, appended, after a header line per launch.
    public var logPath: String
    /// Seconds it has to exit by itself after the last rank ended, before SIGTERM.
    public var exitDeadline: Double

    public init(name: String, logPath: String, exitDeadline: Double) {
        self.name = name
        self.logPath = logPath
        self.exitDeadline = exitDeadline
    }
}

/// The auxiliary process at run time: spawned with the ranks' launch code (its own process group,
/// default signal dispositions, stdin on /dev/null) but without a channel or a doorbell, its output
/// relayed to its log and the console, its exit fed to its `AuxiliaryLifecycle`, and its signals sent
/// through its pidfd. The supervisor owns the event loop and the reaping.
final class AuxiliaryProcess {
    let io: RankIO
    private(set) var lifecycle: AuxiliaryLifecycle
    private let logFD: Int32

    var pid: pid_t { io.process.pid }

    private init(io: RankIO, lifecycle: AuxiliaryLifecycle, logFD: Int32) {
        self.io = io
        self.lifecycle = lifecycle
        self.logFD = logFD
    }

    /// Opens its log and spawns it; its output is registered in `loop` under `tokens` (stdout, stderr).
    static func launch(
        _ configuration: AuxiliaryConfiguration, executable: String, arguments: [String],
        environment: [RankEnvironment.Variable], openFilesLimit: Int, killAfter: Double, header: String,
        loop: EventLoop, tokens: [UInt64]
    ) throws(RunFailure) -> AuxiliaryProcess {
        let logFD = open(configuration.logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        if logFD < 0 { throw .logFile(SystemError("open \(configuration.logPath)")) }
        guard writeAll(logFD, header) else {
            let error = SystemError("write \(configuration.logPath)")
            closeDescriptor(logFD)
            throw .logFile(error)
        }
        let process: RankProcess
        do {
            process = try RankProcess.spawn(
                rank: -1, executable: executable, arguments: arguments, environment: environment,
                doorbellFD: nil, openFilesLimit: openFilesLimit)
        } catch {
            closeDescriptor(logFD)
            throw .spawning(error, executable: executable)
        }
        // Not a rank: nothing is ever said on its channel, so the coordinator's end goes at once.
        closeDescriptor(process.channelFD)
        process.channelFD = -1
        let lifecycle = AuxiliaryLifecycle(
            name: configuration.name, logPath: configuration.logPath,
            exitDeadline: configuration.exitDeadline, killAfter: killAfter)
        let auxiliary = AuxiliaryProcess(
            io: RankIO(process: process, log: logFD, label: configuration.name), lifecycle: lifecycle, logFD: logFD)
        do {
            for stream in 0..<2 { try loop.register(process.outputFDs[stream], token: tokens[stream]) }
        } catch {
            auxiliary.kill()
            throw .spawning(error, executable: executable)
        }
        return auxiliary
    }

    /// Feeds one input to the lifecycle and carries out what it decides.
    func handle(console: Console, _ input: (inout AuxiliaryLifecycle) -> [AuxiliaryLifecycle.Action]) {
        for action in input(&lifecycle) {
            switch action {
            case .signal(let signal): io.process.signal(signal)
            case .report(let line): console.report(line)
            }
        }
    }

    /// SIGKILL through the pidfd (a launch failed after it started).
    func kill() {
        io.process.signal(SIGKILL)
    }

    /// It was reaped: the pidfd goes (its pid may be reused from now on).
    func reaped(_ status: ExitStatus, now: Instant, console: Console) {
        io.process.closePidfd()
        handle(console: console) { $0.exited(status, now: now) }
    }

    func close(loop: EventLoop) {
        io.close(loop: loop)
        closeDescriptor(logFD)
    }
}

extension RunFailure {
    /// The failure of a spawn, as the shell would name it.
    static func spawning(_ error: any Error, executable: String) -> RunFailure {
        switch error {
        case let failure as RankProcess.SpawnError:
            switch failure {
            case .notExecutable(let reason): return .commandNotExecutable(executable, reason: reason.reason)
            case .system(let reason): return .system(reason)
            }
        case let failure as SystemError: return .system(failure)
        default: return .system(SystemError("starting \(executable)", errno: EINVAL))
        }
    }
}

extension RankEnvironment {
    /// The environment msrun gives MindSpore's scheduler (`process_entity/_api.py`): the coordinator's
    /// own, `extra` (`MS_TOPO_TIMEOUT`), `MS_WORKER_NUM`, `MS_SCHED_HOST`, `MS_SCHED_PORT`, `RANK_SIZE`,
    /// `RANK_ID=0` and `MS_ROLE=MS_SCHED`. It is not a rank: no protocol variable reaches it, not even
    /// one found in the coordinator's own environment.
    func schedulerVariables(inherited: [Variable]) -> [Variable] {
        let own: [(String, String)] = [
            ("MS_WORKER_NUM", String(worldSize)),
            ("MS_SCHED_HOST", masterAddress),
            ("MS_SCHED_PORT", String(masterPort)),
            ("RANK_SIZE", String(worldSize)),
            ("RANK_ID", "0"),
            ("MS_ROLE", "MS_SCHED"),
        ]
        let ownKeys = Set(own.map(\.0))
        var result = inherited.filter { !ownKeys.contains($0.name) && !$0.name.hasPrefix("GRACEFUL_") }
        if !result.contains(where: { $0.name == "PYTHONUNBUFFERED" }) { result.append(("PYTHONUNBUFFERED", Array("1".utf8))) }
        return result + own.map { ($0.0, Array($0.1.utf8)) }
    }
}
