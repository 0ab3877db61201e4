import GracefulProtocol
import Glibc

/// Watches the control file with inotify on its directory (editors and `mv` replace the inode, so
/// the file itself cannot be watched), plus a `stat` check every few seconds for filesystems where
/// inotify sees nothing (NFS, some container mounts). Reads happen only when something changed.
final class ControlFileWatcher {
    /// What a read of the file found.
    enum Reading: Equatable {
        case missing
        case state(ControlFileState)
        /// The file exists but cannot be used.
        case unusable(Unusable)
    }

    /// Why an existing file cannot be read as a control file.
    enum Unusable: Equatable, CustomStringConvertible {
        case cannotOpen(errno: Int32)
        case cannotExamine(errno: Int32)
        case notRegular(mode: mode_t)
        case tooLarge
        case cannotRead(errno: Int32)

        fileprivate var kind: UnusableKind {
            switch self {
            case .cannotOpen: return .cannotOpen
            case .cannotExamine: return .cannotExamine
            case .notRegular(let mode): return .fileType(mode & S_IFMT)
            case .tooLarge: return .tooLarge
            case .cannotRead: return .cannotRead
            }
        }

        var description: String {
            switch self {
            case .cannotOpen(let errno): return "cannot be opened: \(SystemError("open", errno: errno).reason)"
            case .cannotExamine(let errno): return "cannot be examined: \(SystemError("fstat", errno: errno).reason)"
            case .notRegular(let mode): return "is \(ControlFileWatcher.kind(mode)), not a regular file"
            case .tooLarge: return "is larger than \(ControlFileWatcher.maximumSize) bytes"
            case .cannotRead(let errno): return "cannot be read: \(SystemError("read", errno: errno).reason)"
            }
        }
    }

    /// What one warning stands for: later problems of the same kind stay silent until the file is
    /// valid or missing again.
    private enum WarningKind: Hashable {
        case content(ControlFileProblem.Kind)
        /// One per way the file cannot be used (a directory and a fifo are two problems), so that each
        /// new situation is said even when the missing file in between went unseen.
        case unusable(UnusableKind)
    }

    fileprivate enum UnusableKind: Hashable {
        case cannotOpen, cannotExamine, fileType(mode_t), tooLarge, cannotRead
    }

    /// Larger files are refused unread: a control file holds a few bytes.
    static let maximumSize = 1 << 20
    /// Seconds between two `stat` checks of the fallback.
    static let statInterval = 2.0

    let path: String
    private let fileName: String
    /// The inotify descriptor, or -1 when inotify could not watch the directory.
    let inotifyFD: Int32
    private var lastIdentity: [Int] = []
    private var warned: Set<WarningKind> = []

    /// With `watching` false, no inotify instance is made: for a one-time `evaluate` (the check
    /// before launch), where its teardown at close (an RCU grace period, milliseconds on a busy
    /// machine) would only delay the launch.
    init(path: String, watching: Bool = true) {
        self.path = path
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        fileName = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let fd = watching ? inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC)) : -1
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE)
        if fd >= 0, inotify_add_watch(fd, directory, mask) >= 0 {
            inotifyFD = fd
        } else {
            closeDescriptor(fd)
            inotifyFD = -1
        }
        lastIdentity = identity()
    }

    deinit { closeDescriptor(inotifyFD) }

    /// Reads pending inotify events (at most 64 KiB of them: the rest wait for the next turn of the
    /// event loop); true when one of them concerns the control file.
    func drainEvents() -> Bool {
        var concerned = false
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Bounded: a process rewriting the directory in a loop must not keep the event loop here.
        for _ in 0..<16 {
            let count = buffer.withUnsafeMutableBytes { readAvailable(inotifyFD, into: $0) }
            guard let count, count > 0 else { break }
            buffer.withUnsafeBytes { raw in
                var offset = 0
                let header = MemoryLayout<inotify_event>.size
                while offset + header <= count {
                    let length = Int(raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                    let nameBytes = raw[(offset + header)..<min(offset + header + length, count)]
                    let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                    if name == fileName { concerned = true }
                    offset += header + length
                }
            }
        }
        if concerned { lastIdentity = identity() }
        return concerned
    }

    /// The stat fallback: true when the file's identity (inode, size, times) changed since last seen.
    func changedSinceLastCheck() -> Bool {
        let current = identity()
        defer { lastIdentity = current }
        return current != lastIdentity
    }

    private func identity() -> [Int] {
        var info = stat()
        guard stat(path, &info) == 0 else { return [] }
        return [
            Int(info.st_dev), Int(info.st_ino), Int(info.st_size), Int(info.st_mode),
            Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_ctim.tv_sec), Int(info.st_ctim.tv_nsec),
        ]
    }

    /// Reads and interprets the file now. Never blocks (a fifo is refused without opening it for long).
    func read() -> Reading {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        if fd < 0 {
            if errno == ENOENT || errno == ENOTDIR { return .missing }
            return .unusable(.cannotOpen(errno: errno))
        }
        defer { closeDescriptor(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return .unusable(.cannotExamine(errno: errno)) }
        guard info.st_mode & S_IFMT == S_IFREG else { return .unusable(.notRegular(mode: info.st_mode)) }
        guard info.st_size <= Self.maximumSize else { return .unusable(.tooLarge) }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while contents.count <= Self.maximumSize {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return .unusable(.cannotRead(errno: errno))
            }
            if count == 0 { break }
            contents.append(contentsOf: chunk[0..<count])
        }
        guard contents.count <= Self.maximumSize else { return .unusable(.tooLarge) }
        return .state(ControlFileState(contents: contents))
    }

    fileprivate static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a fifo"
        case S_IFSOCK: return "a socket"
        case S_IFCHR, S_IFBLK: return "a device"
        default: return "a special file"
        }
    }

    /// Reads the file and decides: true when it requests an exit. A problem is reported once per
    /// kind (a file written a byte at a time is invalid after every byte), until the file is valid or
    /// missing again.
    func evaluate(warn: (String) -> Void) -> Bool {
        let problem: (kind: WarningKind, text: String)
        switch read() {
        case .missing, .state(.clear):
            warned.removeAll()
            return false
        case .state(.requestsExit):
            warned.removeAll()
            return true
        case .state(.invalid(let reason)): problem = (.content(reason.kind), "\(reason)")
        case .unusable(let reason): problem = (.unusable(reason.kind), "\(reason)")
        }
        if warned.insert(problem.kind).inserted { warn("warning: control file \(path): \(problem.text); ignored") }
        return false
    }
}
