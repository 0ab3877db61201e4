import CGraceful
import Foundation
import Glibc

/// A real process started for a test, with its stdout and stderr captured through pipes. Waiting is
/// done on events (poll on the pipes, waitpid); every wait has a timeout only as a guard.
final class Launched {
    let pid: pid_t
    private var fds: [Int32]
    private(set) var stdout = ""
    private(set) var stderr = ""
    private(set) var status: Int32?

    /// The `graceful` binary built beside the test bundle.
    static let graceful: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("graceful").path
    }()

    static let swiftRankExample: String = {
        URL(fileURLWithPath: graceful).deletingLastPathComponent().appendingPathComponent("swift-rank-example").path
    }()

    /// The package's root directory.
    static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
    }()

    init(_ arguments: [String], in directory: String, environment extra: [String: String] = [:]) throws {
        var environment = ProcessInfo.processInfo.environment
        environment["PYTHONPATH"] = Launched.packageRoot + "/examples/python"
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        for (key, value) in extra { environment[key] = value }
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        guard graceful_pipe(&out) == 0, graceful_pipe(&err) == 0 else { throw SpawnError(message: "pipe") }
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        // The child runs in `directory`: go through sh so no chdir happens in this process.
        let command = "cd \"$0\" && exec \"$@\""
        let argv = (["/bin/sh", "-c", command, directory] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let sources = [null, out[1], err[1]]
        let error = graceful_spawn("/bin/sh", argv, envp, sources, 3, 0, -1, &pid)
        [null, out[1], err[1]].forEach { _ = close($0) }
        guard error == 0 else { throw SpawnError(message: "spawn: \(String(cString: strerror(error)))") }
        self.pid = pid
        fds = [out[0], err[0]]
    }

    deinit {
        if status == nil {
            kill(-pid, SIGKILL)
            var raw: Int32 = 0
            waitpid(pid, &raw, 0)
        }
        fds.filter { $0 >= 0 }.forEach { _ = close($0) }
    }

    struct SpawnError: Error { let message: String }
    struct Timeout: Error, CustomStringConvertible {
        let description: String
    }

    var output: String { stdout + stderr }

    /// How many times `text` occurs in the output so far.
    func count(_ text: String) -> Int { output.components(separatedBy: text).count - 1 }

    /// Reads what the pipes have, waiting at most `milliseconds` for something. Returns false once
    /// both pipes reached end of file.
    @discardableResult
    private func pump(milliseconds: Int32) -> Bool {
        var polled = fds.filter { $0 >= 0 }.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        guard !polled.isEmpty else { return false }
        _ = poll(&polled, nfds_t(polled.count), milliseconds)
        for entry in polled where entry.revents != 0 {
            var buffer = [UInt8](repeating: 0, count: 65536)
            let count = read(entry.fd, &buffer, buffer.count)
            let index = fds.firstIndex(of: entry.fd)!
            if count <= 0 {
                if count == 0 || (errno != EAGAIN && errno != EINTR) {
                    _ = close(entry.fd)
                    fds[index] = -1
                }
                continue
            }
            let text = String(decoding: buffer[0..<count], as: UTF8.self)
            if index == 0 { stdout += text } else { stderr += text }
        }
        return fds.contains { $0 >= 0 }
    }

    /// Waits until the output contains `text` (`count` times).
    func waitFor(_ text: String, count: Int = 1, timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while self.count(text) < count {
            guard Date() < deadline else {
                throw Timeout(description: "timed out waiting for \(text.debugDescription); output so far:\n\(output)")
            }
            if !pump(milliseconds: 100) && self.count(text) < count {
                throw Timeout(description: "ended without printing \(text.debugDescription); output:\n\(output)")
            }
        }
    }

    /// Waits for the process to end and returns its exit code (128+N when killed by signal N).
    @discardableResult
    func waitForExit(timeout: Double = 120) throws -> Int32 {
        if let status { return status }
        let deadline = Date().addingTimeInterval(timeout)
        while pump(milliseconds: 100) {
            guard Date() < deadline else {
                kill(-pid, SIGKILL)
                throw Timeout(description: "did not exit within \(timeout)s; output:\n\(output)")
            }
        }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        let code = graceful_status_signaled(raw) != 0 ? 128 + graceful_status_signal(raw) : graceful_status_exit_code(raw)
        status = code
        return code
    }

    func signal(_ signal: Int32) {
        kill(pid, signal)
    }
}

/// A fresh directory under /tmp, removed at deinit.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/graceful-test-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw Launched.SpawnError(message: "mkdtemp") }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    /// `name` in the run directory of the one job run here: `graceful_run/<job>/name`.
    func run(_ name: String) -> String {
        let jobs = (try? FileManager.default.contentsOfDirectory(atPath: file("graceful_run"))) ?? []
        return "graceful_run/\(jobs.count == 1 ? jobs[0] : "(\(jobs.count) jobs)")/\(name)"
    }

    func write(_ name: String, _ contents: String) throws {
        let url = URL(fileURLWithPath: file(name))
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(contents.utf8).write(to: url)
    }

    func read(_ name: String) -> String? {
        FileManager.default.contents(atPath: file(name)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Replaces `name` atomically with `contents`, the way `mv` puts a file in place.
    func replace(_ name: String, with contents: String) throws {
        try write(name + ".new", contents)
        guard rename(file(name + ".new"), file(name)) == 0 else { throw Launched.SpawnError(message: "rename") }
    }
}

/// Whether any process whose command line contains `marker` is still alive.
func processesAlive(containing marker: String) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap(Int32.init).filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty,
              let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat"),
              !String(decoding: stat, as: UTF8.self).contains(") Z ")
        else { return false }
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(marker)
    }
}

/// The processes whose working directory is `directory` or below it: a job's processes, wherever
/// they moved in the process tree.
func processes(workingIn directory: String) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap(Int32.init).filter { pid in
        guard let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd"),
              cwd == directory || cwd.hasPrefix(directory + "/"),
              let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat")
        else { return false }
        return !String(decoding: stat, as: UTF8.self).contains(") Z ")
    }
}

/// Waits (polling /proc, the only view of unrelated processes) until no process works in `directory`;
/// returns those still there after `timeout`.
func waitUntilNoProcess(workingIn directory: String, timeout: Double = 5) -> [Int32] {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        let left = processes(workingIn: directory)
        if left.isEmpty || Date() >= deadline { return left }
        usleep(20_000)
    }
}
