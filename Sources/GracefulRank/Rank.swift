import CGraceful
import Foundation
import GracefulProtocol
import Synchronization

/// The rank side of the graceful protocol (docs/PROTOCOL.md), for rank processes written in Swift.
///
/// ```swift
/// let rank = Rank.shared
/// var step = (rank.resumeStep ?? 0) + 1
/// while step <= steps {
///     train(step)
///     if rank.shouldStop(step: step) {
///         save(step, to: path)
///         rank.checkpointed(step: step, path: path)
///         exit(0)
///     }
///     step += 1
/// }
/// ```
///
/// Under `graceful run` every rank stops after the same step. Outside it (no `GRACEFUL_CHANNEL_FD`),
/// SIGINT, SIGTERM and the control file (`GRACEFUL_CONTROL_FILE`, default `graceful_exit.json`,
/// checked by a background thread every half second) stop the rank at its next boundary.
///
/// `shouldStop(step:)` costs a few atomic loads and a store when nothing is pending: no lock, no
/// system call. Under the coordinator it also reads the doorbell (docs/PROTOCOL.md), a word the
/// coordinator stores to before its messages go out, so a boundary acts on a request even before
/// the channel's reader thread got a CPU to read it.
public final class Rank: Sendable {
    /// The process's one client; the channel can be owned only once.
    public static let shared = Rank()

    public let rank: Int
    public let worldSize: Int
    public let localRank: Int
    /// The committed step this launch resumes from, or nil.
    public let resumeStep: Int?
    /// This rank's checkpoint of `resumeStep` as the file system names it (bytes), or nil.
    public let resumeCheckpoint: CheckpointPath?
    /// `resumeCheckpoint` as text; nil also when the path is not valid UTF-8 (use `resumeCheckpoint`).
    public var resumePath: String? { resumeCheckpoint.flatMap { String(validating: $0.bytes, as: UTF8.self) } }
    /// True under the coordinator.
    public let isCoordinated: Bool

    private let channel: Int32
    private let lastStep = Atomic<Int>(Rank.noStep)
    private let pending = Atomic<Bool>(false)
    private let checkpointPending = Atomic<Bool>(false)
    /// The doorbell's word, or a private zero when there is none.
    private nonisolated(unsafe) let doorbell: UnsafePointer<UInt32>
    /// The doorbell's value for the latest request the reader handled.
    private let heardRound = Atomic<UInt32>(0)
    /// False when `doorbell` is the private zero: the reader's requests then ring nothing.
    private let hasDoorbell: Bool
    private let state = NSCondition()
    private nonisolated(unsafe) var stopState = StopState()
    private let writeLock = Mutex(())

    private static let noStep = Int.min

    /// The client state machine of docs/PROTOCOL.md, shared with the Python client.
    private struct StopState {
        enum Target: Equatable {
            case unknown
            case at(Int?)
        }
        struct Request {
            var isStop: Bool
            var id: Int
            var trigger: String
            /// The position sent in the answer (nil: no boundary yet).
            var answered: Int?
            var target = Target.unknown
        }
        var request: Request?
        var stopStep: Int?
        var checkpointDue: Int?
        var stopping = false
        var channelClosed = false
        var committedStep: Int?
        var trigger: String?
        var checkpointTrigger: String?
    }

