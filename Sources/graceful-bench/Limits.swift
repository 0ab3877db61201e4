import Foundation
import Glibc

/// What the machine itself allows, measured with bare peer processes (`graceful-bench-rank peer-*`,
/// no client, no coordinator): the floor under each of graceful's figures.
///
/// Each sample is one way, from just before the action here to the peer's timestamp on waking (both
/// CLOCK_MONOTONIC), with 5 ms between samples so each starts from an idle machine, as a stop does.
struct Limits {
    let pipe: Summary
    let socket: Summary
    let signal: Summary
    let inotify: Summary

    static let pause = 0.005

    static func measure(_ workspace: Workspace, samples: Int) throws -> Limits {
        Limits(
            pipe: try echo(workspace, samples: samples, socket: false),
            socket: try echo(workspace, samples: samples, socket: true),
            signal: try signalDelivery(workspace, samples: samples),
            inotify: try renameNotification(workspace, samples: samples))
    }

    var json: [String: Any] {
        [
            "pipe_one_way_us": pipe.json, "socket_one_way_us": socket.json,
            "signal_delivery_us": signal.json, "inotify_rename_us": inotify.json,
        ]
    }

    /// A byte written to a pipe or an AF_UNIX stream socket (the rank channel's kind) until the
    /// peer's blocked read returns.
    private static func echo(_ workspace: Workspace, samples: Int, socket: Bool) throws -> Summary {
        var fds: [Int32] = [-1, -1]
        let made = socket ? socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) : closeOnExecPipe(&fds)
        guard made == 0 else { throw BenchError("cannot make a \(socket ? "socket pair" : "pipe")") }
        // A pipe: the peer reads fds[0], we write fds[1]. A socket: the peer has fds[1], we use fds[0].
        let (ours, theirs) = socket ? (fds[0], fds[1]) : (fds[1], fds[0])
        let peer = try Child(workspace.rank, ["peer-echo", workspace.root], standardInput: theirs)
        close(theirs)
        defer { close(ours) }
        var result: [Double] = []
        var buffer = [UInt8](repeating: 0, count: 64)
        for _ in 0..<samples {
            sleep(seconds: pause)
            let start = monotonicNow()
            writeAll(ours, [UInt8(ascii: "x")])
            let woken: Int64?
            if socket {
                let count = buffer.withUnsafeMutableBytes { read(ours, $0.baseAddress, $0.count) }
                woken = count > 0 ? Int64(String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) : nil
            } else {
                woken = try nextTimestamp(peer)
            }
            guard let woken else { throw BenchError("the echo peer did not answer") }
            result.append((woken - start).microseconds)
        }
        return Summary(result)
    }

    /// kill(2) until the peer's sigtimedwait returns.
    private static func signalDelivery(_ workspace: Workspace, samples: Int) throws -> Summary {
        let peer = try Child(workspace.rank, ["peer-signal", workspace.root])
        try waitForReady(peer)
        var result: [Double] = []
        for _ in 0..<samples {
            sleep(seconds: pause)
            let start = monotonicNow()
            kill(peer.pid, SIGUSR1)
            result.append((try nextTimestamp(peer) - start).microseconds)
        }
        return Summary(result)
    }

    /// rename(2) onto a watched name until the peer's inotify read returns with IN_MOVED_TO, the event
    /// the coordinator wakes on for a control file put in place with `mv`.
    private static func renameNotification(_ workspace: Workspace, samples: Int) throws -> Summary {
        let directory = try workspace.directory("inotify")
        defer { workspace.remove(directory) }
        let peer = try Child(workspace.rank, ["peer-inotify", directory, "target", workspace.root])
        try waitForReady(peer)
        var result: [Double] = []
        for _ in 0..<samples {
            try Data("{\"GracefulExit\": 1}\n".utf8).write(to: URL(fileURLWithPath: directory + "/staged"))
            sleep(seconds: pause)
            let start = monotonicNow()
            guard rename(directory + "/staged", directory + "/target") == 0 else { throw BenchError("rename failed") }
            result.append((try nextTimestamp(peer) - start).microseconds)
        }
        return Summary(result)
    }

    private static func waitForReady(_ peer: Child) throws {
        guard peer.pump(until: monotonicNow() + 10_000_000_000, { peer.newLines().contains { $0.text == "ready" } }) else {
            throw BenchError("a peer did not start")
        }
    }

    private static func nextTimestamp(_ peer: Child) throws -> Int64 {
        var stamp: Int64?
        _ = peer.pump(until: monotonicNow() + 5_000_000_000) {
            stamp = peer.newLines().lazy.compactMap { Int64($0.text) }.first
            return stamp != nil
        }
        guard let stamp else { throw BenchError("a peer did not answer") }
        return stamp
    }
}

