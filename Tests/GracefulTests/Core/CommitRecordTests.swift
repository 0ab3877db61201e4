import Foundation
import Glibc
import GracefulProtocol
import Testing

@testable import Graceful

@Suite struct CommitRecordTests {
    @Test func roundTripsThroughItsJSON() throws {
        let record = CommitRecord(
            runID: "abc", step: 120, paths: ["c/rank0/step_120.json", nil, "c/rank2/\"odd\".json"],
            trigger: "SIGTERM", time: "2026-11-23T10:00:00Z")
        #expect(try CommitRecord(contents: Array(record.json.utf8)) == record)
    }

    @Test func roundTripsNamesThatAreNotUTF8Exactly() throws {
        let odd = CheckpointPath(bytes: Array("c/".utf8) + [0xFF, 0xC3] + Array("é".utf8))!
        let record = CommitRecord(runID: "r", step: 9_007_199_254_740_991, paths: [odd, "plain"], trigger: "SIGINT", time: "")
        #expect(record.json.contains(#""c/\udcff\udcc3é""#))
        #expect(try CommitRecord(contents: Array(record.json.utf8)).paths == [odd, "plain"])
    }

    @Test func loadTellsNothingFromADanglingLink() throws {
        let directory = try TemporaryDirectory()
        #expect(try CommitRecord.load(from: directory.file("none.json")) == nil)
        symlink(directory.file("gone.json"), directory.file(CommitRecord.fileName))
        #expect {
            try CommitRecord.load(from: directory.file(CommitRecord.fileName))
        } throws: { error in
            guard case CommitRecord.LoadError.danglingSymbolicLink(let target) = error else { return false }
            return target.hasSuffix("gone.json")
        }
        let record = CommitRecord(runID: "r", step: 4, paths: ["p"], trigger: "SIGINT", time: "")
        try directory.write("gone.json", record.json)
        #expect(try CommitRecord.load(from: directory.file(CommitRecord.fileName)) == record)
    }

    @Test(arguments: [
        "", "{", "[]", #"{"version": 2, "step": 1, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "step": 1, "world_size": 2, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "step": 1, "world_size": 1, "ranks": [{"rank": 5, "path": null}]}"#,
        #"{"version": 1, "step": 1, "world_size": 1, "ranks": [{"rank": 0, "path": 7}]}"#,
        #"{"version": 1, "step": 1, "world_size": 1, "ranks": [{"rank": 0, "path": "a\u0000b"}]}"#,
        #"{"version": 1, "step": -1, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "step": 9007199254740992, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "step": 1.0, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
    ])
    func refusesMalformedRecords(_ text: String) {
        #expect(throws: CommitRecord.DecodingError.self) { try CommitRecord(contents: Array(text.utf8)) }
    }
}

@Suite struct RankEnvironmentTests {
    @Test func carriesTorchrunAndMsrunVariablesAndTheResumePoint() {
        var environment = RankEnvironment(
            runID: "r1", runDirectory: "/tmp/run", worldSize: 4, masterAddress: "10.0.0.1", masterPort: 29500,
            resume: CommitRecord(
                runID: "r0", step: 42, paths: ["p0", CheckpointPath(bytes: [0x70, 0xFF]), nil, "p3"], trigger: "SIGINT", time: ""))
        environment.restartCount = 0
        let inherited: [RankEnvironment.Variable] = [
            ("PATH", "/bin"), ("RANK", "99"), ("GRACEFUL_RESUME_PATH", "stale"), ("OMP_NUM_THREADS", "8"),
            ("GRACEFUL_DOORBELL_FD", "9"),
        ].map { ($0.0, Array($0.1.utf8)) }
        func text(_ variables: [RankEnvironment.Variable]) -> [String: String] {
            Dictionary(uniqueKeysWithValues: variables.map { ($0.name, String(decoding: $0.value, as: UTF8.self)) })
        }
        let raw = Dictionary(uniqueKeysWithValues: environment.variables(rank: 1, inherited: inherited).map { ($0.name, $0.value) })
        #expect(raw["GRACEFUL_RESUME_PATH"] == [0x70, 0xFF])
        #expect(raw["GRACEFUL_DOORBELL_FD"] == nil)
        let variables = text(environment.variables(rank: 1, inherited: inherited))
        #expect(variables["PATH"] == "/bin")
        #expect(variables["RANK"] == "1")
        #expect(variables["LOCAL_RANK"] == "1")
        #expect(variables["WORLD_SIZE"] == "4")
        #expect(variables["LOCAL_WORLD_SIZE"] == "4")
        #expect(variables["GROUP_RANK"] == "0")
        #expect(variables["MASTER_ADDR"] == "10.0.0.1")
        #expect(variables["MASTER_PORT"] == "29500")
        #expect(variables["TORCHELASTIC_RUN_ID"] == "r1")
        #expect(variables["TORCHELASTIC_RESTART_COUNT"] == "0")
        #expect(variables["TORCHELASTIC_MAX_RESTARTS"] == "0")
        #expect(variables["RANK_ID"] == "1")
        #expect(variables["RANK_SIZE"] == "4")
        #expect(variables["DEVICE_ID"] == "1")
        #expect(variables["MS_WORKER_NUM"] == "4")
        #expect(variables["MS_NODE_ID"] == "1")
        #expect(variables["MS_ROLE"] == "MS_WORKER")
        #expect(variables["GRACEFUL_CHANNEL_FD"] == "3")
        #expect(variables["GRACEFUL_RESUME_STEP"] == "42")
        #expect(variables["OMP_NUM_THREADS"] == "8")
        #expect(variables["PYTHONUNBUFFERED"] == "1")
        let rank2 = text(environment.variables(rank: 2, inherited: inherited))
        #expect(rank2["GRACEFUL_RESUME_PATH"] == nil)
        environment.resume = nil
        environment.hasDoorbell = true
        let fresh = text(environment.variables(rank: 0, inherited: inherited))
        #expect(fresh["GRACEFUL_RESUME_STEP"] == nil && fresh["GRACEFUL_RESUME_PATH"] == nil)
        #expect(fresh["GRACEFUL_DOORBELL_FD"] == "4")
    }
}