    private init() {
        let environment = ProcessInfo.processInfo.environment
        rank = environment["RANK"].flatMap(Int.init) ?? 0
        worldSize = environment["WORLD_SIZE"].flatMap(Int.init) ?? 1
        localRank = environment["LOCAL_RANK"].flatMap(Int.init) ?? 0
        resumeStep = environment["GRACEFUL_RESUME_STEP"].flatMap(Int.init)
        // Foundation's environment is text; the path's bytes come from the C environment as they are.
        resumeCheckpoint = getenv("GRACEFUL_RESUME_PATH").flatMap { CheckpointPath(bytes: UnsafeRawBufferPointer(start: $0, count: strlen($0))) }
        // The variable is removed in any case (docs/PROTOCOL.md, "The channel"): a program this rank
        // starts must neither claim the channel nor take a stale number for one.
        let channelText = environment["GRACEFUL_CHANNEL_FD"]
        unsetenv("GRACEFUL_CHANNEL_FD")
        let channelFD = channelText.flatMap(Int32.init).flatMap { Rank.isStreamSocket($0) ? $0 : nil }
        if let channelText, channelFD == nil {
            FileHandle.standardError.write(Data("graceful: GRACEFUL_CHANNEL_FD=\(channelText) is not a usable socket; running standalone\n".utf8))
        }
        // Only a rank with a working channel gets the messages a ring announces; without one, the
        // variable is stale (inherited from an ancestor) and its number names nothing of ours.
        let doorbellFD = environment["GRACEFUL_DOORBELL_FD"].flatMap(Int32.init)
        unsetenv("GRACEFUL_DOORBELL_FD")
        if let channelFD, let doorbellFD, doorbellFD > 2, doorbellFD != channelFD, let page = Rank.mapDoorbell(doorbellFD) {
            doorbell = page
            hasDoorbell = true
        } else {
            hasDoorbell = false
            let silent = UnsafeMutablePointer<UInt32>.allocate(capacity: 1)
            silent.initialize(to: 0)
            doorbell = UnsafePointer(silent)
        }
        heardRound.store(graceful_doorbell_load(doorbell), ordering: .relaxed)
        if let fd = channelFD {
            channel = fd
            isCoordinated = true
            // The channel is this process's alone: neither a program it executes nor a child it
            // spawns may think it owns it.
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            Rank.warmUp()
            send(RankMessage.hello(protocolVersion: gracefulProtocolVersion, pid: Int(getpid())).line)
            let reader = Thread { [self] in readChannel() }
            reader.name = "graceful-channel"
            reader.start()
        } else {
            channel = -1
            isCoordinated = false
            _ = graceful_rank_catch_stop_signals()
            let path = environment["GRACEFUL_CONTROL_FILE"] ?? "graceful_exit.json"
            let watcher = Thread { [self] in watchControlFile(path) }
            watcher.name = "graceful-control-file"
            watcher.start()
        }
    }

    /// Whether `fd` is an open stream socket: anything else (a closed number, a pipe, a file) cannot
    /// be a channel.
    private static func isStreamSocket(_ fd: Int32) -> Bool {
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 && type == Int32(SOCK_STREAM.rawValue)
    }

    /// Maps the doorbell's memory file read-only and closes the descriptor (a program this rank
    /// executes must not hold it). Nil when it is not at least a page long: mapping beyond its end
    /// would fault at the first read.
    private static func mapDoorbell(_ fd: Int32) -> UnsafePointer<UInt32>? {
        defer { close(fd) }
        return graceful_doorbell_map_fd(fd).map { UnsafePointer($0) }
    }

    /// Swift's first use of the message types costs some 130 µs of CPU (generic metadata and
    /// witness tables). Paid here, at launch, rather than at a stop, when every rank would pay it
    /// at once on the CPUs the coordinator needs to reach the others.
    private static func warmUp() {
        for line in [#"{"type":"stop","id":0,"trigger":"SIGINT"}"#, #"{"type":"stop_at","id":0,"step":0}"#] {
            _ = try? CoordinatorMessage(line: Array(line.utf8))
        }
        _ = RankMessage.position(id: 0, step: 0).line
    }

    /// The stop step once known.
    public var stopStep: Int? { state.withLock { stopState.stopStep } }

    /// The last step the coordinator reported committed.
    public var committedStep: Int? { state.withLock { stopState.committedStep } }

    /// What requested the stop ("SIGINT", "control-file", ..., or "channel-closed" when the
    /// coordinator went away), once one was requested.
    public var trigger: String? { state.withLock { stopState.trigger } }

    /// What requested the checkpoint of the last round `shouldCheckpoint(step:)` returned true for
    /// ("periodic", "SIGUSR2", ...), or nil.
    public var checkpointTrigger: String? { state.withLock { stopState.checkpointTrigger } }

    /// Call at every step boundary, right after finishing `step`. True: save the state of `step`,
    /// call `checkpointed(step:path:)`, and exit. Once true, always true.
    @inline(__always)
    public func shouldStop(step: Int) -> Bool {
        lastStep.store(step, ordering: .sequentiallyConsistent)
        if !pending.load(ordering: .sequentiallyConsistent)
            && graceful_doorbell_load(doorbell) == heardRound.load(ordering: .relaxed)
            && graceful_rank_caught_signal() == 0 {
            return false
        }
        return decide(step: step)
    }

