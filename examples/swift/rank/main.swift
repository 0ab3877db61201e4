// A rank written in Swift: a deterministic toy computation that stops with its peers at one step,
// checkpoints, and resumes from the committed step.
//
//   swift build -c release
//   .build/release/graceful run -n 4 -- .build/release/swift-rank-example --steps 500
import Foundation
import GracefulRank

struct Options {
    var steps = 1000
    var stepTime = 0.01
    var checkpointDirectory = "checkpoints/swift_rank"

    init(_ arguments: [String]) {
        var index = 0
        func value() -> String {
            index += 1
            guard index < arguments.count else { fail("missing value for \(arguments[index - 1])") }
            return arguments[index]
        }
        while index < arguments.count {
            switch arguments[index] {
            case "--steps":
                guard let number = Int(value()), number >= 0 else { fail("--steps takes a whole number") }
                steps = number
            case "--step-time":
                guard let seconds = Double(value()), seconds >= 0 else { fail("--step-time takes seconds") }
                stepTime = seconds
            case "--checkpoint-dir": checkpointDirectory = value()
            default: fail("unknown option \(arguments[index]) (options: --steps N --step-time S --checkpoint-dir DIR)")
            }
            index += 1
        }
    }
}

/// A line on stdout now: a pipe would otherwise hold it in a buffer until exit.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(64)
}

/// The state: a running value that depends on every step done, so a wrong resume shows.
func advance(_ value: UInt64, step: Int, rank: Int) -> UInt64 {
    (value &* 6364136223846793005) &+ UInt64(step) &* 1442695040888963407 &+ UInt64(rank)
}

let options = Options(Array(CommandLine.arguments.dropFirst()))
let rank = Rank.shared
let directory = "\(options.checkpointDirectory)/rank\(rank.rank)"
try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)

/// Writes the state atomically (temporary file, fsync, rename) and confirms it.
func save(_ value: UInt64, step: Int) throws -> String {
    let path = "\(directory)/step_\(step).txt"
    let temporary = path + ".tmp"
    try "\(value)\n".write(toFile: temporary, atomically: false, encoding: .utf8)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
    try handle.synchronize()
    try handle.close()
    guard rename(temporary, path) == 0 else { fail("cannot rename \(temporary)") }
    rank.checkpointed(step: step, path: path)
    return path
}

var value: UInt64 = 0
var first = 1
if let path = rank.resumePath, let step = rank.resumeStep {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8),
          let saved = UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
    else { fail("cannot read checkpoint \(path)") }
    value = saved
    first = step + 1
}
say("rank \(rank.rank)/\(rank.worldSize): starting at step \(first)")

for step in first...max(first, options.steps) where step <= options.steps {
    value = advance(value, step: step, rank: rank.rank)
    if options.stepTime > 0 { usleep(UInt32(options.stepTime * 1_000_000)) }
    if rank.shouldStop(step: step) {
        let path = try save(value, step: step)
        say("rank \(rank.rank): stopped after step \(step) (\(rank.trigger ?? "?")), checkpoint \(path)")
        exit(0)
    }
    if rank.shouldCheckpoint(step: step) {
        say("rank \(rank.rank): checkpoint at step \(step), \(try save(value, step: step))")
    }
}
try "\(value)\n".write(toFile: "\(options.checkpointDirectory)/final_rank\(rank.rank).txt", atomically: true, encoding: .utf8)
say("rank \(rank.rank): finished \(options.steps) steps, value \(value)")
