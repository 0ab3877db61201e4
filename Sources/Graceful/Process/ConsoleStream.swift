import CGraceful
import Glibc

/// One of the coordinator's own output streams (stdout or stderr), written without ever blocking the
/// event loop, whatever is on the other end: a paused terminal (Ctrl+S), a stalled `| tee`, a fifo
/// nobody reads.
///
/// Pipes, fifos and terminals are reopened through `/proc/self/fd/N` with O_NONBLOCK, a description
/// of the coordinator's own (setting O_NONBLOCK on the inherited one would change it for the shell
/// and every other process sharing it); sockets are written with MSG_DONTWAIT; regular files, which
/// never wait for a reader, are written directly. What does not fit in a bounded buffer is dropped
/// and counted, in whole lines.
final class ConsoleStream {
    /// Bytes held for a stream that does not keep up; beyond it, rank lines are dropped.
    static let capacity = 1 << 20
    /// Extra room for the coordinator's own lines, which are few and matter more than rank output.
    static let reserve = 256 << 10

    private enum Target {
        case nonBlocking(Int32)
        case socket(Int32)
        /// No /proc to reopen through: written directly, only as much as poll says fits.
        case polled(Int32)
        case regularFile(Int32)
        /// Nobody reads it (a pipe whose reader is gone): everything is dropped silently.
        case nowhere
    }

    private let target: Target
    private var pending: [UInt8] = []
    /// Bytes of `pending` already written.
    private var written = 0
    /// Lines dropped since the last notice, and in all.
    private(set) var droppedSinceNotice = 0
    private(set) var droppedTotal = 0

    init(fd: Int32) {
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            target = .nowhere
            return
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG, S_IFBLK:
            target = .regularFile(fd)
        case S_IFSOCK:
            target = .socket(fd)
        default:
            let reopened = open("/proc/self/fd/\(fd)", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
            if reopened >= 0 {
                target = .nonBlocking(reopened)
            } else if errno == ENXIO {
                target = .nowhere
            } else {
                target = .polled(fd)
            }
        }
    }

    deinit {
        if case .nonBlocking(let fd) = target { closeDescriptor(fd) }
    }

    var hasPending: Bool { written < pending.count }

    /// Queues `bytes` (whole lines, `lines` of them) and writes what the stream takes now. Rank output
    /// that does not fit is dropped and counted; the coordinator's own lines use the reserve too.
    func enqueue(_ bytes: UnsafeRawBufferPointer, lines: Int, essential: Bool) {
        if case .regularFile(let fd) = target {
            writeAll(fd, bytes)
            return
        }
        if case .nowhere = target { return }
        let room = Self.capacity + (essential ? Self.reserve : 0) - (pending.count - written)
        guard bytes.count <= room else {
            droppedSinceNotice += lines
            droppedTotal += lines
            return
        }
        // What was written is dropped once it is half the buffer: the memory held stays within a
        // few times `capacity` however long a console keeps up only in part.
        if written > 0 && (written == pending.count || written >= Self.capacity / 2) {
            pending.removeFirst(written)
            written = 0
        }
        pending.append(contentsOf: bytes)
        flush()
    }

    /// Writes as much as the stream takes now, without waiting.
    func flush() {
        while written < pending.count {
            let count = pending.withUnsafeBytes { raw -> Int in
                let start = raw.baseAddress! + written
                let length = raw.count - written
                switch target {
                case .nonBlocking(let fd): return Glibc.write(fd, start, length)
                case .socket(let fd): return send(fd, start, length, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                case .polled(let fd):
                    var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    guard poll(&ready, 1, 0) == 1, ready.revents & Int16(POLLOUT) != 0 else {
                        errno = EAGAIN
                        return -1
                    }
                    // A pipe that polls writable takes PIPE_BUF bytes without blocking.
                    return Glibc.write(fd, start, min(length, Int(PIPE_BUF)))
                case .regularFile, .nowhere: return length
                }
            }
            if count < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK {
                    // The reader is gone: nothing queued can ever be delivered.
                    written = pending.count
                }
                break
            }
            written += count
        }
        if written == pending.count && pending.count > Self.capacity / 4 {
            pending = []
            written = 0
        }
    }

    /// Forgets the lines dropped since the last notice (the notice is being written).
    func noticeWritten() {
        droppedSinceNotice = 0
    }

    /// Below half full again: a notice of dropped lines fits without dropping more.
    var hasRoomForNotice: Bool { pending.count - written < Self.capacity / 2 }

    /// The descriptor to poll for room, when there is one.
    var pollDescriptor: Int32? {
        switch target {
        case .nonBlocking(let fd), .socket(let fd), .polled(let fd): return fd
        case .regularFile, .nowhere: return nil
        }
    }
}
