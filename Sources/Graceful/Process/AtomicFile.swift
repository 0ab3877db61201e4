import Glibc
import GracefulProtocol

/// Durable, atomic replacement of a file: readers see the old content or the new, never a mix, even
/// if the coordinator is killed or the machine loses power half-way.
enum AtomicFile {
    /// Writes `contents` to a temporary file beside `path`, fsyncs it, renames it over `path`, and
    /// fsyncs the directory so the rename itself is durable.
    static func write(_ contents: String, to path: String) throws(SystemError) {
        try write(Array(contents.utf8), to: path)
    }

    /// The same with bytes; `mode` (permission bits), when given, is set exactly, whatever the umask.
    static func write(_ contents: [UInt8], to path: String, mode: mode_t? = nil) throws(SystemError) {
        let directory = parentDirectory(of: path)
        let temporary = "\(path).tmp.\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw SystemError("open \(temporary)") }
        if let mode, fchmod(fd, mode) != 0 {
            let error = SystemError("chmod \(temporary)")
            closeDescriptor(fd)
            unlink(temporary)
            throw error
        }
        guard contents.withUnsafeBytes({ writeAll(fd, $0) }) else {
            let error = SystemError("write \(temporary)")
            closeDescriptor(fd)
            unlink(temporary)
            throw error
        }
        if fsync(fd) != 0 {
            let error = SystemError("fsync \(temporary)")
            closeDescriptor(fd)
            unlink(temporary)
            throw error
        }
        closeDescriptor(fd)
        if rename(temporary, path) != 0 {
            let error = SystemError("rename \(temporary) to \(path)")
            unlink(temporary)
            throw error
        }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD < 0 { throw SystemError("open \(directory)") }
        defer { closeDescriptor(directoryFD) }
        if fsync(directoryFD) != 0 { throw SystemError("fsync \(directory)") }
    }

    /// The whole file, or nil when it does not exist; other failures throw.
    static func read(_ path: String, limit: Int = 16 << 20) throws(SystemError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw SystemError("open \(path)")
        }
        defer { closeDescriptor(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw SystemError("\(path) is not a regular file", errno: EINVAL)
        }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while contents.count <= limit {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SystemError("read \(path)")
            }
            if count == 0 { return contents }
            contents.append(contentsOf: chunk[0..<count])
        }
        throw SystemError("\(path) is larger than \(limit) bytes", errno: EFBIG)
    }

    /// Removes temporaries a killed writer of `path` left behind (`write` names them `<path>.tmp.<pid>`).
    static func removeTemporaries(of path: String) {
        let directory = parentDirectory(of: path)
        let prefix = String(path.split(separator: "/").last ?? "") + ".tmp."
        guard let handle = opendir(directory) else { return }
        defer { closedir(handle) }
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix(prefix) { unlink(directory + "/" + name) }
        }
    }

    static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

/// Creates `path` and its missing parents, like `mkdir -p`.
func makeDirectories(_ path: String) throws(SystemError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
        prefix += component
        if mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw SystemError("mkdir \(prefix)") }
        prefix += "/"
    }
    var info = stat()
    guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
        throw SystemError("\(path) is not a directory", errno: ENOTDIR)
    }
}

/// The current directory's bytes (they need not be UTF-8), or nil when it cannot be named.
func currentDirectory() -> [UInt8]? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard getcwd(&buffer, buffer.count) != nil else { return nil }
    return buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
}

/// `path` made absolute against the current directory.
func absolutePath(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    guard let bytes = currentDirectory() else { return path }
    let directory = String(decoding: bytes, as: UTF8.self)
    let trimmed = path.hasPrefix("./") ? String(path.dropFirst(2)) : path
    return directory == "/" ? "/" + trimmed : directory + "/" + trimmed
}

extension CheckpointPath {
    /// Whether something is at this path now (links followed); when not, errno says why.
    var exists: Bool {
        var info = stat()
        return withCString { stat($0, &info) } == 0
    }
}
