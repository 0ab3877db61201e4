import Glibc

/// Bytes from the kernel's random number generator, for the link's nonces.
public enum SecureRandom {
    /// Glibc's `getentropy` is `getrandom(2)` with flags 0 (Glibc does not export `getrandom` to
    /// Swift): it retries on EINTR and short reads itself and blocks only until the pool is first
    /// seeded, and it takes at most 256 bytes a call.
    private static let chunk = 256

    public static func bytes(_ count: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var offset = 0
            while offset < count {
                let size = min(Self.chunk, count - offset)
                // It fails only on a kernel without getrandom (before 3.17), which Swift does not run on.
                guard getentropy(buffer.baseAddress! + offset, size) == 0 else {
                    fatalError("getentropy: \(String(cString: strerror(errno)))")
                }
                offset += size
            }
            initialized = count
        }
    }
}
