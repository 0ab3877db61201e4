// The processes graceful-bench starts (docs/BENCHMARKS.md): the rank it runs under `graceful run`,
// built on the GracefulRank client, and the bare peers that measure the machine's own limits.
// Every time printed is CLOCK_MONOTONIC in nanoseconds, which is one clock for every process.
//
//   graceful-bench-rank rank --results FILE [--step-time SECONDS] [--log-every SECONDS] [--relay-every K]
//                            [--watch-doorbell K] [--epoch NANOSECONDS]
//   graceful-bench-rank step-cost --calls N --repeats R --results FILE
//   graceful-bench-rank peer-echo        (one timestamp line per read from fd 0, which may be a socket)
//   graceful-bench-rank peer-signal      (one timestamp line per SIGUSR1)
//   graceful-bench-rank peer-inotify DIR NAME   (one timestamp line per rename onto DIR/NAME)
//
// Peers ignore further arguments: the benchmark adds its scratch directory, by which it finds leftovers.
import Dispatch
import CGraceful
import Foundation
import Glibc
import GracefulRank
import Synchronization

func now() -> Int64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
}

func fail(_ message: String) -> Never {
    writeAll(STDERR_FILENO, "graceful-bench-rank: \(message)\n")
    exit(64)
}

/// Writes the whole string, in one write for a short line.
func writeAll(_ fd: Int32, _ text: String) {
    writeAll(fd, ArraySlice(text.utf8))
}

/// Writes all of `bytes`.
func writeAll(_ fd: Int32, _ bytes: ArraySlice<UInt8>) {
    bytes.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let written = write(fd, raw.baseAddress! + offset, raw.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += written
        }
    }
}

/// Appends one line to `path` with a single O_APPEND write, so the lines of many ranks never mix.
func appendLine(_ path: String, _ line: String) {
    let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { fail("cannot open \(path)") }
    writeAll(fd, line + "\n")
    close(fd)
}

func sleepNanoseconds(_ nanoseconds: Int64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) < 0 && errno == EINTR { request = remaining }
}

/// `--name value` options after the mode.
func option(_ name: String, in arguments: [String]) -> String? {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
    return arguments[index + 1]
}

// MARK: - The rank

/// When a relayed rank's stop passed through its relay (CLOCK_MONOTONIC ns; 0 until then).
final class RelayTimes: Sendable {
    /// The stop's bytes were read from the coordinator's channel.
    let delivered = Atomic<Int64>(0)
    /// The client's `position` answer was read from the client's side.
    let answered = Atomic<Int64>(0)
    /// The stop step (`stop_at`) was read from the coordinator's channel.
    let told = Atomic<Int64>(0)
    /// A thread waiting on the doorbell's word (FUTEX_WAIT) woke to a new request.
    let rung = Atomic<Int64>(0)
    /// Signalled once the client's `checkpointed` went on to the coordinator.
    let checkpointForwarded = DispatchSemaphore(value: 0)
}

