import GracefulProtocol

/// One rank's process with what is read from it: channel messages, and output lines that go to its
/// log, its tail (for the failure report) and the console.
final class RankIO {
    enum ChannelLine {
        case message(RankMessage)
        /// Reported once per rank; later invalid lines are dropped silently.
        case invalid(String)
    }

    let process: RankProcess
    private let log: Int32
    private var channelSplitter = LineSplitter(maximumLength: maximumMessageLength)
    /// True while the rest of an overlong channel line is being skipped.
    private var discardingChannelLine = false
    private var reportedInvalid = false
    private var outputSplitters = [
        LineSplitter(maximumLength: Supervisor.maximumOutputLine), LineSplitter(maximumLength: Supervisor.maximumOutputLine),
    ]
    private(set) var tail: [String] = []

    init(process: RankProcess, log: Int32) {
        self.process = process
        self.log = log
    }

    /// The messages available on the channel now. At end of file the channel is closed.
    func readChannel(loop: EventLoop) -> [ChannelLine] {
        var lines: [ChannelLine] = []
        for (line, truncated) in read(process.channelFD, loop: loop, splitter: &channelSplitter, onEnd: { process.channelFD = -1 }) {
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
        return lines
    }

    private func invalid(_ problem: String, into lines: inout [ChannelLine]) {
        guard !reportedInvalid else { return }
        reportedInvalid = true
        lines.append(.invalid(problem))
    }

    /// The output lines available on `stream` (0: stdout, 1: stderr) now, already logged.
    func readOutput(stream: Int, loop: EventLoop?) -> [String] {
        var lines = read(process.outputFDs[stream], loop: loop, splitter: &outputSplitters[stream], onEnd: {
            process.outputFDs[stream] = -1
        }).map { record($0.line) }
        if process.outputFDs[stream] < 0, let rest = outputSplitters[stream].finish() { lines.append(record(rest)) }
        return lines
    }

    /// What is left on `stream` once the rank ended, without waiting for an end of file that a
    /// grandchild holding the pipe may never send; a partial last line is kept.
    func drainOutput(stream: Int) -> [String] {
        guard process.outputFDs[stream] >= 0 else { return [] }
        var lines = readOutput(stream: stream, loop: nil)
        if let rest = outputSplitters[stream].finish() { lines.append(record(rest)) }
        return lines
    }

    private func record(_ bytes: [UInt8]) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        writeAll(log, text + "\n")
        tail.append(text)
        if tail.count > Supervisor.tailLength { tail.removeFirst() }
        return text
    }

    /// Reads everything available from a non-blocking descriptor, cut into lines; at end of file it
    /// unregisters and closes the descriptor and calls `onEnd`.
    private func read(
        _ fd: Int32, loop: EventLoop?, splitter: inout LineSplitter, onEnd: () -> Void
    ) -> [(line: [UInt8], truncated: Bool)] {
        guard fd >= 0 else { return [] }
        var lines: [(line: [UInt8], truncated: Bool)] = []
        // On the stack and not zero-filled: this runs once per readable event of every rank.
        withUnsafeTemporaryAllocation(byteCount: Self.readSize, alignment: 1) { buffer in
            while true {
                guard let count = readAvailable(fd, into: buffer) else { return }
                if count == 0 {
                    loop?.unregister(fd)
                    closeDescriptor(fd)
                    onEnd()
                    return
                }
                lines += splitter.append(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            }
        }
        return lines
    }

    private static let readSize = 65536

    /// Closes every descriptor still open (an attempt is over).
    func close(loop: EventLoop) {
        for fd in [process.channelFD] + process.outputFDs where fd >= 0 {
            loop.unregister(fd)
            closeDescriptor(fd)
        }
        process.channelFD = -1
        process.outputFDs = [-1, -1]
    }
}
