import CGraceful
import Glibc

/// One epoll instance: descriptors registered with a token, waited on together with a timeout.
final class EventLoop {
    struct Event {
        let token: UInt64
        let readable: Bool
        let hangup: Bool
    }

    private let epoll: Int32
    private var buffer = [graceful_event](repeating: graceful_event(), count: 256)

    init() throws {
        epoll = graceful_epoll_create()
        if epoll < 0 { throw SystemError("epoll_create1") }
    }

    deinit { closeDescriptor(epoll) }

    func register(_ fd: Int32, token: UInt64) throws {
        let error = graceful_epoll_add(epoll, fd, token)
        if error != 0 { throw SystemError("epoll_ctl(ADD)", errno: error) }
    }

    func unregister(_ fd: Int32) {
        _ = graceful_epoll_remove(epoll, fd)
    }

    /// Waits until something is ready or `timeoutMilliseconds` pass (-1: no limit).
    func wait(timeoutMilliseconds: Int32) throws -> [Event] {
        let count: Int32 = buffer.withUnsafeMutableBufferPointer { events in
            graceful_epoll_wait(epoll, events.baseAddress!, Int32(events.count), timeoutMilliseconds)
        }
        if count < 0 { throw SystemError("epoll_wait") }
        return (0..<Int(count)).map { index in
            let raw = buffer[index]
            return Event(
                token: raw.token,
                readable: raw.events & UInt32(GRACEFUL_READABLE) != 0,
                hangup: raw.events & UInt32(GRACEFUL_HANGUP | GRACEFUL_ERROR) != 0)
        }
    }
}
