import Foundation
import Glibc
import GracefulProtocol
import Testing

@testable import Graceful

@Suite struct ControlFileClearedTests {
    func cleared(_ text: String) -> String? {
        ControlFileState.cleared(Array(text.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test(arguments: [
        (#"{"big": 1e400, "GracefulExit": 1}"#, #"{"big": 1e400, "GracefulExit": 0}"#),
        (#"{"n": 123456789012345678901234567890, "GracefulExit": true}"#, #"{"n": 123456789012345678901234567890, "GracefulExit": 0}"#),
        ("{\n  \"z\": 1,\n  \"GracefulExit\" :\t1.0 ,\n  \"a\": [ ]\n}\n", "{\n  \"z\": 1,\n  \"GracefulExit\" :\t0 ,\n  \"a\": [ ]\n}\n"),
        (#"{"x": {"GracefulExit": 1}, "GracefulExit": 1, "s": "\"GracefulExit\": 1"}"#, #"{"x": {"GracefulExit": 1}, "GracefulExit": 0, "s": "\"GracefulExit\": 1"}"#),
        (#"{"GracefulExit": 0, "GracefulExit": 1e0}"#, #"{"GracefulExit": 0, "GracefulExit": 0}"#),
        (#"{"Graceful\u0045xit": 1}"#, #"{"Graceful\u0045xit": 0}"#),
    ])
    func onlyTheFlagsBytesChange(_ before: String, _ after: String) {
        #expect(cleared(before) == after)
    }

    @Test(arguments: [#"{"GracefulExit": 1, "GracefulExit": 0}"#, #"{"GracefulExit": 0}"#, #"{"x": {"GracefulExit": 1}}"#, "{", "[1]"])
    func nothingWhenNoExitIsRequested(_ text: String) {
        #expect(cleared(text) == nil)
    }
}

@Suite struct ControlFileResetTests {
    @Test func keepsModeAndEveryOtherByte() throws {
        let scratch = try TemporaryDirectory()
        try scratch.write("c.json", "{\"big\": 1e400,\n \"GracefulExit\": 1}\n")
        chmod(scratch.path + "/c.json", 0o640)
        guard case .reset = ControlFileReset.reset(scratch.path + "/c.json") else {
            Issue.record("not reset")
            return
        }
        #expect(scratch.read("c.json") == "{\"big\": 1e400,\n \"GracefulExit\": 0}\n")
        var info = stat()
        stat(scratch.path + "/c.json", &info)
        #expect(info.st_mode & 0o7777 == 0o640)
    }

    @Test func aSymbolicLinkStaysALinkAndItsTargetIsUpdated() throws {
        let scratch = try TemporaryDirectory()
        try scratch.write("real/flag.json", #"{"GracefulExit": 1, "keep": "me"}"#)
        symlink("real/flag.json", scratch.path + "/link.json")
        guard case .reset(let file) = ControlFileReset.reset(scratch.path + "/link.json") else {
            Issue.record("not reset")
            return
        }
        #expect(file.hasSuffix("/real/flag.json"))
        var info = stat()
        #expect(lstat(scratch.path + "/link.json", &info) == 0 && info.st_mode & S_IFMT == S_IFLNK)
        #expect(scratch.read("real/flag.json") == #"{"GracefulExit": 0, "keep": "me"}"#)
    }

    @Test func missingOrClearFilesAreLeftAlone() throws {
        let scratch = try TemporaryDirectory()
        guard case .notRequested = ControlFileReset.reset(scratch.path + "/none.json") else {
            Issue.record("a missing file was reset")
            return
        }
        try scratch.write("c.json", #"{"GracefulExit": 0}"#)
        guard case .notRequested = ControlFileReset.reset(scratch.path + "/c.json") else {
            Issue.record("a clear file was reset")
            return
        }
    }
}

@Suite struct ControlFileWatcherWarningTests {
    /// A writer that opens, appends one byte and closes, eighteen times: one warning, not seventeen.
    @Test func aFileWrittenByteByByteWarnsOncePerKind() throws {
        let scratch = try TemporaryDirectory()
        let path = scratch.path + "/graceful_exit.json"
        let watcher = ControlFileWatcher(path: path)
        var warnings: [String] = []
        var requested = false
        let text = Array(#"{"GracefulExit":1}"#.utf8)
        #expect(text.count == 18)
        for byte in text {
            let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            _ = withUnsafeBytes(of: byte) { Glibc.write(fd, $0.baseAddress, 1) }
            close(fd)
            requested = watcher.evaluate { warnings.append($0) }
        }
        #expect(requested)
        #expect(warnings.count == 1)
        // Valid again, then broken again: that is news, and is told.
        try scratch.write("graceful_exit.json", "{")
        _ = watcher.evaluate { warnings.append($0) }
        try scratch.write("graceful_exit.json", "[1]")
        _ = watcher.evaluate { warnings.append($0) }
        try scratch.write("graceful_exit.json", "[2]")
        _ = watcher.evaluate { warnings.append($0) }
        try scratch.write("graceful_exit.json", #"{"GracefulExit": "1"}"#)
        _ = watcher.evaluate { warnings.append($0) }
        #expect(warnings.count == 4)
    }
}

@Suite struct LineSplitterTests {
    @Test func aLineOfExactlyTheLimitIsWhole() {
        var splitter = LineSplitter(maximumLength: maximumMessageLength)
        let lines = splitter.append([UInt8](repeating: 0x61, count: maximumMessageLength) + [0x0A])
        #expect(lines.count == 1)
        #expect(lines.first?.line.count == maximumMessageLength && lines.first?.truncated == false)
    }

    @Test func oneByteMoreIsCut() {
        var splitter = LineSplitter(maximumLength: maximumMessageLength)
        var lines = splitter.append([UInt8](repeating: 0x61, count: maximumMessageLength))
        #expect(lines.isEmpty)
        lines = splitter.append([0x62, 0x0A])
        #expect(lines.map(\.truncated) == [true, false])
        #expect(lines.map(\.line.count) == [maximumMessageLength, 1])
    }
}
