import Glibc

/// This machine's names on the network, as launchers put them in log names and environments.
enum NetworkAddress {
    /// `gethostname(2)`; `localhost` when it fails.
    static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The local address this machine would use to reach `host` (msrun's `{ip}`): a UDP socket
    /// connected to it, whose bound address is read back. Nothing is sent. nil when `host` does not
    /// resolve or is unreachable.
    static func localAddress(toward host: String) -> String? {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(bare, "8117", &hints, &found) == 0, let first = found else { return nil }
        defer { freeaddrinfo(found) }
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            defer { entry = current.pointee.ai_next }
            let socketFD = socket(current.pointee.ai_family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard socketFD >= 0 else { continue }
            defer { close(socketFD) }
            guard connect(socketFD, current.pointee.ai_addr, current.pointee.ai_addrlen) == 0 else { continue }
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socketFD, $0, &length) }
            }
            guard named == 0 else { continue }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
            let written: UnsafePointer<CChar>?
            if Int32(storage.ss_family) == AF_INET {
                var address = withUnsafeBytes(of: storage) { $0.load(as: sockaddr_in.self) }
                written = inet_ntop(AF_INET, &address.sin_addr, &text, socklen_t(text.count))
            } else {
                var address = withUnsafeBytes(of: storage) { $0.load(as: sockaddr_in6.self) }
                written = inet_ntop(AF_INET6, &address.sin6_addr, &text, socklen_t(text.count))
            }
            guard written != nil else { continue }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return nil
    }
}
