import GracefulProtocol
import Testing

/// The control file means what MindSpore's OnRequestExit makes of it: `json.load(f)["GracefulExit"] == 1`.
@Suite struct ControlFileStateTests {
    func state(_ text: String) -> ControlFileState { ControlFileState(contents: Array(text.utf8)) }

    @Test(arguments: [
        #"{"GracefulExit": 1}"#, #"{"GracefulExit": 1.0}"#, #"{"GracefulExit": true}"#, #"{"GracefulExit": 1e0}"#,
        #"{"GracefulExit": 0.1e1}"#, "{\"GracefulExit\": 1}\n", #"{"other": [1, 2], "GracefulExit": 1}"#,
        #"{"GracefulExit": 0, "GracefulExit": 1}"#, #"  {"GracefulExit":1}  "#,
    ])
    func requestsExitLikePython(_ text: String) {
        #expect(state(text) == .requestsExit)
    }

    @Test(arguments: [
        #"{"GracefulExit": 0}"#, #"{"GracefulExit": false}"#, #"{"GracefulExit": 2}"#, #"{"GracefulExit": -1}"#,
        #"{"GracefulExit": 0.999}"#, #"{}"#, #"{"gracefulexit": 1}"#, #"{"GracefulExit": 1, "GracefulExit": 0}"#,
    ])
    func clearValues(_ text: String) {
        #expect(state(text) == .clear)
    }

    /// Bad content of many kinds: never a request, always a reason for one warning.
    @Test(arguments: [
        "", "   ", "{", #"{"GracefulExit": 1"#, #"{"GracefulExit": }"#, "GracefulExit: 1", "1", "[1]",
        #"["GracefulExit", 1]"#, "null", #""{\"GracefulExit\": 1}""#, #"{"GracefulExit": "1"}"#,
        #"{"GracefulExit": null}"#, #"{"GracefulExit": [1]}"#, #"{"GracefulExit": {"value": 1}}"#,
        #"{"GracefulExit": NaN}"#, #"{"GracefulExit": 01}"#, #"{"GracefulExit": 1,}"#, "\u{FEFF}{\"GracefulExit\": 1}",
        #"{"GracefulExit": 1} {"GracefulExit": 1}"#, #"{'GracefulExit': 1}"#,
        String(repeating: "[", count: 10_000),
    ])
    func invalidContentNeverRequests(_ text: String) {
        guard case .invalid(let reason) = state(text) else {
            Issue.record("\(text.prefix(40).debugDescription) was not reported as invalid: \(state(text))")
            return
        }
        #expect(!"\(reason)".isEmpty && !"\(reason)".contains("\n"))
    }

    @Test func invalidUTF8IsInvalid() {
        let bytes: [UInt8] = Array(#"{"GracefulExit": 1, "x": ""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8)
        #expect(ControlFileState(contents: bytes) != .requestsExit)
    }
}

@Suite struct JSONParserTests {
    @Test func parsesNestedValuesAndEscapes() throws {
        let value = try JSONParser.parse(Array(#"{"a": [1, -2.5e1, true, null, "x\n\u00e9\ud83d\ude00"], "b": {}}"#.utf8))
        #expect(value["a"] == .array([.int(1), .double(-25), .bool(true), .null, .string("x\né😀")]))
        #expect(value["b"] == .object([:]))
    }

    @Test func loneSurrogatesAreKeptAsCodeUnits() throws {
        let value = try JSONParser.parse(Array(#"{"p": "a\udcff\ud83d\ude00", "\udc80": 1}"#.utf8))
        #expect(value["p"] == .illFormedString([0x61, 0xDCFF, 0xD83D, 0xDE00]))
        #expect(value["p"]?.stringValue == nil)
        #expect(value["\u{FFFD}"] == .int(1))
    }

    @Test func onlyPlainIntegersAreIntegers() throws {
        #expect(try JSONParser.parse(Array("5".utf8)).intValue == 5)
        #expect(try JSONParser.parse(Array("5.0".utf8)).intValue == nil)
        #expect(try JSONParser.parse(Array("5e0".utf8)).intValue == nil)
    }
}

@Suite struct MessageTests {
    @Test func rankMessagesRoundTrip() throws {
        let messages: [RankMessage] = [
            .hello(protocolVersion: 1, pid: 42), .position(id: 3, step: nil), .position(id: 3, step: 17),
            .checkpointed(step: 9, path: "ckpt/rank0/step_9.json"), .checkpointed(step: 9, path: nil),
        ]
        for message in messages {
            let line = message.line
            #expect(line.hasSuffix("\n"))
            #expect(try RankMessage(line: Array(line.dropLast().utf8)) == message)
        }
    }

    @Test func coordinatorMessagesRoundTrip() throws {
        let messages: [CoordinatorMessage] = [
            .stop(id: 1, trigger: "SIGINT"), .stopAt(id: 1, step: 42), .stopAt(id: 2, step: nil), .committed(step: 42),
        ]
        for message in messages {
            #expect(try CoordinatorMessage(line: Array(message.line.dropLast().utf8)) == message)
        }
    }

    @Test(arguments: [
        ("garbage", MessageError.notJSON("unexpected character at byte 0")),
        ("[1]", .notAnObject),
        (#"{"step": 1}"#, .missingType),
        (#"{"type": "explode"}"#, .unknownType("explode")),
        (#"{"type": "checkpointed", "step": "9"}"#, .badField(type: "checkpointed", field: "step")),
        (#"{"type": "checkpointed", "step": 9, "path": 3}"#, .badField(type: "checkpointed", field: "path")),
        (#"{"type": "position", "id": 1}"#, .badField(type: "position", field: "step")),
    ])
    func badLinesAreRejected(_ line: String, _ error: MessageError) {
        #expect(throws: error) { try RankMessage(line: Array(line.utf8)) }
    }
}
