import Glibc

/// CLOCK_MONOTONIC in nanoseconds: one clock shared by every process on the machine, so times taken
/// in the ranks and here compare directly.
func monotonicNow() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: the closest of three readings taken back to back.
func realtimeMinusMonotonic() -> Int64 {
    var best: (spread: Int64, offset: Int64) = (.max, 0)
    for _ in 0..<3 {
        var before = timespec()
        var real = timespec()
        var after = timespec()
        clock_gettime(CLOCK_MONOTONIC, &before)
        clock_gettime(CLOCK_REALTIME, &real)
        clock_gettime(CLOCK_MONOTONIC, &after)
        let low = Int64(before.tv_sec) * 1_000_000_000 + Int64(before.tv_nsec)
        let high = Int64(after.tv_sec) * 1_000_000_000 + Int64(after.tv_nsec)
        let realtime = Int64(real.tv_sec) * 1_000_000_000 + Int64(real.tv_nsec)
        if high - low < best.spread { best = (high - low, realtime - (low + high) / 2) }
    }
    return best.offset
}

func sleep(seconds: Double) {
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) < 0 && errno == EINTR { request = remaining }
}

/// A pipe whose two ends are close-on-exec (this process is single-threaded: nothing can spawn between
/// pipe and fcntl). Returns 0 or -1.
func closeOnExecPipe(_ fds: inout [Int32]) -> Int32 {
    guard pipe(&fds) == 0 else { return -1 }
    fds.forEach { _ = fcntl($0, F_SETFD, FD_CLOEXEC) }
    return 0
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes all of `bytes`; false when the other end is gone.
@discardableResult
func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 {
            if errno == EINTR { continue }
            return false
        }
        offset += written
    }
    return true
}
