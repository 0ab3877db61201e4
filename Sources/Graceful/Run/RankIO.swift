import GracefulProtocol

/// One rank's process, its channel messages, and the relay of its output.
final class RankIO {
    enum ChannelLine {
        case message(RankMessage)
        /// Reported once per rank; later invalid lines are dropped silently.
        case invalid(String)
    }

    /// At most this much is read from a channel in one go once its rank ended (a grandchild that
    /// inherited a plain rank's channel could otherwise keep the reading going forever).
    static let maximumDrain = 1 << 20

    let process: RankProcess
    let relay: OutputRelay
    private var channelSplitter = LineSplitter(maximumLength: maximumMessageLength)
    /// True while the rest of an overlong channel line is being skipped.
    private var discardingChannelLine = false
    private var reportedInvalid = false
    /// Whether the rank wrote anything yet on stdout or stderr.
    private var wroteOutput = false

    /// `label` prefixes its console lines; `rankN` by default. `showsOnConsole` false: the output
    /// goes to the log (and the failure tail) only.
    init(process: RankProcess, log: Int32, label: String? = nil, showsOnConsole: Bool = true) {
        self.process = process
        relay = OutputRelay(label: label ?? "rank\(process.rank)", log: log, showsOnConsole: showsOnConsole)
    }

    /// The messages in one bounded read of the channel. At end of file the channel is closed.
    func readChannel(loop: EventLoop) -> [ChannelLine] {
        guard process.channelFD >= 0 else { return [] }
        var lines: [ChannelLine] = []
        withUnsafeTemporaryAllocation(byteCount: OutputRelay.readSize, alignment: 1) { buffer in
            guard let count = readAvailable(process.channelFD, into: buffer) else { return }
            if count == 0 {
                loop.unregister(process.channelFD)
                closeDescriptor(process.channelFD)
                process.channelFD = -1
                return
            }
            for (line, truncated) in channelSplitter.append(UnsafeRawBufferPointer(rebasing: buffer[0..<count])) {
                if truncated || discardingChannelLine {
                    if !discardingChannelLine { invalid("a line longer than \(maximumMessageLength) bytes", into: &lines) }
                    discardingChannelLine = truncated
                    continue
                }
                do {
                    lines.append(.message(try RankMessage(line: line)))
                } catch {
                    invalid("\(error)", into: &lines)
                }
            }
        }
        return lines
    }

    /// Everything the rank wrote on its channel before it ended, up to `maximumDrain` bytes.
    func drainChannel(loop: EventLoop) -> [ChannelLine] {
        var lines: [ChannelLine] = []
        for _ in 0..<(Self.maximumDrain / OutputRelay.readSize) where process.channelFD >= 0 {
            let batch = readChannel(loop: loop)
            if batch.isEmpty { break }
            lines += batch
        }
        return lines
    }

    private func invalid(_ problem: String, into lines: inout [ChannelLine]) {
        guard !reportedInvalid else { return }
        reportedInvalid = true
        lines.append(.invalid(problem))
    }

    /// One bounded read of output stream `stream` (0: stdout, 1: stderr), relayed; at end of file the
    /// descriptor is closed and the last partial line relayed. True when this read brought the rank's
    /// first output.
    @discardableResult
    func readOutput(stream: Int, loop: EventLoop, console: Console) -> Bool {
        let fd = process.outputFDs[stream]
        guard fd >= 0 else { return false }
        switch relay.relay(fd, stream: stream, console: console) {
        case .read:
            defer { wroteOutput = true }
            return !wroteOutput
        case .empty:
            return false
        case .endOfFile:
            loop.unregister(fd)
            closeDescriptor(fd)
            process.outputFDs[stream] = -1
            relay.finish(stream: stream, console: console)
            return false
        }
    }

    /// What is left in the output pipes once every process of the job is gone, bounded, without
    /// waiting for an end of file; a partial last line is kept.
    func drainOutput(loop: EventLoop, console: Console) {
        for stream in 0..<2 {
            for _ in 0..<(Self.maximumDrain / OutputRelay.readSize) {
                let fd = process.outputFDs[stream]
                guard fd >= 0, relay.relay(fd, stream: stream, console: console) == .read else { break }
            }
            relay.finish(stream: stream, console: console)
        }
    }

    /// Closes every descriptor still open (an attempt is over).
    func close(loop: EventLoop) {
        for fd in [process.channelFD] + process.outputFDs where fd >= 0 {
            loop.unregister(fd)
            closeDescriptor(fd)
        }
        process.channelFD = -1
        process.outputFDs = [-1, -1]
        process.closePidfd()
    }
}
