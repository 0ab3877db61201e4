import Glibc
import GracefulProtocol

/// After a stop the control file asked for, its flag goes back to 0 so the next launch is not refused.
/// Only the flag's bytes change: other tools' numbers (`1e400`, 30-digit integers), key order and
/// spacing stay as written, and a symbolic link stays a link (the file it points to is replaced).
enum ControlFileReset {
    enum Outcome {
        /// The flag was set and is now 0 in `file` (the control file, or the file its link points to).
        case reset(file: String)
        /// Nothing to do: the file is missing, unusable, or no longer requests an exit.
        case notRequested
        /// The flag is still set: the file could not be rewritten.
        case failed(SystemError)
    }

    static func reset(_ path: String) -> Outcome {
        guard let resolved = realpath(path, nil) else { return .notRequested }
        let file = String(cString: resolved)
        free(resolved)
        var info = stat()
        guard stat(file, &info) == 0,
              case .some(.some(let contents)) = try? AtomicFile.read(file, limit: ControlFileWatcher.maximumSize),
              let cleared = ControlFileState.cleared(contents)
        else { return .notRequested }
        do {
            try AtomicFile.write(cleared, to: file, mode: info.st_mode & 0o7777)
            return .reset(file: file)
        } catch {
            return .failed(error)
        }
    }
}
