import Glibc
import Graceful

// The command stays thin: parse, run the supervisor (or the queue), exit with its code.
do {
    switch try CommandLineInterface.parse(Array(CommandLine.arguments.dropFirst())) {
    case .help(let text):
        print(text, terminator: "")
        exit(ExitCode.success)
    case .run(let configuration):
        exit(Supervisor(configuration: configuration).run())
    case .queueRun(let configuration):
        exit(QueueRunner(configuration: configuration).run())
    case .queueStatus(let directory, let json):
        exit(QueueRunner.status(directory: directory, json: json))
    }
} catch {
    let line = "error: \(error)\n"
    _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    exit(ExitCode.usage)
}
