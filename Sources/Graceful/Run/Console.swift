import Glibc

/// The coordinator's terminal output: its own lines on stderr prefixed `graceful: `, rank lines
/// prefixed `[rankN]: ` on the stream the rank used. Each line is one write, so lines never mix.
struct Console {
    func report(_ line: String) {
        writeAll(STDERR_FILENO, "graceful: \(line)\n")
    }

    func error(_ line: String) {
        writeAll(STDERR_FILENO, "error: \(line)\n")
    }

    func rankLine(rank: Int, _ line: String, toStandardError: Bool) {
        writeAll(toStandardError ? STDERR_FILENO : STDOUT_FILENO, "[rank\(rank)]: \(line)\n")
    }
}
