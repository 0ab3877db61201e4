import Glibc

/// `queue run`'s own lines on stderr, prefixed `graceful queue: `: a line per task start and end,
/// with a count, never the tasks' output (that is in each attempt's `console.log`), so a few lines
/// per task are all it writes and a plain write is enough.
final class QueueConsole {
    func line(_ text: String) {
        let prefixed = text.hasPrefix("error: ") ? text : "graceful queue: " + text
        writeAll(STDERR_FILENO, prefixed + "\n")
    }
}
