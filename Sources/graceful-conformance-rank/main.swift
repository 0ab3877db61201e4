// The Swift driver of the conformance suite (Tests/python/test_conformance.py): a rank whose training
// loop the tests drive line by line through stdin, using `GracefulRank`. It behaves exactly like
// Tests/python/fake_rank.py, which documents the commands and the reports; both print the same
// JSON objects (compared as JSON, not as text).
import Foundation
import GracefulProtocol
import GracefulRank

// MARK: - Reports

/// The JSON values a report holds.
indirect enum Field {
    case int(Int)
    case double(Double)
    case bool(Bool)
    case string(String)
    case null
    case object([(String, Field)])

    static func optional(_ value: Int?) -> Field { value.map(Field.int) ?? .null }
    static func optional(_ value: String?) -> Field { value.map(Field.string) ?? .null }

    var json: String {
        switch self {
        case .int(let value): return String(value)
        case .double(let value): return value.isFinite ? String(value) : "null"
        case .bool(let value): return value ? "true" : "false"
        case .null: return "null"
        case .string(let value):
            var out = "\""
            for scalar in value.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case _ where scalar.value < 0x20 || scalar.value > 0x7E:
                    for unit in String(scalar).utf16 {
                        let hex = String(unit, radix: 16)
                        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    }
                default: out.unicodeScalars.append(scalar)
                }
            }
            return out + "\""
        case .object(let fields):
            return "{" + fields.map { Field.string($0.0).json + ": " + $0.1.json }.joined(separator: ", ") + "}"
        }
    }
}

/// One JSON object on stdout, written at once (the tests wait for it; a child shares the stream).
func report(_ fields: (String, Field)...) {
    let line = Field.object(fields).json + "\n"
    var bytes = Array(line.utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 && errno == EINTR { continue }
        if written <= 0 { exit(70) }
        offset += written
    }
}

func isOpen(_ text: String?) -> Bool {
    guard let text, let fd = Int32(text) else { return false }
    return fcntl(fd, F_GETFD) >= 0
}

// MARK: - Options

var keepGoing = false
var childOf: (channel: String?, doorbell: String?)?
var arguments = Array(CommandLine.arguments.dropFirst())
while !arguments.isEmpty {
    let option = arguments.removeFirst()
    func value() -> String {
        guard !arguments.isEmpty else {
            FileHandle.standardError.write(Data("error: \(option) needs a value\n".utf8))
            exit(64)
        }
        return arguments.removeFirst()
    }
    switch option {
    case "--keep-going": keepGoing = true
    case "--poll": _ = value() // the Swift client polls the control file every 0.5 s
    case "--control-file": setenv("GRACEFUL_CONTROL_FILE", value(), 1)
    case "--child": childOf = (value(), value())
    default:
        FileHandle.standardError.write(Data("error: unknown option \(option)\n".utf8))
        exit(64)
    }
}

// Read before the client removes them.
let channelText = ProcessInfo.processInfo.environment["GRACEFUL_CHANNEL_FD"]
let doorbellText = ProcessInfo.processInfo.environment["GRACEFUL_DOORBELL_FD"]
let rank = Rank.shared

@MainActor func info() -> Field {
    var inheritable = Field.null
    if rank.isCoordinated, let text = channelText, let fd = Int32(text) {
        let flags = fcntl(fd, F_GETFD)
        inheritable = flags < 0 ? .null : .bool(flags & FD_CLOEXEC == 0)
    }
    return .object([
        ("doorbell_fd_in_environ", .bool(getenv("GRACEFUL_DOORBELL_FD") != nil)),
        ("doorbell_fd_open", .bool(isOpen(doorbellText))),
        ("fd_in_environ", .bool(getenv("GRACEFUL_CHANNEL_FD") != nil)),
        ("fd_inheritable", inheritable),
        ("coordinated", .bool(rank.isCoordinated)),
        ("rank", .int(rank.rank)), ("world_size", .int(rank.worldSize)), ("local_rank", .int(rank.localRank)),
        ("resume_step", .optional(rank.resumeStep)), ("resume_path", .optional(rank.resumePath)),
        ("stop_step", .optional(rank.stopStep)), ("trigger", .optional(rank.trigger)),
        ("checkpoint_trigger", .optional(rank.checkpointTrigger)),
        ("committed_step", .optional(rank.committedStep)), ("same_instance", .bool(Rank.shared === rank)),
    ])
}

