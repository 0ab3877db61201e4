import Glibc

/// A failed system call: what was attempted and the errno text.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.errno = errno
    }

    public var reason: String { String(cString: strerror(errno)) }
    public var description: String { "\(operation): \(reason)" }
}

/// The monotonic clock the coordinator's deadlines run on.
func monotonicNow() -> Instant {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Instant(nanoseconds: Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec))
}

/// Closes `fd`; never retried on EINTR, since Linux has already released it then.
func closeDescriptor(_ fd: Int32) {
    if fd >= 0 { _ = Glibc.close(fd) }
}

/// Writes all of `bytes` to a blocking or non-blocking descriptor. Returns false on EPIPE, EAGAIN or
/// any other error: the caller treats the peer as gone.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if written < 0 {
            if errno == EINTR { continue }
            return false
        }
        offset += written
    }
    return true
}

@discardableResult
func writeAll(_ fd: Int32, _ text: String) -> Bool {
    var text = text
    return text.withUTF8 { writeAll(fd, UnsafeRawBufferPointer($0)) }
}

/// Reads what is available from a non-blocking descriptor into `buffer`: the byte count, 0 at end of
/// file, or nil when nothing is available now.
func readAvailable(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
    while true {
        let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
        if count >= 0 { return count }
        if errno == EINTR { continue }
        if errno == EAGAIN || errno == EWOULDBLOCK { return nil }
        // ECONNRESET and the like: the other side is gone, which is an end of file here.
        return 0
    }
}