    /// Call right after `shouldStop(step:)` returned false. True exactly at the step of a checkpoint
    /// request: save the state of `step`, call `checkpointed(step:path:)`, and keep training.
    @inline(__always)
    public func shouldCheckpoint(step: Int) -> Bool {
        guard checkpointPending.load(ordering: .relaxed) else { return false }
        return state.withLock {
            guard stopState.checkpointDue == step else { return false }
            stopState.checkpointDue = nil
            checkpointPending.store(false, ordering: .relaxed)
            return true
        }
    }

    /// Tells the coordinator the state after `step` is saved at `path`. Never throws; a coordinator
    /// that is gone is ignored. `step` must lie in `stepRange`, or the coordinator ignores the message.
    public func checkpointed(step: Int, checkpoint path: CheckpointPath?) {
        guard isCoordinated else { return }
        send(RankMessage.checkpointed(step: step, path: path).line)
    }

    /// The same with a path as text. An empty path, or one holding NUL, names no file: that is a
    /// programming error, stopped here as Python's client raises, rather than a silent `null` that the
    /// coordinator would commit as "no file of this rank".
    public func checkpointed(step: Int, path: String?) {
        guard let path else { return checkpointed(step: step, checkpoint: nil) }
        guard let checkpoint = CheckpointPath(path) else {
            preconditionFailure("checkpointed(step:path:): \(path.isEmpty ? "an empty path" : "a path holding NUL") names no file")
        }
        checkpointed(step: step, checkpoint: checkpoint)
    }

    // MARK: - The slow path (docs/PROTOCOL.md, "What the rank must do")

    private func decide(step: Int) -> Bool {
        state.lock()
        defer { state.unlock() }
        if !isCoordinated {
            let signal = graceful_rank_caught_signal()
            if signal != 0 && stopState.trigger == nil { stopState.trigger = signalName(signal) }
            stopState.stopping = true
            stopState.stopStep = stopState.stopStep ?? step
            return true
        }
        var giveUp: Date?
        while true {
            if stopState.stopping { return true }
            if stopState.channelClosed {
                // A stop's T stays the stop step when this boundary is T or past it (rule 5).
                stopState.stopping = true
                if stopState.stopStep.map({ step < $0 }) ?? true { stopState.stopStep = step }
                return true
            }
            let rung = graceful_doorbell_load(doorbell)
            if rung != heardRound.load(ordering: .relaxed) {
                // A request is on its way on the channel: wait for it here, at this boundary. A
                // ring whose message never comes (one not meant for this rank) is let go after 1 s.
                let deadline = giveUp ?? Date(timeIntervalSinceNow: 1)
                giveUp = deadline
                if state.wait(until: deadline) { continue }
                heardRound.store(rung, ordering: .relaxed)
                continue
            }
            guard let request = stopState.request else {
                pending.store(false, ordering: .sequentiallyConsistent)
                return false
            }
            switch request.target {
            case .unknown:
                // Until the boundary after the one answered, keep training; after it, wait for T.
                if let answered = request.answered, step <= answered { return false }
                state.wait()
            case .at(let target):
                guard target.map({ step >= $0 }) ?? true else { return false }
                if request.isStop {
                    stopState.stopping = true
                    if target == nil { stopState.stopStep = step }
                    return true
                }
                stopState.checkpointDue = step
                stopState.checkpointTrigger = request.trigger
                checkpointPending.store(true, ordering: .relaxed)
                stopState.request = nil
                pending.store(false, ordering: .sequentiallyConsistent)
                return false
            }
        }
    }