/// A training loop of `--step-time` steps (sleeps) calling `shouldStop` at every boundary until the
/// stop, then `checkpointed` and exit 0 at once, as the examples do. It prints `ready N` once the
/// client said hello (and with `--log-every S` a line every S seconds).
///
/// With `--relay-every K`, in rank 0 and in every K-th rank counting back from the last, the client
/// gets one end of a socket pair instead of the channel, and a relay thread copies bytes both ways
/// between the pair and the channel, stamping the arrival of the stop, the client's `position`
/// answer and the arrival of the stop step. The answer is what shows, without polling and without a
/// race, that the client has the stop in hand: its reader sends it the moment it handled the stop,
/// right after raising the flag `shouldStop` tests. (A second thread waiting on the channel itself
/// would race the reader: poll reports nothing once the reader has drained the socket.) The relay
/// adds one socket hop each way and two thread wake-ups, so only a sample of ranks is relayed.
///
/// A relayed rank also has a thread blocked on the doorbell (FUTEX_WAIT), stamping when the
/// coordinator's store woke it: the moment the request is in the memory every rank's `shouldStop`
/// reads, overstated by one futex wake-up.
///
/// With `--epoch T` (CLOCK_MONOTONIC ns, the same for every rank), steps keep to one grid for every
/// rank, as ranks of a data-parallel job do through their collectives: step k is called at
/// T + (k - 1) × step time (at once when the rank is late), and a rank starts at the step the grid is
/// at, so a rank launched late is not seconds of steps behind the first one. Steps stay consecutive.
///
/// With `--watch-doorbell K`, every rank appends `confirmed RANK CONFIRMED RUNG` after its
/// `checkpointed`: CONFIRMED is the moment just before it called `checkpointed`; RUNG is the wake-up
/// of its doorbell waiter, which local rank 0 and every K-th local rank counting back from the last
/// have (K = 1: every rank), 0 in the others (and when it did not wake within 5 s). The line is
/// written once the stop is over for the rank, so no file is written while the stop fans out. The
/// waiters are a sample: each is one more thread woken by the ring, on the CPUs the coordinators need.
///
/// Appends to the results file `hello RANK TIME` once the hello is sent and, in a relayed rank,
/// `stop RANK DELIVERED ANSWERED TOLD RUNG` as soon as the stop step arrived (RUNG 0: no doorbell): on disk before anything
/// the coordinator may do next (SIGTERM to every rank, when it judges the stop failed).
func runRank(_ arguments: [String]) -> Never {
    guard let results = option("--results", in: arguments) else { fail("rank needs --results FILE") }
    let stepTime = option("--step-time", in: arguments).flatMap(Double.init) ?? 0.1
    let logEvery = option("--log-every", in: arguments).flatMap(Double.init)
    guard let channelText = getenv("GRACEFUL_CHANNEL_FD"), let channel = Int32(String(cString: channelText)) else {
        fail("rank runs under graceful run (no GRACEFUL_CHANNEL_FD)")
    }
    // Rank 0, which the coordinator sends to first, and every K-th rank counting back from the last,
    // which it sends to last.
    let relayEvery = option("--relay-every", in: arguments).flatMap(Int.init) ?? 0
    let index = getenv("RANK").flatMap { Int(String(cString: $0)) } ?? 0
    let worldSize = getenv("WORLD_SIZE").flatMap { Int(String(cString: $0)) } ?? 1
    let relayed = relayEvery > 0 && (index == 0 || (worldSize - 1 - index) % relayEvery == 0)
    let relay = relayed ? RelayTimes() : nil
    let watchEvery = option("--watch-doorbell", in: arguments).flatMap(Int.init).map { max(1, $0) }
    let localIndex = getenv("LOCAL_RANK").flatMap { Int(String(cString: $0)) } ?? index
    let localSize = getenv("LOCAL_WORLD_SIZE").flatMap { Int(String(cString: $0)) } ?? worldSize
    let watched = watchEvery.map { localIndex == 0 || (localSize - 1 - localIndex) % $0 == 0 } ?? false
    // The doorbell waiter's stamps: the relay's, or, in a rank --watch-doorbell samples, a set of our own.
    let doorbellTimes = relay ?? (watched ? RelayTimes() : nil)
    let doorbellWoke = DispatchSemaphore(value: 0)
    var watchingDoorbell = false
    var clientEnd: Int32 = -1
    if let doorbellTimes, let text = getenv("GRACEFUL_DOORBELL_FD"), let fd = Int32(String(cString: text)),
       let page = graceful_doorbell_map_fd(fd) {
        // Mapped before the client starts, so the value it waits past is the one the client saw.
        let seen = graceful_doorbell_load(page)
        // The page stays mapped for the life of the process; its address crosses as a number.
        let address = UInt(bitPattern: page)
        let waiter = Thread {
            graceful_doorbell_wait(UnsafePointer(bitPattern: address)!, seen)
            doorbellTimes.rung.store(now(), ordering: .sequentiallyConsistent)
            doorbellWoke.signal()
        }
        waiter.name = "bench-doorbell"
        waiter.start()
        watchingDoorbell = true
    }
    if relay != nil {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { fail("socketpair") }
        setenv("GRACEFUL_CHANNEL_FD", "\(pair[0])", 1)
        clientEnd = pair[1]
    }
    let rank = Rank.shared
    let hello = now()
    if let relay {
        // The hello goes on before `ready` is printed, so the coordinator has it before relaying the line.
        forwardLine(from: clientEnd, to: channel)
        let thread = Thread { [clientEnd, index] in relayChannel(channel, clientEnd, relay, results: results, rank: index) }
        thread.name = "bench-relay"
        thread.start()
    }
    appendLine(results, "hello \(rank.rank) \(hello)")
    writeAll(STDOUT_FILENO, "ready \(rank.rank)\n")

    let stepNanoseconds = Int64(stepTime * 1e9)
    let epoch = option("--epoch", in: arguments).flatMap { Int64($0) }
    var step = epoch.map { max(1, Int((now() - $0) / stepNanoseconds) + 1) } ?? 1
    var nextLog = logEvery.map { now() + Int64($0 * 1e9) }
    while !rank.shouldStop(step: step) {
        if let epoch {
            let left = epoch + Int64(step) * stepNanoseconds - now()
            if left > 0 { sleepNanoseconds(left) }
        } else {
            sleepNanoseconds(stepNanoseconds)
        }
        step += 1
        if let logEvery, let due = nextLog, now() >= due {
            writeAll(STDOUT_FILENO, "rank \(rank.rank) at step \(step)\n")
            nextLog = due + Int64(logEvery * 1e9)
        }
    }
    let confirmed = now()
    rank.checkpointed(step: step, path: nil)
    if let relay, relay.checkpointForwarded.wait(timeout: .now() + 30) == .timedOut { fail("the relay did not forward checkpointed") }
    if watchEvery != nil {
        let rung = watchingDoorbell && doorbellWoke.wait(timeout: .now() + 5) == .success
            ? doorbellTimes?.rung.load(ordering: .sequentiallyConsistent) ?? 0 : 0
        appendLine(results, "confirmed \(rank.rank) \(confirmed) \(rung)")
    }
    exit(0)
}

