import Glibc

/// The coordinator's terminal output: its own lines on stderr prefixed `graceful: `, rank lines
/// prefixed `[rankN]: ` on the stream the rank used. Lines are never split or mixed, and nothing here
/// ever blocks: a console that does not keep up loses rank lines (counted and reported; the rank logs
/// keep them), never the coordinator's attention.
final class Console {
    private let streams = [ConsoleStream(fd: STDOUT_FILENO), ConsoleStream(fd: STDERR_FILENO)]
    /// Starts each of the coordinator's own lines; `graceful[node K]: ` on a node of a multi-node job.
    var prefix = "graceful: "
    /// What the notice of dropped lines says after their count.
    var droppedNotice = "line(s) of rank output dropped from the console, which did not keep up; the rank logs have every line"

    func report(_ line: String) {
        own("\(prefix)\(line)\n")
    }

    /// `error: ...`, after this node's prefix on a node of a multi-node job.
    func error(_ line: String) {
        own(prefix == "graceful: " ? "error: \(line)\n" : "\(prefix)error: \(line)\n")
    }

    private func own(_ text: String) {
        var text = text
        text.withUTF8 { streams[1].enqueue(UnsafeRawBufferPointer($0), lines: 1, essential: true) }
    }

    /// Queues `bytes`, already prefixed whole lines (`lines` of them), for stdout or stderr.
    func rankLines(_ bytes: UnsafeRawBufferPointer, lines: Int, toStandardError: Bool) {
        streams[toStandardError ? 1 : 0].enqueue(bytes, lines: lines, essential: false)
    }

    /// Writes what the streams take now; once a stream that dropped lines has room again, says so.
    func flush() {
        for stream in streams {
            stream.flush()
            if stream.droppedSinceNotice > 0 && stream.hasRoomForNotice {
                let count = stream.droppedSinceNotice
                stream.noticeWritten()
                report("\(count) \(droppedNotice)")
            }
        }
    }

    var hasPending: Bool { streams.contains { $0.hasPending } }

    /// Rank lines dropped from the console in all.
    var droppedLines: Int { streams.reduce(0) { $0 + $1.droppedTotal } }

    /// At exit: waits up to `milliseconds` for the streams to take what is queued, then gives up.
    func drain(milliseconds: Int) {
        var left = milliseconds
        flush()
        while hasPending && left > 0 {
            var waiting = streams.filter(\.hasPending).compactMap(\.pollDescriptor).map {
                pollfd(fd: $0, events: Int16(POLLOUT), revents: 0)
            }
            guard !waiting.isEmpty else { return }
            _ = poll(&waiting, nfds_t(waiting.count), Int32(min(left, 50)))
            left -= 50
            flush()
        }
    }
}
