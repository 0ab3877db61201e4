import Foundation
import Glibc

/// The real Slurm cluster of .ci/slurm/cluster.sh (three virtual nodes n1..n3 on this machine,
/// KillWait 5 s) for the tests that launch under srun and sbatch. It comes up once per test process,
/// on first use of `shared`, in a temporary directory, and goes down when the process exits (atexit),
/// so no daemon outlives the tests. A test process that was killed leaves its cluster behind; the
/// next one to bring a cluster up stops it.
///
/// Tests use it as `@Test(.enabled(if: SlurmCluster.shared != nil, "\(SlurmCluster.unavailableReason)"))`.
final class SlurmCluster: Sendable {
    /// Where the cluster keeps its configuration, state, pid files and logs.
    let directory: String
    /// Its slurm.conf: `SLURM_CONF` of every client command run here.
    let configuration: String

    static let script = Launched.packageRoot + "/.ci/slurm/cluster.sh"
    private static let directoryPrefix = "/tmp/graceful-slurm-"

    private init(directory: String, configuration: String) {
        self.directory = directory
        self.configuration = configuration
    }

    /// Why tests that need the cluster are skipped. Decided without starting anything (traits are
    /// built for every test of the process, selected or not): a reason known beforehand, else where
    /// to find the one `shared` printed when the cluster failed to come up.
    static let unavailableReason = knownObstacle
        ?? "the Slurm test cluster did not come up: the line 'slurm test cluster: ...' above says why"

    /// What keeps the cluster from coming up here, when that is known without trying.
    private static let knownObstacle: String? = {
        if geteuid() != 0 { return "the Slurm test cluster needs root (its slurmd's run as root)" }
        let installed = ["slurmctld", "slurmd", "srun", "sbatch", "scontrol"].allSatisfy { executable($0) != nil }
        if !installed && executable("apt-get") == nil {
            return "Slurm is not installed (Debian: apt-get install slurmctld slurmd slurm-client) and there is no apt-get"
        }
        return nil
    }()

    /// The cluster, up; nil when it cannot come up here (see `unavailableReason`). cluster.sh
    /// installs Slurm first when it is missing and apt-get can (a minute or so, once per machine).
    static let shared: SlurmCluster? = {
        guard knownObstacle == nil else { return nil }
        stopAbandonedClusters()
        var template = Array((directoryPrefix + "XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else {
            print("slurm test cluster: mkdtemp: \(String(cString: strerror(errno)))")
            return nil
        }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        do {
            try "\(getpid())\n".write(toFile: path + "/owner", atomically: true, encoding: .utf8)
            let up = try Launched([script, "up", path], in: "/tmp")
            let status = try up.waitForExit(timeout: 900)
            let export = "export SLURM_CONF="
            guard status == 0, let line = up.stdout.split(separator: "\n").last(where: { $0.hasPrefix(export) }) else {
                throw Launched.SpawnError(message: up.stderr.split(separator: "\n").last.map(String.init) ?? "cluster.sh up exited \(status)")
            }
            atexit { SlurmCluster.shared?.tearDown() }
            return SlurmCluster(directory: path, configuration: String(line.dropFirst(export.count)))
        } catch {
            print("slurm test cluster: \((error as? Launched.SpawnError)?.message ?? String(describing: error))")
            SlurmCluster(directory: path, configuration: "").tearDown()
            return nil
        }
    }()

    /// The absolute path of `name` found in PATH (and the sbin directories), or nil.
    static func executable(_ name: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Clusters of test processes that were killed before their atexit ran: their owner is gone.
    private static func stopAbandonedClusters() {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []
        for entry in entries where ("/tmp/" + entry).hasPrefix(directoryPrefix) {
            let path = "/tmp/" + entry
            guard let owner = (try? String(contentsOfFile: path + "/owner", encoding: .utf8)).flatMap({ pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
                  kill(owner, 0) != 0 && errno == ESRCH
            else { continue }
            _ = try? Launched([script, "down", path], in: "/tmp").waitForExit(timeout: 60)
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    private func tearDown() {
        _ = try? Launched([Self.script, "down", directory], in: "/tmp").waitForExit(timeout: 60)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts a Slurm client command (`srun`, `sbatch`, ...) with this cluster's SLURM_CONF, without
    /// waiting: for a launch the test signals or watches while it runs.
    func start(_ arguments: [String], in directory: String = "/tmp", environment: [String: String] = [:]) throws -> Launched {
        try Launched(arguments, in: directory, environment: environment.merging(["SLURM_CONF": configuration]) { $1 })
    }

    /// Runs a client command to its end; it must exit 0.
    @discardableResult
    func run(
        _ arguments: [String], in directory: String = "/tmp", environment: [String: String] = [:], timeout: Double = 60
    ) throws -> Launched {
        let command = try start(arguments, in: directory, environment: environment)
        let status = try command.waitForExit(timeout: timeout)
        guard status == 0 else {
            throw Launched.SpawnError(message: "\(arguments.joined(separator: " ")) exited \(status):\n\(command.output)")
        }
        return command
    }

    @discardableResult
    func srun(_ arguments: [String], in directory: String = "/tmp", timeout: Double = 60) throws -> Launched {
        try run(["srun"] + arguments, in: directory, timeout: timeout)
    }

    /// Submits a batch job; returns its id. sbatch hands its environment (this process's, with
    /// `environment` over it) to the job.
    func sbatch(_ arguments: [String], in directory: String = "/tmp", environment: [String: String] = [:]) throws -> String {
        try run(["sbatch", "--parsable"] + arguments, in: directory, environment: environment).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func scancel(_ arguments: [String]) throws {
        try run(["scancel"] + arguments)
    }

    func squeue(_ arguments: [String]) throws -> String {
        try run(["squeue"] + arguments).stdout
    }

    func scontrol(_ arguments: [String]) throws -> String {
        try run(["scontrol"] + arguments).stdout
    }

    /// The job's state as `scontrol show job` gives it (PENDING, RUNNING, COMPLETED, CANCELLED, ...).
    /// Without accounting this is the only record of an ended job, kept for MinJobAge (300 s).
    func jobState(_ job: String) throws -> String? {
        let fields = try scontrol(["show", "job", job]).split(whereSeparator: { $0 == " " || $0 == "\n" })
        return fields.first { $0.hasPrefix("JobState=") }.map { String($0.dropFirst("JobState=".count)) }
    }

    /// Waits until the job has ended (its batch script and steps are gone); returns its final state.
    /// A batch job ends about 3 s after its script: proctrack/pgid polls for the script's processes.
    func waitUntilEnded(_ job: String, timeout: Double = 60) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        let ended = ["COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL"]
        while true {
            let state = try jobState(job)
            if let state, ended.contains(state) { return state }
            guard Date() < deadline else {
                throw Launched.Timeout(description: "job \(job) still \(state ?? "unknown") after \(timeout) s")
            }
            usleep(100_000)
        }
    }
}
