import Foundation
@testable import Graceful
import Glibc
import Testing

/// `graceful run` on three nodes under real Slurm (.ci/slurm/cluster.sh: virtual nodes n1..n3 on
/// this machine, KillWait 5 s), launched the way the README says, `srun --ntasks-per-node=1 graceful
/// run -n 2 -- python3 examples/python/train.py`, with nothing but the secret given: the node count,
/// each node's rank and the leader come from Slurm. Each way Slurm or a user stops such a job must
/// end in one commit of all 6 ranks at one step.
///
/// The batch job's signal is timer-driven (30 to 60 s), so it runs beside the other tests, which
/// run one after the other: at most two such jobs at once on this machine's 2 cores.
/// Skipped, with the reason, where the cluster cannot come up.
@Suite(.enabled(if: SlurmCluster.shared != nil, "\(SlurmCluster.unavailableReason)"))
struct SlurmMultiNodeTests {
    static let nodes = 3
    static let ranksPerNode = 2
    static var worldSize: Int { nodes * ranksPerNode }
    /// The test cluster's KillWait: Slurm's SIGKILL comes this long after its SIGTERM.
    static let killWait = 5.0
    static let training = ["python3", "examples/python/train.py", "--steps", "100000"]

    /// A fresh directory holding a copy of examples/, where a job runs (its run directories, rank
    /// checkpoints and control file all land here, shared by the three virtual nodes).
    static func jobDirectory() throws -> TemporaryDirectory {
        let directory = try TemporaryDirectory()
        try FileManager.default.copyItem(atPath: Launched.packageRoot + "/examples", toPath: directory.file("examples"))
        return directory
    }

    /// The job's secret, fresh for each job: 32 random bytes in base64.
    static func token() -> String {
        Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    }

    /// The README's launch line on all three nodes, started without waiting.
    static func launch(in directory: TemporaryDirectory, name: String) throws -> Launched {
        let cluster = try #require(SlurmCluster.shared)
        let line = ["srun", "-N", "\(nodes)", "--ntasks-per-node=1", "--job-name=\(name)", Launched.graceful, "run", "-n", "\(ranksPerNode)", "--"] + training
        return try cluster.start(line, in: directory.path, environment: ["GRACEFUL_JOB_TOKEN": token()])
    }

    /// Waits until every rank of every node trains (each resumed from `step`, when given) and the
    /// job got 100 to 200 steps further.
    static func waitUntilTraining(_ job: Launched, resumedFrom step: Int? = nil) throws {
        if let step {
            try job.waitFor("(step \(step))", count: worldSize)
        } else {
            try job.waitFor("starting at step 1", count: worldSize)
        }
        try job.waitFor("[rank0]: step \(((step ?? 0) / 100 + 2) * 100): loss")
    }

    /// What a stop of the whole job must leave: the leader's record, naming one checkpoint of one
    /// step for each of the 6 ranks, each of which exists; every follower's copy of that record;
    /// each node reporting that one commit; one stop request, never escalated. Returns the step.
    @discardableResult
    static func expectOneCommit(in directory: TemporaryDirectory, output: String, trigger: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
        let leaderRecord = "graceful_run/train/node0/" + CommitRecord.fileName
        let text = try #require(directory.read(leaderRecord), "no \(leaderRecord); output:\n\(output)", sourceLocation: sourceLocation)
        let record = try #require(try CommitRecord.load(from: directory.file(leaderRecord)), sourceLocation: sourceLocation)
        #expect(record.worldSize == worldSize, "\(text)", sourceLocation: sourceLocation)
        #expect(record.trigger == trigger, "\(text)", sourceLocation: sourceLocation)
        #expect(record.completed == nil, sourceLocation: sourceLocation)
        for rank in 0..<worldSize {
            #expect(record.paths[rank]?.description == "checkpoints/train/rank\(rank)/step_\(record.step).json", "\(text)", sourceLocation: sourceLocation)
            let path = try #require(record.resumePath(rank: rank), sourceLocation: sourceLocation).description
            #expect(FileManager.default.fileExists(atPath: path), "rank \(rank)'s checkpoint \(path) is missing", sourceLocation: sourceLocation)
        }
        for node in 1..<nodes {
            let copy = "graceful_run/train/node\(node)/" + CommitRecord.fileName
            #expect(directory.read(copy) == text, "node \(node)'s copy differs from the leader's record", sourceLocation: sourceLocation)
        }
        for node in 0..<nodes {
            #expect(output.contains("graceful[node \(node)]: committed step \(record.step)\n"), "node \(node) reports no commit of step \(record.step):\n\(output)", sourceLocation: sourceLocation)
        }
        #expect(output.components(separatedBy: "]: committed step ").count - 1 == nodes, "\(output)", sourceLocation: sourceLocation)
        // One request, though every node saw the trigger: one round, never escalated.
        #expect(output.components(separatedBy: "leader: stop requested (\(trigger))").count - 1 == 1, "\(output)", sourceLocation: sourceLocation)
        #expect(!output.contains("round 2") && !output.contains("escalating"), "\(output)", sourceLocation: sourceLocation)
        return record.step
    }