/// The floor under the stop fan-out at N ranks: this process writes one line to each of N AF_UNIX
/// sockets in turn (what the coordinator does with `stop`), and N bare peers, each blocked in read,
/// stamp their wake-up. Per trial: from before the first write to the last peer's wake-up.
///
/// With `loopback`, the sockets are TCP connections over 127.0.0.1 with TCP_NODELAY, as between
/// coordinators: at N = 3, the floor under the leader's `stop` to three followers (no MAC, no
/// coordinator work).
struct RawFanOut {
    let ranks: Int
    let everyPeer: Summary
    let perPeer: Summary

    var json: [String: Any] { ["ranks": ranks, "every_peer_ms": everyPeer.json, "per_peer_ms": perPeer.json] }

    static func measure(_ workspace: Workspace, ranks: Int, trials: Int, loopback: Bool = false) throws -> RawFanOut {
        var sockets: [Int32] = []
        var peers: [Child] = []
        defer {
            sockets.forEach { close($0) }
            // End of file on its socket ends each peer; reap them all.
            for peer in peers { _ = peer.wait(until: monotonicNow() + 5_000_000_000) }
        }
        for _ in 0..<ranks {
            var fds: [Int32] = [-1, -1]
            if loopback {
                fds = try loopbackPair()
            } else if socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) != 0 {
                throw BenchError("socketpair failed at \(sockets.count) peers (open files: ulimit -n)")
            }
            sockets.append(fds[0])
            defer { close(fds[1]) }
            peers.append(try Child(workspace.rank, ["peer-echo", workspace.root], standardInput: fds[1]))
        }
        let message = Array("{\"type\":\"stop\",\"id\":1,\"trigger\":\"SIGTERM\"}\n".utf8)
        _ = try round(sockets, message)
        var every: [Double] = []
        var each: [Double] = []
        for _ in 0..<trials {
            sleep(seconds: 0.05 + Double(ranks) * 0.0002)
            let start = monotonicNow()
            let woken = try round(sockets, message).map { ($0 - start).milliseconds }
            every.append(woken.max()!)
            each += woken
        }
        return RawFanOut(ranks: ranks, everyPeer: Summary(every), perPeer: Summary(each))
    }

    /// A close-on-exec TCP socket bound to a port the kernel picks on 127.0.0.1, and its address.
    static func boundLoopbackSocket() throws -> (fd: Int32, address: sockaddr_in) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else {
            close(fd)
            throw BenchError("cannot bind a socket on 127.0.0.1")
        }
        return (fd, address)
    }

    /// Two ends of one TCP connection over 127.0.0.1, both close-on-exec and TCP_NODELAY.
    static func loopbackPair() throws -> [Int32] {
        let (listener, address) = try boundLoopbackSocket()
        defer { close(listener) }
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard client >= 0 else { throw BenchError("socket failed") }
        let connected = withUnsafePointer(to: address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                listen(listener, 1) == 0 && connect(client, pointer, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        // This process is single-threaded: nothing can spawn between accept and fcntl.
        let server = connected ? accept(listener, nil, nil) : -1
        if server >= 0 { _ = fcntl(server, F_SETFD, FD_CLOEXEC) }
        guard server >= 0 else {
            close(client)
            throw BenchError("cannot connect over 127.0.0.1")
        }
        var one: Int32 = 1
        for fd in [client, server] { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        return [client, server]
    }

    /// Writes `message` to every socket, then collects every peer's timestamp.
    private static func round(_ sockets: [Int32], _ message: [UInt8]) throws -> [Int64] {
        for fd in sockets where !writeAll(fd, message) { throw BenchError("a fan-out peer is gone") }
        var stamps = [Int64?](repeating: nil, count: sockets.count)
        var pending = [String](repeating: "", count: sockets.count)
        var polled = sockets.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let deadline = monotonicNow() + 30_000_000_000
        var missing = sockets.count
        while missing > 0 {
            guard monotonicNow() < deadline else { throw BenchError("\(missing) fan-out peers did not answer") }
            guard poll(&polled, nfds_t(polled.count), 1000) > 0 else { continue }
            for index in polled.indices where polled[index].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(sockets[index], $0.baseAddress, $0.count) }
                guard count > 0 else { throw BenchError("a fan-out peer is gone") }
                pending[index] += String(decoding: buffer[0..<count], as: UTF8.self)
                if pending[index].hasSuffix("\n"), stamps[index] == nil {
                    stamps[index] = Int64(pending[index].trimmingCharacters(in: .whitespacesAndNewlines))
                    pending[index] = ""
                    polled[index].events = 0
                    missing -= 1
                }
            }
        }
        return try stamps.map { stamp in
            guard let stamp else { throw BenchError("a fan-out peer answered nonsense") }
            return stamp
        }
    }
}
