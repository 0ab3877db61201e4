import Foundation
import Glibc

/// The binaries a benchmark run starts and the scratch directory it works in.
///
/// `graceful` and `graceful-bench-rank` are taken from beside this executable (one build directory,
/// one configuration); the Python client from the package's `examples/python`.
struct Workspace {
    let graceful: String
    let rank: String
    let pythonClient: String
    /// A fresh directory under /tmp for this run; every job gets its own subdirectory.
    let root: String

    init() throws {
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let directory = URL(fileURLWithPath: executable).deletingLastPathComponent()
        graceful = directory.appendingPathComponent("graceful").path
        rank = directory.appendingPathComponent("graceful-bench-rank").path
        for binary in [graceful, rank] where access(binary, X_OK) != 0 {
            throw BenchError("\(binary) is missing: build the package first (swift build -c release)")
        }
        let sourceRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let candidates = [sourceRoot, FileManager.default.currentDirectoryPath].map { $0 + "/examples/python" }
        guard let client = candidates.first(where: { access($0 + "/graceful_exit.py", R_OK) == 0 }) else {
            throw BenchError("examples/python/graceful_exit.py not found; run from the package directory")
        }
        pythonClient = client
        var template = Array("/tmp/graceful-bench-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw BenchError("mkdtemp failed") }
        root = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A new empty directory under the root.
    func directory(_ name: String) throws -> String {
        let path = root + "/" + name
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    func remove(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Processes still alive whose command line mentions the root (every rank and peer carries it).
    func leftoverProcesses() -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard pid != getpid(),
                  let command = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                  let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat"),
                  !String(decoding: stat, as: UTF8.self).contains(") Z ")
            else { return false }
            return String(decoding: command.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(root)
        }
    }
}

/// Finds `name` on PATH unless it is a path already.
func executablePath(_ name: String) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return path.split(separator: ":").map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
}

/// Raises the soft limit of open files to the hard limit: 1024 ranks' peers need more than the usual
/// 1024 here, and the coordinator inherits the raised limit. Returns the new soft limit.
func raiseOpenFileLimit() -> Int {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    return Int(limit.rlim_cur)
}
