import CGraceful
import Glibc

/// A process proven to descend from the coordinator, held through a pidfd: a signal sent through it
/// reaches that process or nothing, never a process that reused its pid.
struct Descendant {
    let pid: pid_t
    let parent: pid_t
    let processGroup: pid_t
    /// Start time in clock ticks since boot: with the pid, it names one process for all time.
    let startTime: UInt64
    /// Owned by whoever holds the `Descendants` snapshot; closed by `Descendants.close()`.
    let pidfd: Int32

    var identity: Identity { Identity(pid: pid, startTime: startTime) }

    struct Identity: Hashable {
        let pid: pid_t
        let startTime: UInt64
    }

    /// Sends `signal` through the pidfd; a process already gone is not an error.
    func send(_ signal: Int32) {
        _ = graceful_pidfd_signal(pidfd, signal)
    }
}

/// The coordinator's living descendants, found by walking `/proc/<pid>/task/<tid>/children` down
/// from the coordinator, parents before children.
///
/// Each link is proven before it is trusted: a direct child cannot be recycled while it is unreaped,
/// and only the coordinator reaps it; a deeper process is opened as a pidfd, its parent read from
/// `/proc/<pid>/stat`, and kept only when that parent is the process found one level up and both
/// pidfds still name living processes after the read. So no process outside the coordinator's tree
/// is ever listed, whatever pids were reused meanwhile.
struct Descendants {
    private(set) var processes: [Descendant] = []

    /// Every descendant of the calling process except the pids in `excluded` (and their subtrees);
    /// with `childrenOnly`, its direct children alone.
    static func walk(excluding excluded: Set<pid_t> = [], childrenOnly: Bool = false) -> Descendants {
        var result = Descendants()
        var frontier: [(pid: pid_t, pidfd: Int32)] = [(getpid(), -1)]
        var buffer = [UInt8](repeating: 0, count: 16384)
        while let node = frontier.popLast() {
            for child in childPIDs(of: node.pid, buffer: &buffer) where !excluded.contains(child) {
                guard let found = prove(child, parent: node, buffer: &buffer) else { continue }
                result.processes.append(found)
                if !childrenOnly { frontier.append((found.pid, found.pidfd)) }
            }
        }
        return result
    }

    /// Closes every pidfd of the snapshot.
    mutating func close() {
        processes.forEach { closeDescriptor($0.pidfd) }
        processes = []
    }

    var isEmpty: Bool { processes.isEmpty }

    /// The processes that belong to the rank whose leader is `leader`: those below it in the tree
    /// (wherever their group), and those still in its process group (orphans adopted by the
    /// coordinator, or a leader that moved into another group keeps its own subtree).
    func members(ofRankLed leader: pid_t) -> [Descendant] {
        var inSubtree: Set<pid_t> = [leader]
        var members: [Descendant] = []
        // Parents come before children, so one pass settles subtree membership.
        for process in processes {
            if process.pid == leader || inSubtree.contains(process.parent) {
                inSubtree.insert(process.pid)
                members.append(process)
            } else if process.processGroup == leader {
                members.append(process)
            }
        }
        return members
    }

    // MARK: - /proc

    private static func prove(_ pid: pid_t, parent: (pid: pid_t, pidfd: Int32), buffer: inout [UInt8]) -> Descendant? {
        let pidfd = graceful_pidfd_open(pid)
        guard pidfd >= 0 else { return nil }
        guard let stat = readStat(of: pid, buffer: &buffer), stat.parent == parent.pid,
              graceful_pidfd_signal(pidfd, 0) == 0,
              parent.pidfd < 0 || graceful_pidfd_signal(parent.pidfd, 0) == 0
        else {
            closeDescriptor(pidfd)
            return nil
        }
        return Descendant(pid: pid, parent: parent.pid, processGroup: stat.group, startTime: stat.startTime, pidfd: pidfd)
    }

    /// The children of every thread of `pid`.
    private static func childPIDs(of pid: pid_t, buffer: inout [UInt8]) -> [pid_t] {
        guard let directory = opendir("/proc/\(pid)/task") else { return [] }
        defer { closedir(directory) }
        var children: [pid_t] = []
        while let entry = readdir(directory) {
            let thread = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard Int32(thread) != nil, let count = readSmallFile("/proc/\(pid)/task/\(thread)/children", into: &buffer)
            else { continue }
            children += buffer[0..<count].split(separator: UInt8(ascii: " ")).compactMap {
                pid_t(String(decoding: $0, as: UTF8.self).trimmingNewline)
            }
        }
        return children
    }

    /// The parent, process group and start time from `/proc/<pid>/stat`, whose second field (the
    /// command name) may hold spaces and parentheses: fields are counted after its last `)`.
    private static func readStat(of pid: pid_t, buffer: inout [UInt8]) -> (parent: pid_t, group: pid_t, startTime: UInt64)? {
        guard let count = readSmallFile("/proc/\(pid)/stat", into: &buffer),
              let close = buffer[0..<count].lastIndex(of: UInt8(ascii: ")"))
        else { return nil }
        // After ")": state(3) ppid(4) pgrp(5) ... starttime(22).
        let fields = buffer[(close + 1)..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 19,
              let parent = pid_t(String(decoding: fields[1], as: UTF8.self)),
              let group = pid_t(String(decoding: fields[2], as: UTF8.self)),
              let start = UInt64(String(decoding: fields[19], as: UTF8.self))
        else { return nil }
        return (parent, group, start)
    }

    /// Reads a whole /proc file into `buffer`, growing it when the file does not fit; the byte count, or nil.
    private static func readSmallFile(_ path: String, into buffer: inout [UInt8]) -> Int? {
        while true {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            var total = 0
            while total < buffer.count {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + total, $0.count - total) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 { break }
                total += count
            }
            closeDescriptor(fd)
            // A /proc file must be read in one go to be consistent: start over with room to spare.
            guard total == buffer.count else { return total }
            buffer = [UInt8](repeating: 0, count: buffer.count * 2)
        }
    }
}

private extension String {
    var trimmingNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}
