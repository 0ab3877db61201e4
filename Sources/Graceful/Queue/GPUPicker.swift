import CGraceful
import Glibc

/// `--gpus`: the device each worker sees (`CUDA_VISIBLE_DEVICES`, `ASCEND_RT_VISIBLE_DEVICES`).
enum GPUPicker {
    /// One device (or none) per worker: a list is dealt round-robin; `auto` deals the devices
    /// `nvidia-smi` reports, most free memory first, then least utilisation.
    static func assign(_ selection: QueueRunConfiguration.GPUSelection, workers: Int, notice: (String) -> Void) -> [String?] {
        let devices: [String]
        switch selection {
        case .none: return Array(repeating: nil, count: workers)
        case .list(let list): devices = list
        case .auto:
            guard let output = query() else {
                notice("--gpus auto: no nvidia-smi answered; the workers run without a device")
                return Array(repeating: nil, count: workers)
            }
            devices = rank(output)
            guard !devices.isEmpty else {
                notice("--gpus auto: nvidia-smi lists no device; the workers run without a device")
                return Array(repeating: nil, count: workers)
            }
        }
        return (0..<workers).map { devices[$0 % devices.count] }
    }

    /// The device indices of `nvidia-smi --query-gpu=index,memory.free,utilization.gpu
    /// --format=csv,noheader,nounits` output, best first; lines that do not parse are skipped.
    static func rank(_ output: String) -> [String] {
        let rows: [(index: String, free: Double, utilisation: Double)] = output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ",").map { $0.trimmingSpaces }
            guard fields.count >= 3, !fields[0].isEmpty, Int(fields[0]) != nil,
                  let free = Double(fields[1]), let utilisation = Double(fields[2]) else { return nil }
            return (fields[0], free, utilisation)
        }
        return rows.sorted { ($0.free, -$0.utilisation) > ($1.free, -$1.utilisation) }.map(\.index)
    }

    /// nvidia-smi's answer, or nil when there is none on PATH or it fails.
    private static func query() -> String? {
        let path = Glibc.getenv("PATH").map { String(cString: $0) }
        guard let program = try? ExecutableLookup.resolve("nvidia-smi", path: path) else { return nil }
        var pipe: [Int32] = [-1, -1]
        guard graceful_pipe(&pipe) == 0 else { return nil }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        let arguments = [program, "--query-gpu=index,memory.free,utilization.gpu", "--format=csv,noheader,nounits"]
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = QueueRunner.inheritedEnvironment().map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let error = graceful_spawn(program, argv, envp, [devNull, pipe[1], devNull], 3, 0, -1, &pid)
        closeDescriptor(pipe[1])
        closeDescriptor(devNull)
        defer { closeDescriptor(pipe[0]) }
        guard error == 0 else { return nil }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while output.count < 1 << 20 {
            var polled = [pollfd(fd: pipe[0], events: Int16(POLLIN), revents: 0)]
            // nvidia-smi answers in well under a second; a hung driver must not hang the sweep.
            guard poll(&polled, 1, 10_000) > 0 else { _ = kill(pid, SIGKILL); break }
            let count = buffer.withUnsafeMutableBytes { readAvailable(pipe[0], into: $0) }
            guard let count else { continue }
            if count == 0 { break }
            output += buffer[0..<count]
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard graceful_status_signaled(status) == 0, graceful_status_exit_code(status) == 0 else { return nil }
        return String(decoding: output, as: UTF8.self)
    }
}

private extension Substring {
    var trimmingSpaces: String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}
