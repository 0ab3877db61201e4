import GracefulProtocol
import Testing

@Suite struct CheckpointPathTests {
    func decode(_ line: String) throws(MessageError) -> RankMessage { try RankMessage(line: Array(line.utf8)) }

    @Test func bytesThatAreNotUTF8RoundTripAsLoneSurrogates() throws {
        let path = CheckpointPath(bytes: Array("ck/".utf8) + [0xFF, 0xE2, 0x82] + Array("é.bin".utf8))!
        let line = RankMessage.checkpointed(step: 3, path: path).line
        #expect(line.contains(#"ck/\udcff\udce2\udc82é.bin"#))
        #expect(try decode(String(line.dropLast())) == .checkpointed(step: 3, path: path))
    }

    /// What `json.dumps(os.fsdecode(b"ck/\xff\xc3\xa9"))` writes.
    @Test func readsWhatPythonWrites() throws {
        let message = try decode(#"{"type": "checkpointed", "step": 7, "path": "ck/\udcff\u00e9\ud83d\ude00"}"#)
        #expect(message == .checkpointed(step: 7, path: CheckpointPath(bytes: Array("ck/".utf8) + [0xFF] + Array("é😀".utf8))))
    }

    @Test(arguments: [
        #"{"type": "checkpointed", "step": 1, "path": "/etc/passwd\u0000.json"}"#,
        #"{"type": "checkpointed", "step": 1, "path": ""}"#,
        #"{"type": "checkpointed", "step": 1, "path": "a\ud800"}"#,
        #"{"type": "checkpointed", "step": 1, "path": "a\udc41"}"#,
        #"{"type": "checkpointed", "step": 1, "path": ["a"]}"#,
    ])
    func nulEmptyAndOtherSurrogatesAreInvalid(_ line: String) {
        #expect(throws: MessageError.badField(type: "checkpointed", field: "path")) { try decode(line) }
    }

    @Test func neverEmptyNeverNUL() {
        #expect(CheckpointPath(bytes: []) == nil)
        #expect(CheckpointPath(bytes: [0x61, 0, 0x62]) == nil)
        let empty = ""
        #expect(CheckpointPath(empty) == nil)
    }

    @Test func descriptionShowsUndecodableBytes() {
        #expect(CheckpointPath(bytes: Array("a".utf8) + [0xFF] + Array("é\n\\".utf8))!.description == #"a\xffé\x0a\x5c"#)
    }

    @Test func cStringIsTheBytes() {
        let path = CheckpointPath(bytes: [0x61, 0xFF])!
        #expect(path.withCString { Array(UnsafeRawBufferPointer(start: $0, count: 3)) } == [0x61, 0xFF, 0])
    }
}

@Suite struct IntegerFieldTests {
    @Test(arguments: [
        (#"{"type": "position", "id": 1, "step": 9007199254740991}"#, RankMessage.position(id: 1, step: 9_007_199_254_740_991)),
        (#"{"type": "position", "id": 9007199254740991, "step": 0}"#, .position(id: 9_007_199_254_740_991, step: 0)),
        (#"{"type": "checkpointed", "step": 0, "path": null}"#, .checkpointed(step: 0, path: nil)),
    ])
    func boundsAreAccepted(_ line: String, _ message: RankMessage) throws {
        #expect(try RankMessage(line: Array(line.utf8)) == message)
    }

    @Test(arguments: [
        (#"{"type": "position", "id": 1, "step": 9007199254740992}"#, "step"),
        (#"{"type": "position", "id": 1, "step": -1}"#, "step"),
        (#"{"type": "position", "id": 1, "step": 5.0}"#, "step"),
        (#"{"type": "position", "id": 1, "step": 5e0}"#, "step"),
        (#"{"type": "position", "id": 1, "step": 99999999999999999999999}"#, "step"),
        (#"{"type": "position", "id": 0, "step": 1}"#, "id"),
        (#"{"type": "position", "id": 9007199254740992, "step": 1}"#, "id"),
        (#"{"type": "checkpointed", "step": -3, "path": null}"#, "step"),
        (#"{"type": "hello", "protocol": 0, "pid": 5}"#, "protocol"),
        (#"{"type": "hello", "protocol": 1, "pid": -5}"#, "pid"),
        (#"{"type": "hello", "protocol": "1", "pid": 5}"#, "protocol"),
    ])
    func outOfRangeOrNotIntegerIsInvalid(_ line: String, _ field: String) throws {
        let type = try #require(JSONParser.parse(Array(line.utf8))["type"]?.stringValue)
        #expect(throws: MessageError.badField(type: type, field: field)) { try RankMessage(line: Array(line.utf8)) }
    }

    @Test func coordinatorMessagesAreCheckedToo() {
        #expect(throws: MessageError.badField(type: "stop_at", field: "step")) {
            try CoordinatorMessage(line: Array(#"{"type": "stop_at", "id": 1, "step": -1}"#.utf8))
        }
        #expect(throws: MessageError.badField(type: "stop", field: "id")) {
            try CoordinatorMessage(line: Array(#"{"type": "stop", "id": 0, "trigger": "SIGINT"}"#.utf8))
        }
    }
}
