import Glibc

/// The TCP calls of the link between coordinators, non-blocking, close-on-exec, and never raising
/// SIGPIPE.
enum ClusterSocket {
    /// A listening socket on every address at `port` (the leader's rendezvous endpoint): IPv6 and
    /// IPv4 on one socket, or IPv4 alone where the kernel has no IPv6.
    static func listen(port: Int) throws(SystemError) -> Int32 {
        if let fd = listenDualStack(port: port) { return fd }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = INADDR_ANY
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 128) == 0 else {
            let error = SystemError("bind or listen on port \(port)")
            close(fd)
            throw error
        }
        return fd
    }

    /// `[::]:port` taking IPv4 too (IPV6_V6ONLY off); nil when IPv6 is unavailable, or the port is
    /// taken (the IPv4 attempt then says so).
    private static func listenDualStack(port: Int) -> Int32? {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var one: Int32 = 1
        var zero: Int32 = 0
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            close(fd)
            return nil
        }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = UInt16(port).bigEndian
        address.sin6_addr = in6addr_any
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, 128) == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// The next pending connection, non-blocking, with its peer's address as text; nil when none.
    static func accept(_ listener: Int32) -> (fd: Int32, peer: String)? {
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.accept(listener, $0, &length)
            }
        }
        guard fd >= 0 else { return nil }
        // Nothing runs between accept and these two (the coordinator spawns from this thread only).
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return (fd, peerText(address))
    }

    /// `host:port`, `[v6]:port`; an IPv4 peer of the dual-stack socket as plain IPv4.
    private static func peerText(_ storage: sockaddr_storage) -> String {
        var storage = storage
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        func host() -> String { String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        if Int32(storage.ss_family) == AF_INET6 {
            return withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { address in
                    let port = UInt16(bigEndian: address.pointee.sin6_port)
                    let bytes = withUnsafeBytes(of: address.pointee.sin6_addr) { Array($0) }
                    if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
                        return "\(bytes[12]).\(bytes[13]).\(bytes[14]).\(bytes[15]):\(port)"
                    }
                    inet_ntop(AF_INET6, &address.pointee.sin6_addr, &text, socklen_t(text.count))
                    return "[\(host())]:\(port)"
                }
            }
        }
        return withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                inet_ntop(AF_INET, &address.pointee.sin_addr, &text, socklen_t(text.count))
                return "\(host()):\(UInt16(bigEndian: address.pointee.sin_port))"
            }
        }
    }

    enum ConnectError: Error, CustomStringConvertible {
        case unresolved(String)
        case failed(SystemError)
        var description: String {
            switch self {
            case .unresolved(let host): return "cannot resolve '\(host)'"
            case .failed(let error): return "\(error)"
            }
        }
    }

    /// Connects to `host:port`, waiting at most `timeoutMilliseconds` for the connection to be made.
    /// The socket returned is non-blocking.
    static func connect(host: String, port: Int, timeoutMilliseconds: Int32) throws(ConnectError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let first = found else { throw .unresolved(host) }
        defer { freeaddrinfo(found) }
        var lastError = SystemError("connect to \(host):\(port)", errno: ECONNREFUSED)
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            entry = current.pointee.ai_next
            let fd = socket(current.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            if Glibc.connect(fd, current.pointee.ai_addr, current.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                if poll(&poller, 1, timeoutMilliseconds) == 1, getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 {
                    var one: Int32 = 1
                    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    return fd
                }
                lastError = SystemError("connect to \(host):\(port)", errno: error == 0 ? ETIMEDOUT : error)
            } else {
                lastError = SystemError("connect to \(host):\(port)")
            }
            close(fd)
        }
        throw .failed(lastError)
    }

    /// Sends what the socket takes now; the count sent, or nil when the connection is broken.
    static func send(_ fd: Int32, _ bytes: ArraySlice<UInt8>) -> Int? {
        let sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        if sent >= 0 { return sent }
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : nil
    }
}
