import Glibc

/// Finds the program a rank command names, the way a shell's PATH search does, so a typo is reported
/// once, before any rank starts.
enum ExecutableLookup {
    enum Failure: Error, Equatable {
        case notFound(String)
        case notExecutable(String)
    }

    static func resolve(_ command: String, path searchPath: String?) throws(Failure) -> String {
        if command.contains("/") {
            guard access(command, F_OK) == 0 else { throw .notFound(command) }
            guard isExecutableFile(command) else { throw .notExecutable(command) }
            return command
        }
        var foundButNotExecutable: String?
        let directories = (searchPath ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":", omittingEmptySubsequences: false)
        for directory in directories {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + command
            if isExecutableFile(candidate) { return candidate }
            if access(candidate, F_OK) == 0 && foundButNotExecutable == nil { foundButNotExecutable = candidate }
        }
        if let foundButNotExecutable { throw .notExecutable(foundButNotExecutable) }
        throw .notFound(command)
    }

    private static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFREG && access(path, X_OK) == 0
    }
}
