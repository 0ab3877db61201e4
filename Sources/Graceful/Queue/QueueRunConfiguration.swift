/// What `graceful queue run` was asked to do.
public struct QueueRunConfiguration: Equatable, Sendable {
    public var directory: String
    /// The queue to create (or to find already there); nil to join the queue the directory holds.
    public var definition: QueueDefinition?
    /// The command given to join a queue: it must be the queue's.
    public var command: [String] = []
    public var workers = 1
    /// Ranks of each task's `graceful run` (`-n`).
    public var ranks = 1
    public var policy = QueuePolicy()
    /// Seconds an attempt may run before it is stopped (and counted failed); nil: no limit.
    public var timeout: Double?
    /// Bytes of resident memory an attempt's processes may use together; nil: no limit.
    public var maxMemory: UInt64?
    /// This host's name in claims; must differ between hosts sharing the queue.
    public var hostID: String
    public var gpus: GPUSelection = .none
    /// Passed to each attempt's `graceful run`.
    public var grace: Double = 30
    public var killAfter: Double = 10
    /// The file whose `{"GracefulExit": 1}` stops the whole sweep.
    public var controlFile = "graceful_exit.json"

    public enum GPUSelection: Equatable, Sendable {
        case none
        case auto
        case list([String])
    }

    public init(directory: String, hostID: String) {
        self.directory = directory
        self.hostID = hostID
    }
}