/// Copies one line (the client's hello) from `source` to `destination`.
func forwardLine(from source: Int32, to destination: Int32) {
    var line: [UInt8] = []
    var byte: UInt8 = 0
    while line.last != UInt8(ascii: "\n") {
        let count = read(source, &byte, 1)
        if count < 0 && errno == EINTR { continue }
        guard count == 1 else { fail("the client closed its channel before hello") }
        line.append(byte)
    }
    writeAll(destination, line[...])
}

/// The relay thread: channel ⇄ client, until either side closes (then the other is closed too, so the
/// client sees the end of file the coordinator caused). It only searches bytes and copies them, and
/// appends the rank's `stop` line to `results` once the stop step has gone on to the client.
func relayChannel(_ channel: Int32, _ client: Int32, _ times: RelayTimes, results: String, rank: Int) {
    let stop = Array(#""stop""#.utf8)
    let stopAt = Array(#""stop_at""#.utf8)
    let position = Array(#""position""#.utf8)
    let checkpointed = Array(#""checkpointed""#.utf8)
    var descriptors = [pollfd(fd: channel, events: Int16(POLLIN), revents: 0), pollfd(fd: client, events: Int16(POLLIN), revents: 0)]
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        if poll(&descriptors, 2, -1) < 0 { continue }
        for index in 0..<2 where descriptors[index].revents != 0 {
            let count = buffer.withUnsafeMutableBytes { read(descriptors[index].fd, $0.baseAddress, $0.count) }
            let time = now()
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                shutdown(index == 0 ? client : channel, Int32(SHUT_RDWR))
                return
            }
            let bytes = buffer[0..<count]
            if index == 0 {
                if contains(bytes, stop) { _ = times.delivered.compareExchange(expected: 0, desired: time, ordering: .sequentiallyConsistent) }
                let told = contains(bytes, stopAt) && times.told.compareExchange(expected: 0, desired: time, ordering: .sequentiallyConsistent).exchanged
                writeAll(client, bytes)
                if told {
                    let delivered = times.delivered.load(ordering: .sequentiallyConsistent)
                    let answered = times.answered.load(ordering: .sequentiallyConsistent)
                    let rung = times.rung.load(ordering: .sequentiallyConsistent)
                    appendLine(results, "stop \(rank) \(delivered) \(answered) \(time) \(rung)")
                }
            } else {
                if contains(bytes, position) { _ = times.answered.compareExchange(expected: 0, desired: time, ordering: .sequentiallyConsistent) }
                writeAll(channel, bytes)
                if contains(bytes, checkpointed) { times.checkpointForwarded.signal() }
            }
        }
    }
}

/// Whether `pattern` occurs in `bytes`.
func contains(_ bytes: ArraySlice<UInt8>, _ pattern: [UInt8]) -> Bool {
    guard bytes.count >= pattern.count else { return false }
    var start = bytes.startIndex
    while start <= bytes.endIndex - pattern.count {
        if bytes[start..<start + pattern.count].elementsEqual(pattern) { return true }
        start += 1
    }
    return false
}

// MARK: - The per-step cost of shouldStop

/// Times `calls` calls of `shouldStop` with nothing pending, `repeats` times, under the coordinator;
/// writes the median nanoseconds per call.
func runStepCost(_ arguments: [String]) -> Never {
    guard let results = option("--results", in: arguments),
          let calls = option("--calls", in: arguments).flatMap(Int.init), calls > 0,
          let repeats = option("--repeats", in: arguments).flatMap(Int.init), repeats > 0
    else { fail("step-cost needs --calls N --repeats R --results FILE") }
    let rank = Rank.shared
    guard rank.isCoordinated else { fail("step-cost runs under graceful run") }
    var step = 0
    var perCall: [Double] = []
    for _ in 0..<repeats {
        let start = now()
        for _ in 0..<calls {
            step += 1
            if rank.shouldStop(step: step) { fail("shouldStop returned true with nothing pending") }
        }
        perCall.append(Double(now() - start) / Double(calls))
    }
    perCall.sort()
    appendLine(results, "\(perCall[perCall.count / 2])")
    exit(0)
}

// MARK: - Peers for the physical limits

/// Exits when the benchmark is gone (its end of fd 0 closed), so no peer outlives it.
func runEchoPeer() -> Never {
    // On a socket fd 0 is both ways; on a pipe the answer goes to stdout.
    var kind: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    let answer = getsockopt(STDIN_FILENO, SOL_SOCKET, SO_TYPE, &kind, &length) == 0 ? STDIN_FILENO : STDOUT_FILENO
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(STDIN_FILENO, $0.baseAddress, $0.count) }
        let time = now()
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { exit(0) }
        writeAll(answer, "\(time)\n")
    }
}

