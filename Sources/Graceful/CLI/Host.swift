import Glibc

extension CommandLineInterface {
    /// What of the machine the command line depends on: the environment (the Python interpreter,
    /// torchrun's `PET_*` defaults, `CUDA_VISIBLE_DEVICES`) and the processors and GPUs that
    /// `--nproc-per-node cpu|gpu|auto` count. Tests pass their own.
    struct Host: Sendable {
        var environment: [String: String]
        /// Online processors, as Python's `os.cpu_count()` counts them.
        var processors: Int
        /// NVIDIA GPUs the kernel driver exposes (`/dev/nvidia0`, `/dev/nvidia1`, ...).
        var nvidiaDevices: Int
        /// The Slurm cluster's KillWait in seconds, asked only inside a Slurm job.
        var slurmKillWait: @Sendable () -> Double? = { nil }
        /// The address to reach Slurm node NAME at when NAME does not resolve here (its `NodeAddr`);
        /// nil when NAME resolves (it is used as it is) or Slurm does not say. Asked only inside a
        /// multi-node Slurm step, for the leader's node.
        var slurmNodeAddress: @Sendable (String) -> String? = { _ in nil }

        /// The interpreter of Python scripts: `PYTHON_EXEC` as torchrun honours it, else `python3`
        /// from PATH. torchrun's own default is the interpreter torchrun runs in, which graceful has
        /// not; `python3` in PATH is that one in an activated virtual environment.
        var python: String {
            if let python = environment["PYTHON_EXEC"], !python.isEmpty { return python }
            return "python3"
        }

        /// The GPUs a rank sees: the devices, or fewer when `CUDA_VISIBLE_DEVICES` lists fewer. As
        /// in CUDA, the list ends at its first negative entry (`-1` hides them all).
        var visibleGPUs: Int {
            guard let visible = environment["CUDA_VISIBLE_DEVICES"] else { return nvidiaDevices }
            let listed = visible.split(separator: ",", omittingEmptySubsequences: false)
                .prefix { !$0.isEmpty && !$0.hasPrefix("-") }
            return min(listed.count, nvidiaDevices)
        }

        static var current: Host {
            var environment: [String: String] = [:]
            for variable in RankEnvironment.processEnvironment() {
                environment[variable.name] = String(decoding: variable.value, as: UTF8.self)
            }
            return Host(
                environment: environment, processors: max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))), nvidiaDevices: countNVIDIADevices(),
                slurmKillWait: { SlurmKillWait.read() },
                slurmNodeAddress: { SlurmNodeAddress.resolves($0) ? nil : SlurmNodeAddress.read(node: $0) })
        }

        private static func countNVIDIADevices() -> Int {
            guard let directory = opendir("/dev") else { return 0 }
            defer { closedir(directory) }
            var count = 0
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasPrefix("nvidia"), name.count > 6, CommandLineInterface.isDigits(name.dropFirst(6)) { count += 1 }
            }
            return count
        }
    }
}
