import CGraceful
import Glibc

/// The cluster's KillWait: how long Slurm waits between a job's SIGTERM and its SIGKILL (30 s by
/// default). A stop that Slurm started must be saved and committed before it ends.
enum SlurmKillWait {
    /// How long `scontrol` may take. It must not hold graceful's start: with slurmctld unreachable
    /// it retries for about 9 s, with no configuration for 60 s.
    static let timeout = 5.0

    /// KillWait in seconds, from `scontrol show config` run in `environment` (this process's when
    /// nil: `SLURM_CONF` and `PATH` matter); nil when scontrol is missing, fails, or does not answer
    /// within `timeout`.
    static func read(environment: [String: String]? = nil) -> Double? {
        let path = environment.map { $0["PATH"] } ?? getenv("PATH").map { String(cString: $0) }
        guard let scontrol = try? ExecutableLookup.resolve("scontrol", path: path),
              let output = run(scontrol, ["show", "config"], environment: environment)
        else { return nil }
        return parse(config: output)
    }

    /// The value of the line `KillWait                = 30 sec` of `scontrol show config`.
    static func parse(config: String) -> Double? {
        for line in config.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0].split(separator: " ").first == "KillWait" else { continue }
            let value = parts[1].split(separator: " ")
            guard value.count == 2, value[1] == "sec", let seconds = Double(value[0]), seconds >= 0 else { return nil }
            return seconds
        }
        return nil
    }

    /// The stdout of `executable arguments` (stdin and stderr on /dev/null, in a process group of its
    /// own), or nil when it fails or is still running after `timeout` seconds: then its group is
    /// killed and reaped. `SlurmNodeAddress` asks scontrol the same way.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]?) -> String? {
        var output: [Int32] = [-1, -1]
        guard graceful_pipe(&output) == 0 else { return nil }
        defer { closeDescriptor(output[0]) }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else {
            closeDescriptor(output[1])
            return nil
        }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer {
            argv.forEach { free($0) }
            envp?.forEach { free($0) }
        }
        var pid: pid_t = 0
        let sources = [devNull, output[1], devNull]
        let error = envp.map { graceful_spawn(executable, argv, $0, sources, 3, 0, -1, &pid) }
            ?? graceful_spawn(executable, argv, environ, sources, 3, 0, -1, &pid)
        closeDescriptor(devNull)
        closeDescriptor(output[1])
        guard error == 0 else { return nil }

        var bytes: [UInt8] = []
        let deadline = monotonicNow() + Self.timeout
        var finished = false
        var buffer = [UInt8](repeating: 0, count: 16384)
        while !finished {
            let left = deadline.seconds(since: monotonicNow())
            guard left > 0 else { break }
            var poller = pollfd(fd: output[0], events: Int16(POLLIN), revents: 0)
            _ = poll(&poller, 1, Int32(left * 1000) + 1)
            while let count = buffer.withUnsafeMutableBytes({ readAvailable(output[0], into: $0) }) {
                if count == 0 {
                    finished = true
                    break
                }
                bytes += buffer[0..<count]
            }
        }
        if !finished { _ = kill(-pid, SIGKILL) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard finished, graceful_status_exit_code(status) == 0, graceful_status_signaled(status) == 0 else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}