    /// Every node's coordinator saw `trigger` itself: what Slurm delivered to each task.
    static func expectEveryNodeSaw(_ trigger: String, in output: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for node in 0..<nodes {
            #expect(output.contains("graceful[node \(node)]: stop requested (\(trigger))"), "node \(node) did not see \(trigger):\n\(output)", sourceLocation: sourceLocation)
        }
    }

    static func expectEveryNodeExited0(_ output: String, sourceLocation: SourceLocation = #_sourceLocation) {
        for node in 0..<nodes {
            #expect(output.contains("graceful[node \(node)]: exit 0\n"), "node \(node) did not exit 0:\n\(output)", sourceLocation: sourceLocation)
        }
    }

    static func expectNoProcessLeft(in directory: TemporaryDirectory, sourceLocation: SourceLocation = #_sourceLocation) {
        let left = waitUntilNoProcess(workingIn: directory.path, timeout: 10)
        #expect(left.isEmpty, "processes left in \(directory.path): \(left)", sourceLocation: sourceLocation)
    }

    /// `graceful_exit.json` in the job's directory, the one control file all three nodes watch.
    static func requestStop(in directory: TemporaryDirectory) throws {
        try directory.replace("graceful_exit.json", with: "{\"GracefulExit\": 1}\n")
    }

    /// The control file's flag, as a stop left it.
    static func controlFlag(in directory: TemporaryDirectory) throws -> Int? {
        let text = try #require(directory.read("graceful_exit.json"))
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        return object?["GracefulExit"] as? Int
    }

    // MARK: - A batch job's time-limit signal (timer-driven: runs beside the others)

    /// examples/slurm/train.sbatch, submitted with a 2-minute limit and `--signal=USR1@60`: Slurm
    /// sends SIGUSR1 (after SIGCONT) to every task of the step between 60 and 90 s before the end
    /// (its timer checks every 30 s and never sends late), i.e. 30 to 60 s after the start. Every
    /// node's graceful gets it; one commit of the 6 ranks follows, the script ends, and the job
    /// COMPLETES long before its time limit. The script makes the job's secret itself.
    @Test(.timeLimit(.minutes(4)))
    func batchJobSignalBeforeTheTimeLimitCommitsEveryRank() throws {
        let cluster = try #require(SlurmCluster.shared)
        let directory = try Self.jobDirectory()
        let graceful = URL(fileURLWithPath: Launched.graceful).deletingLastPathComponent().path
        let path = graceful + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let job = try cluster.sbatch(
            ["-N", "\(Self.nodes)", "--time=2", "--signal=USR1@60", "--output=slurm-%j.out", "--job-name=graceful-sbatch",
             "examples/slurm/train.sbatch"] + Self.training,
            in: directory.path, environment: ["PATH": path, "RANKS_PER_NODE": "\(Self.ranksPerNode)", "GRACEFUL_JOB_TOKEN": ""])
        let state = try cluster.waitUntilEnded(job, timeout: 180)
        let output = directory.read("slurm-\(job).out") ?? "(no slurm-\(job).out)"
        #expect(state == "COMPLETED", "job \(job) ended \(state):\n\(output)")
        Self.expectEveryNodeSaw("SIGUSR1", in: output)
        try Self.expectOneCommit(in: directory, output: output, trigger: "SIGUSR1")
        Self.expectEveryNodeExited0(output)
        #expect(!output.contains("SIGTERM") && !output.contains("CANCELLED") && !output.contains("TIME LIMIT"), "\(output)")
        // It ended on its own, before the time limit: RunTime=00:00:48 TimeLimit=00:02:00.
        let fields = try cluster.scontrol(["show", "job", job]).split(whereSeparator: { $0 == " " || $0 == "\n" })
        let runTime = fields.first { $0.hasPrefix("RunTime=") }.map { String($0.dropFirst("RunTime=".count)) } ?? "?"
        #expect(runTime < "00:01:30", "the job ran \(runTime)")
        Self.expectNoProcessLeft(in: directory)
    }

    // MARK: - One job at a time

