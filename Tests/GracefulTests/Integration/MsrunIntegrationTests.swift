import Foundation
import Glibc
import Testing

/// `graceful msrun` end to end with a stand-in for MindSpore (`Tests/fixtures/msrun_fake.py`): a
/// scheduler that waits for the workers' files, workers that use graceful's Python client.
@Suite(.serialized) struct MsrunIntegrationTests {
    static let fake = Launched.packageRoot + "/Tests/fixtures/msrun_fake.py"

    func msrun(_ options: [String], in directory: TemporaryDirectory, environment: [String: String] = [:]) throws -> Launched {
        try Launched([Launched.graceful, "msrun", "--worker_num=2", "--local_worker_num", "2"] + options + [Self.fake],
                     in: directory.path, environment: environment)
    }

    func environment(in log: String?) throws -> [String: String?] {
        let line = try #require(log?.split(separator: "\n").first { $0.hasPrefix("ENV ") })
        let object = try JSONSerialization.jsonObject(with: Data(line.dropFirst(4).utf8)) as? [String: Any]
        return try #require(object).mapValues { $0 as? String }
    }

    @Test func aSigtermStopCommitsWhileTheSchedulerExitsByItself() throws {
        let directory = try TemporaryDirectory()
        let job = try msrun(["--log_dir=logs", "--cluster_time_out", "33"], in: directory)
        try job.waitFor("worker 0 training")
        try job.waitFor("worker 1 training")
        job.signal(SIGTERM)
        #expect(try job.waitForExit() == 0, "\(job.output)")
        #expect(job.output.contains("committed step"))
        #expect(job.output.contains("[scheduler]: scheduler: every worker is done"))
        #expect(!FileManager.default.fileExists(atPath: directory.file("scheduler_sigterm")))
        #expect(directory.read("logs/last_checkpoint.json")?.contains("\"step\"") == true)

        let scheduler = try environment(in: directory.read("logs/scheduler.log"))
        #expect(scheduler["MS_ROLE"] == "MS_SCHED")
        #expect(scheduler["MS_WORKER_NUM"] == "2")
        #expect(scheduler["MS_SCHED_HOST"] == "127.0.0.1")
        #expect(scheduler["MS_TOPO_TIMEOUT"] == "33")
        #expect(scheduler["RANK_ID"] == "0")
        #expect(scheduler["RANK_SIZE"] == "2")
        #expect(scheduler["MS_NODE_ID"] == .some(nil))
        #expect(scheduler["GRACEFUL_CHANNEL_FD"] == .some(nil))
        let port = try #require(scheduler["MS_SCHED_PORT"] ?? nil)
        for worker in 0..<2 {
            let variables = try environment(in: directory.read("logs/worker_\(worker).log"))
            #expect(variables["MS_ROLE"] == "MS_WORKER")
            #expect(variables["MS_NODE_ID"] == "\(worker)")
            #expect(variables["RANK_ID"] == "\(worker)")
            #expect(variables["DEVICE_ID"] == "\(worker)")
            #expect(variables["MS_WORKER_NUM"] == "2")
            #expect(variables["MS_SCHED_PORT"] == port)
            #expect(variables["MS_TOPO_TIMEOUT"] == "33")
            #expect(variables["GRACEFUL_CHANNEL_FD"] == "3")
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("logs/rank_0.log")))
    }

    /// `--tail_worker_log=1`: only worker 1 reaches the console; worker 0's log still has everything.
    @Test func tailWorkerLogShowsOnlyTheListedWorkers() throws {
        let directory = try TemporaryDirectory()
        let job = try msrun(["--tail_worker_log=1", "--worker_log_name=w_{ip}"], in: directory, environment: ["FAKE_STEPS": "5"])
        #expect(try job.waitForExit() == 0, "\(job.output)")
        #expect(job.output.contains("[rank1]: ENV "), "\(job.output)")
        #expect(!job.output.contains("[rank0]:"), "\(job.output)")
        #expect(job.output.contains("[scheduler]: "), "\(job.output)")
        #expect(directory.read("w_127.0.0.1_0.log")?.contains("ENV ") == true)
    }

    @Test func aSchedulerThatFailsFailsTheJobNamingItsLog() throws {
        let directory = try TemporaryDirectory()
        let job = try msrun(["--worker_log_name=node"], in: directory, environment: ["FAKE_SCHEDULER": "fail", "FAKE_STEPS": "20"])
        #expect(try job.waitForExit() == 1, "\(job.output)")
        #expect(job.output.contains("exit 1: the scheduler failed (exit code 3); see scheduler.log"))
        #expect(directory.read("scheduler.log")?.contains("failing on purpose") == true)
        #expect(directory.read("node_1.log")?.contains("ENV ") == true)
    }

    @Test func aSchedulerThatNeverExitsIsKilledAfterTheDeadline() throws {
        let directory = try TemporaryDirectory()
        let job = try msrun(["--scheduler-timeout", "1"], in: directory, environment: ["FAKE_SCHEDULER": "hang", "FAKE_STEPS": "20"])
        try job.waitFor("[scheduler]: scheduler: every worker is done")
        let start = Date()
        #expect(try job.waitForExit() == 0, "\(job.output)")
        #expect(Date().timeIntervalSince(start) > 0.5)
        #expect(job.output.contains("the scheduler did not exit within 1s after the last rank ended: SIGTERM"))
        #expect(FileManager.default.fileExists(atPath: directory.file("scheduler_sigterm")))
    }
}
