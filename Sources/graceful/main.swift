import Glibc
import Graceful

// The command stays thin: parse, run the supervisor, exit with its code.
do {
    switch try CommandLineInterface.parse(Array(CommandLine.arguments.dropFirst())) {
    case .help(let text):
        print(text, terminator: "")
        exit(ExitCode.success)
    case .run(let configuration):
        exit(Supervisor(configuration: configuration).run())
    }
} catch {
    let line = "error: \(error)\n"
    _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    exit(ExitCode.usage)
}
