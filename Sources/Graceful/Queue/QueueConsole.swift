/// `queue run`'s own lines on stderr, prefixed `graceful queue: `: a line per task start and end,
/// with a count, never the tasks' output (that is in each attempt's `console.log`).
///
/// Written through the coordinator's `Console`, so they never block: a terminal that stops reading
/// (Ctrl+S, a stalled `| tee`, a pipe nobody reads) cannot freeze the queue. What does not fit in
/// its bounded buffer is dropped and counted, and a notice says so once the stream takes lines again;
/// `queue status` has every task's state whatever was dropped.
final class QueueConsole {
    private let console = Console()

    init() {
        console.prefix = "graceful queue: "
        console.droppedNotice = "line(s) of queue run's output dropped from the console, which did not keep up; 'graceful queue status' shows every task"
    }

    func line(_ text: String) {
        if text.hasPrefix("error: ") {
            console.error(String(text.dropFirst(7)))
        } else {
            console.report(text)
        }
    }

    /// Writes what the console takes now, without waiting.
    func flush() { console.flush() }

    /// Lines are waiting for a console that did not keep up: the loop should retry soon.
    var hasPending: Bool { console.hasPending }

    /// At exit: waits up to `milliseconds` for the console to take what is queued, then gives up.
    func drain(milliseconds: Int) { console.drain(milliseconds: milliseconds) }
}
