import Testing

@testable import Graceful

@Suite struct CommitRecordTests {
    @Test func roundTripsThroughItsJSON() throws {
        let record = CommitRecord(
            runID: "abc", step: 120, paths: ["c/rank0/step_120.json", nil, "c/rank2/\"odd\".json"],
            trigger: "SIGTERM", time: "2026-11-23T10:00:00Z")
        #expect(try CommitRecord(contents: Array(record.json.utf8)) == record)
    }

    @Test(arguments: [
        "", "{", "[]", #"{"version": 2, "step": 1, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "world_size": 1, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "step": 1, "world_size": 2, "ranks": [{"rank": 0, "path": null}]}"#,
        #"{"version": 1, "step": 1, "world_size": 1, "ranks": [{"rank": 5, "path": null}]}"#,
        #"{"version": 1, "step": 1, "world_size": 1, "ranks": [{"rank": 0, "path": 7}]}"#,
    ])
    func refusesMalformedRecords(_ text: String) {
        #expect(throws: CommitRecord.DecodingError.self) { try CommitRecord(contents: Array(text.utf8)) }
    }
}

@Suite struct RankEnvironmentTests {
    @Test func carriesTorchrunAndMsrunVariablesAndTheResumePoint() {
        var environment = RankEnvironment(
            runID: "r1", runDirectory: "/tmp/run", worldSize: 4, masterAddress: "10.0.0.1", masterPort: 29500,
            resume: CommitRecord(runID: "r0", step: 42, paths: ["p0", "p1", nil, "p3"], trigger: "SIGINT", time: ""))
        environment.restartCount = 0
        let inherited = [("PATH", "/bin"), ("RANK", "99"), ("GRACEFUL_RESUME_PATH", "stale"), ("OMP_NUM_THREADS", "8")]
        let variables = Dictionary(uniqueKeysWithValues: environment.variables(rank: 1, inherited: inherited))
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
        #expect(variables["GRACEFUL_RESUME_PATH"] == "p1")
        #expect(variables["OMP_NUM_THREADS"] == "8")
        #expect(variables["PYTHONUNBUFFERED"] == "1")
        let rank2 = Dictionary(uniqueKeysWithValues: environment.variables(rank: 2, inherited: inherited))
        #expect(rank2["GRACEFUL_RESUME_PATH"] == nil)
        environment.resume = nil
        let fresh = Dictionary(uniqueKeysWithValues: environment.variables(rank: 0, inherited: inherited))
        #expect(fresh["GRACEFUL_RESUME_STEP"] == nil && fresh["GRACEFUL_RESUME_PATH"] == nil)
    }
}