    @Suite(.serialized)
    struct OneAtATime {
        /// `scancel` of the job: every task gets SIGCONT then SIGTERM, and SIGKILL KillWait (5 s)
        /// later. graceful's default grace is fitted to that KillWait, so every node's stop, one
        /// request though the three nodes were signalled at once, is committed before the SIGKILL.
        /// srun's exit code is Slurm's to choose; the outcome is the record and the checkpoints.
        @Test(.timeLimit(.minutes(2)))
        func scancelCommitsEveryRankWithinKillWait() throws {
            let cluster = try #require(SlurmCluster.shared)
            let directory = try SlurmMultiNodeTests.jobDirectory()
            let name = "graceful-scancel-\(getpid())"
            let srun = try SlurmMultiNodeTests.launch(in: directory, name: name)
            try SlurmMultiNodeTests.waitUntilTraining(srun)
            let job = try cluster.squeue(["-h", "-n", name, "-o", "%i"]).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(!job.isEmpty && !job.contains("\n"), "job '\(job)'")
            let cancelled = Date()
            try cluster.scancel([job])
            try srun.waitFor("]: committed step ", count: SlurmMultiNodeTests.nodes, timeout: SlurmMultiNodeTests.killWait)
            let committedAfter = Date().timeIntervalSince(cancelled)
            _ = try srun.waitForExit(timeout: 30)
            let output = srun.output
            #expect(committedAfter < SlurmMultiNodeTests.killWait, "committed \(committedAfter) s after scancel")
            SlurmMultiNodeTests.expectEveryNodeSaw("SIGTERM", in: output)
            try SlurmMultiNodeTests.expectOneCommit(in: directory, output: output, trigger: "SIGTERM")
            #expect(try cluster.waitUntilEnded(job) == "CANCELLED")
            SlurmMultiNodeTests.expectNoProcessLeft(in: directory)
        }

        /// One control file in the job's directory, seen by all three nodes: one request, one
        /// commit; every node exits 0, so srun does; the flag is set back to 0.
        @Test(.timeLimit(.minutes(2)))
        func controlFileStopsEveryNodeOnce() throws {
            let directory = try SlurmMultiNodeTests.jobDirectory()
            try stopByControlFile(in: directory)
        }

        /// The same line again resumes every rank of every node from the committed step, and the
        /// control file stops it again: a second commit, of a later step.
        @Test(.timeLimit(.minutes(2)))
        func theSameLineResumesEveryRank() throws {
            let directory = try SlurmMultiNodeTests.jobDirectory()
            let committed = try stopByControlFile(in: directory)

            let srun = try SlurmMultiNodeTests.launch(in: directory, name: "graceful-resume-\(getpid())")
            try SlurmMultiNodeTests.waitUntilTraining(srun, resumedFrom: committed)
            try SlurmMultiNodeTests.requestStop(in: directory)
            let status = try srun.waitForExit(timeout: 60)
            let output = srun.output
            for node in 0..<SlurmMultiNodeTests.nodes {
                #expect(output.contains("graceful[node \(node)]: resuming from committed step \(committed) "), "node \(node):\n\(output)")
            }
            for rank in 0..<SlurmMultiNodeTests.worldSize {
                #expect(output.contains("[rank\(rank)]: rank \(rank)/6: resuming from ") && output.contains("rank\(rank)/step_\(committed).json (step \(committed))"), "rank \(rank):\n\(output)")
            }
            #expect(status == 0, "\(output)")
            let step = try SlurmMultiNodeTests.expectOneCommit(in: directory, output: output, trigger: "control-file")
            #expect(step > committed)
            SlurmMultiNodeTests.expectEveryNodeExited0(output)
            #expect(try SlurmMultiNodeTests.controlFlag(in: directory) == 0)
            SlurmMultiNodeTests.expectNoProcessLeft(in: directory)
        }

        /// Launches the job in `directory`, stops it with the control file, checks the outcome;
        /// returns the committed step.
        @discardableResult
        func stopByControlFile(in directory: TemporaryDirectory) throws -> Int {
            let srun = try SlurmMultiNodeTests.launch(in: directory, name: "graceful-control-\(getpid())")
            try SlurmMultiNodeTests.waitUntilTraining(srun)
            try SlurmMultiNodeTests.requestStop(in: directory)
            let status = try srun.waitForExit(timeout: 60)
            let output = srun.output
            #expect(status == 0, "srun exited \(status):\n\(output)")
            let step = try SlurmMultiNodeTests.expectOneCommit(in: directory, output: output, trigger: "control-file")
            SlurmMultiNodeTests.expectEveryNodeExited0(output)
            #expect(output.contains("reset \"GracefulExit\" to 0 in \(directory.file("graceful_exit.json"))"), "\(output)")
            #expect(try SlurmMultiNodeTests.controlFlag(in: directory) == 0)
            SlurmMultiNodeTests.expectNoProcessLeft(in: directory)
            return step
        }
    }
}