if let parent = childOf {
    // A program the rank started: what it inherited of the channel and the doorbell.
    report(("child", .object([
        ("coordinated", .bool(rank.isCoordinated)),
        ("fd_in_environ", .bool(getenv("GRACEFUL_CHANNEL_FD") != nil)),
        ("doorbell_fd_in_environ", .bool(getenv("GRACEFUL_DOORBELL_FD") != nil)),
        ("channel_fd_open", .bool(isOpen(parent.channel))),
        ("doorbell_fd_open", .bool(isOpen(parent.doorbell))),
    ])))
    exit(0)
}

/// Starts this program again with `--child`, inheriting every descriptor not marked close-on-exec
/// (posix_spawn closes nothing else), and waits for it.
@MainActor func runChild() -> Int32 {
    let executable = "/proc/self/exe"
    let argv = [executable, "--child", channelText ?? "-", doorbellText ?? "-"]
    var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    defer { for pointer in cArguments { free(pointer) } }
    var pid: pid_t = 0
    let error = posix_spawn(&pid, executable, nil, nil, &cArguments, environ)
    guard error == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}

// MARK: - The loop

@MainActor func boundary(_ step: Int) {
    report(("at", .int(step)))
    let stop = rank.shouldStop(step: step)
    let checkpoint = !stop && rank.shouldCheckpoint(step: step)
    report(("boundary", .int(step)), ("stop", .bool(stop)), ("checkpoint", .bool(checkpoint)))
    if stop {
        rank.checkpointed(step: step, path: "ckpt/step_\(step)")
        report(("checkpointed", .int(step)), ("stop_step", .optional(rank.stopStep)), ("trigger", .optional(rank.trigger)))
        if !keepGoing { exit(0) }
    } else if checkpoint {
        rank.checkpointed(step: step, path: "ckpt/step_\(step)")
        report(("checkpointed", .int(step)), ("checkpoint_trigger", .optional(rank.checkpointTrigger)))
    }
}

func bytes(fromHex text: String) -> [UInt8]? {
    let digits = Array(text.utf8)
    guard digits.count % 2 == 0 else { return nil }
    return stride(from: 0, to: digits.count, by: 2).compactMap { UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16) }
}

func nanoseconds() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

report(("ready", info()))
var step = 0
while let line = readLine() {
    let words = line.split(separator: " ").map(String.init)
    guard let command = words.first else { continue }
    switch command {
    case "run":
        let deadline = Date(timeIntervalSinceNow: Double(words[1]) ?? 0)
        var stopped = false
        while !stopped && Date() < deadline {
            step += 1
            stopped = rank.shouldStop(step: step)
            usleep(10_000)
        }
        report(("ran", .int(step)), ("stopped", .bool(stopped)), ("trigger", .optional(rank.trigger)))
    case "time":
        let count = Int(words[1]) ?? 0
        let start = nanoseconds()
        for index in (step + 1)..<(step + 1 + count) { _ = rank.shouldStop(step: index) }
        let middle = nanoseconds()
        for index in (step + 1 + count)..<(step + 1 + 2 * count) where !rank.shouldStop(step: index) {
            _ = rank.shouldCheckpoint(step: index)
        }
        let end = nanoseconds()
        step += 2 * count
        report(("ns_per_call", .double(Double(middle - start) / Double(count))),
               ("ns_per_boundary", .double(Double(end - middle) / Double(count))))
    case "checkpointed":
        rank.checkpointed(step: Int(words[1]) ?? 0, checkpoint: nil)
        report(("checkpointed_returned", .bool(true)))
    case "checkpointed-path":
        let path = bytes(fromHex: words.count > 2 ? words[2] : "").flatMap { CheckpointPath(bytes: $0) }
        if let path {
            rank.checkpointed(step: Int(words[1]) ?? 0, checkpoint: path)
            report(("checkpointed_returned", .bool(true)))
        } else {
            report(("value_error", .string("\(words.count > 2 ? words[2] : "") is not a path")))
        }
    case "info":
        report(("info", info()))
    case "child":
        let status = runChild()
        report(("child_exit", .int(Int((status >> 8) & 0xFF))))
    default:
        for _ in 0..<(Int(command) ?? 0) {
            step += 1
            boundary(step)
        }
    }
}
exit(0)
