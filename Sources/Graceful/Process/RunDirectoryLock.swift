import Glibc

/// `<run-dir>/lock`: one run per run directory. An exclusive `flock` that the kernel releases when
/// its last holder is gone: the coordinator, and after it the guard, which lives until every process
/// of the job it knows of is dead. The file holds the coordinator's pid, for the refusal message.
struct RunDirectoryLock {
    static let fileName = "lock"

    enum Failure: Error {
        /// Another run holds it; its coordinator's pid, when the file names one.
        case busy(holder: pid_t?)
        case system(SystemError)
    }

    let fd: Int32

    static func acquire(in directory: String) throws(Failure) -> RunDirectoryLock {
        let path = directory + "/" + fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)
        if fd < 0 { throw .system(SystemError("open \(path)")) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            let error = errno
            let holder = readHolder(fd)
            closeDescriptor(fd)
            if error == EWOULDBLOCK { throw .busy(holder: holder) }
            throw .system(SystemError("flock \(path)", errno: error))
        }
        let text = "\(getpid())\n"
        if ftruncate(fd, 0) != 0 || pwrite(fd, text, text.utf8.count, 0) != text.utf8.count {
            let error = SystemError("write \(path)")
            closeDescriptor(fd)
            throw .system(error)
        }
        return RunDirectoryLock(fd: fd)
    }

    private static func readHolder(_ fd: Int32) -> pid_t? {
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return pid_t(String(decoding: bytes[0..<count], as: UTF8.self).split(separator: "\n").first ?? "")
    }

    /// Whether `<directory>/lock` is still the file this lock holds: false once the run directory or
    /// its lock was removed (and perhaps recreated, and locked, by another run) during the run, when
    /// a write by path would land in a directory this run does not own.
    func isStillHeld(in directory: String) -> Bool {
        var held = stat()
        var named = stat()
        guard fstat(fd, &held) == 0, lstat(directory + "/" + Self.fileName, &named) == 0 else { return false }
        return held.st_dev == named.st_dev && held.st_ino == named.st_ino
    }

    /// Whether the run can write its record, proved before any rank starts without creating a file:
    /// a file made and removed by every launch frees an inode every launch, and ext4 without a
    /// journal skips inodes freed in the last minute when it allocates one, so each file a queue
    /// created was slower than the one before. A byte one block past the pid needs a new block (an
    /// empty file can be created on a full filesystem, a block cannot) and is fsynced (quotas,
    /// network filesystems), then cut off; the record's temporary also needs the directory writable.
    /// The offset is capped: a filesystem without sparse files writes zeros up to it.
    func probeWriting(in directory: String) -> SystemError? {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return SystemError("cannot write in \(directory)") }
        let length = info.st_size
        let offset = min(max(off_t(info.st_blksize), 4096), 1 << 20)
        defer { _ = ftruncate(fd, length) }
        if pwrite(fd, "\n", 1, offset) != 1 || fsync(fd) != 0 || access(directory, W_OK | X_OK) != 0 {
            return SystemError("cannot write in \(directory)")
        }
        return nil
    }

    /// Releases it for this process (the guard keeps its own reference until it exits).
    func release() {
        closeDescriptor(fd)
    }
}