/// SIGUSR1 blocked and taken with sigtimedwait: delivery with no handler and no event loop. The
/// timeout only notices a benchmark that is gone.
func runSignalPeer() -> Never {
    let parent = getppid()
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGUSR1)
    sigprocmask(SIG_BLOCK, &set, nil)
    writeAll(STDOUT_FILENO, "ready\n")
    var timeout = timespec(tv_sec: 1, tv_nsec: 0)
    while true {
        let signal = sigtimedwait(&set, nil, &timeout)
        let time = now()
        if signal == SIGUSR1 {
            writeAll(STDOUT_FILENO, "\(time)\n")
        } else if getppid() != parent {
            exit(0)
        }
    }
}

/// inotify on a directory, as the coordinator watches the control file: one line per rename onto NAME.
func runInotifyPeer(_ arguments: [String]) -> Never {
    guard arguments.count >= 2 else { fail("peer-inotify needs DIR NAME") }
    let directory = arguments[0]
    let name = arguments[1]
    let fd = inotify_init1(Int32(IN_CLOEXEC))
    guard fd >= 0, inotify_add_watch(fd, directory, UInt32(IN_MOVED_TO)) >= 0 else { fail("inotify on \(directory)") }
    writeAll(STDOUT_FILENO, "ready\n")
    let parent = getppid()
    var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        // The timeout only notices a benchmark that is gone.
        let ready = poll(&descriptor, 1, 1000)
        let time = now()
        if ready == 0 && getppid() != parent { exit(0) }
        guard ready > 0 else { continue }
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { continue }
        var offset = 0
        var concerned = false
        let header = MemoryLayout<inotify_event>.size
        while offset + header <= count {
            let length = buffer.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)) }
            let nameBytes = buffer[(offset + header)..<min(offset + header + length, count)].prefix { $0 != 0 }
            if String(decoding: nameBytes, as: UTF8.self) == name { concerned = true }
            offset += header + length
        }
        if concerned { writeAll(STDOUT_FILENO, "\(time)\n") }
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
switch arguments.first {
case "rank": runRank(Array(arguments.dropFirst()))
case "step-cost": runStepCost(Array(arguments.dropFirst()))
case "peer-echo": runEchoPeer()
case "peer-signal": runSignalPeer()
case "peer-inotify": runInotifyPeer(Array(arguments.dropFirst()))
default: fail("usage: graceful-bench-rank rank|step-cost|peer-echo|peer-signal|peer-inotify ...")
}