    private func readChannel() {
        var splitter = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        var skipping = false
        while true {
            let count = buffer.withUnsafeMutableBytes { read(channel, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            for byte in buffer[0..<count] {
                if byte != UInt8(ascii: "\n") {
                    if splitter.count < maximumMessageLength { splitter.append(byte) } else { skipping = true }
                    continue
                }
                if !skipping, let message = try? CoordinatorMessage(line: splitter) { handle(message) }
                splitter.removeAll(keepingCapacity: true)
                skipping = false
            }
        }
        // The coordinator is gone: stop at the next boundary; nothing can be aligned or committed.
        state.withLock {
            if stopState.trigger == nil { stopState.trigger = "channel-closed" }
            stopState.channelClosed = true
            pending.store(true, ordering: .sequentiallyConsistent)
            state.broadcast()
        }
    }

    private func handle(_ message: CoordinatorMessage) {
        switch message {
        case .stop(let id, let trigger):
            answer(id: id, trigger: trigger, isStop: true)
        case .checkpoint(let id, let trigger):
            answer(id: id, trigger: trigger, isStop: false)
        case .stopAt(let id, let step):
            setTarget(id: id, step: step, isStop: true)
        case .checkpointAt(let id, let step):
            setTarget(id: id, step: step, isStop: false)
        case .committed(let step):
            state.withLock { stopState.committedStep = step }
        }
    }

    private func answer(id: Int, trigger: String, isStop: Bool) {
        let position: Int?? = state.withLock {
            // Without a doorbell the word stays 0: remembering the id would make every boundary
            // wait a second for a ring that never comes.
            if hasDoorbell { heardRound.store(UInt32(truncatingIfNeeded: id), ordering: .relaxed) }
            // A boundary waiting for the doorbell's request re-checks, whatever becomes of it.
            state.broadcast()
            // A checkpoint request never replaces a stop request.
            if !isStop, stopState.request?.isStop == true { return nil }
            // The flag first, then the position: a boundary that misses the flag has stored its
            // step already, so the answer covers it (and T is beyond it).
            pending.store(true, ordering: .sequentiallyConsistent)
            let step = lastStep.load(ordering: .sequentiallyConsistent)
            let position = step == Rank.noStep ? nil : step
            stopState.request = StopState.Request(isStop: isStop, id: id, trigger: trigger, answered: position)
            if isStop && stopState.trigger == nil { stopState.trigger = trigger }
            return .some(position)
        }
        guard let position else { return }
        send(RankMessage.position(id: id, step: position).line)
    }

    private func setTarget(id: Int, step: Int?, isStop: Bool) {
        state.withLock {
            guard var request = stopState.request, request.id == id, request.isStop == isStop else { return }
            request.target = .at(step)
            stopState.request = request
            if isStop { stopState.stopStep = step }
            state.broadcast()
        }
    }

    private func send(_ line: String) {
        writeLock.withLock { _ in
            var line = line
            line.withUTF8 { bytes in
                var offset = 0
                while offset < bytes.count {
                    // Not write(2): a coordinator gone must not kill the rank with SIGPIPE.
                    let written = Glibc.send(channel, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
                    if written < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    offset += written
                }
            }
        }
    }

    // MARK: - Standalone

    private func watchControlFile(_ path: String) {
        var lastIdentity: [Int] = []
        var warned: Set<ControlFileProblem.Kind> = []
        while true {
            var info = stat()
            let identity = stat(path, &info) == 0
                ? [Int(info.st_ino), Int(info.st_size), Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec)]
                : []
            if identity != lastIdentity {
                lastIdentity = identity
                var problem: ControlFileProblem?
                if !identity.isEmpty, let data = FileManager.default.contents(atPath: path) {
                    switch ControlFileState(contents: data) {
                    case .requestsExit:
                        state.withLock {
                            if stopState.trigger == nil { stopState.trigger = "control-file" }
                            pending.store(true, ordering: .sequentiallyConsistent)
                        }
                        return
                    case .clear: break
                    case .invalid(let reason): problem = reason
                    }
                }
                // Once per kind of problem, until the file is valid or missing again.
                if let problem {
                    if warned.insert(problem.kind).inserted {
                        FileHandle.standardError.write(Data("graceful: warning: control file \(path): \(problem); ignored\n".utf8))
                    }
                } else {
                    warned.removeAll()
                }
            }
            usleep(500_000)
        }
    }

    private func signalName(_ signal: Int32) -> String {
        signal == SIGINT ? "SIGINT" : signal == SIGTERM ? "SIGTERM" : "signal \(signal)"
    }
}
