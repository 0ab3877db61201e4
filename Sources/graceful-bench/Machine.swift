import Foundation
import Glibc

/// The machine the figures were taken on.
struct Machine {
    let processors: Int
    let cpu: String
    let kernel: String
    let swift: String
    let python: String
    let memoryMegabytes: Int

    init(python pythonPath: String) {
        processors = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        cpu = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) } ?? "unknown"
        var names = utsname()
        uname(&names)
        kernel = withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        swift = Machine.firstLine(of: "swift", ["--version"]) ?? "unknown (swift not on PATH)"
        python = Machine.firstLine(of: pythonPath, ["--version"]) ?? "unknown"
        let meminfo = (try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) ?? ""
        memoryMegabytes = (meminfo.split(separator: "\n").first { $0.hasPrefix("MemTotal:") }?
            .split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) / 1024
    }

    var json: [String: Any] {
        ["nproc": processors, "cpu": cpu, "kernel": kernel, "swift": swift, "python": python, "memory_mb": memoryMegabytes]
    }

    private static func firstLine(of command: String, _ arguments: [String]) -> String? {
        guard let path = executablePath(command), let child = try? Child(path, arguments),
              child.wait(until: monotonicNow() + 30_000_000_000) == 0
        else { return nil }
        return child.lines.first { !$0.text.isEmpty }?.text
    }
}
