import Foundation
@testable import Graceful
import Testing

/// The real Slurm test cluster (.ci/slurm/cluster.sh: three virtual nodes on this machine): what
/// srun's tasks see, read the way graceful reads it. Skipped, with the reason, where the cluster
/// cannot come up.
@Suite(.enabled(if: SlurmCluster.shared != nil, "\(SlurmCluster.unavailableReason)"))
struct SlurmClusterTests {
    /// Each task's `SLURM_*` variables, by task id, from a step run with `--label` (lines `N: text`):
    /// the tasks' lines interleave, each whole.
    static func taskEnvironments(_ output: String) -> [Int: [String: String]] {
        var tasks: [Int: [String: String]] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let task = Int(parts[0].trimmingCharacters(in: .whitespaces)) else { continue }
            let variable = parts[1].drop { $0 == " " }.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard variable.count == 2, variable[0].hasPrefix("SLURM_") else { continue }
            tasks[task, default: [:]][String(variable[0])] = String(variable[1])
        }
        return tasks
    }

    /// The launch line graceful documents: one task per node, each knowing its node rank, the node
    /// count and the leader's host.
    @Test func oneTaskPerNodeKnowsItsNode() throws {
        let cluster = try #require(SlurmCluster.shared)
        let step = try cluster.srun(["-N", "3", "--ntasks-per-node=1", "--label", "sh", "-c", "echo \"node=$SLURM_NODEID\"; env"])
        let printed = step.stdout.split(separator: "\n").filter { $0.contains(": node=") }.map { String($0.split(separator: "=").last!) }
        #expect(printed.sorted() == ["0", "1", "2"], "\(step.output)")

        let tasks = Self.taskEnvironments(step.stdout)
        #expect(tasks.keys.sorted() == [0, 1, 2], "\(step.output)")
        var jobs: Set<String> = []
        for (task, environment) in tasks {
            let allocation = try #require(try SlurmAllocation.from(environment: environment))
            #expect(allocation.nodeRank == task)
            #expect(String(allocation.nodeRank) == environment["SLURM_NODEID"])
            #expect(allocation.nodeCount == 3)
            #expect(allocation.hosts == ["n1", "n2", "n3"])
            #expect(allocation.leaderHost == "n1")
            #expect(SlurmAllocation.launchProblem(environment: environment) == nil)
            jobs.insert(allocation.jobID)
        }
        #expect(jobs.count == 1)
    }

    /// Two tasks per node: every task is told that graceful runs once per node.
    @Test func twoTasksPerNodeIsReported() throws {
        let cluster = try #require(SlurmCluster.shared)
        let step = try cluster.srun(["-N", "3", "-n", "6", "--label", "env"])
        let tasks = Self.taskEnvironments(step.stdout)
        #expect(tasks.count == 6, "\(step.output)")
        for (task, environment) in tasks {
            let problem = SlurmAllocation.launchProblem(environment: environment)
            #expect(problem?.contains("srun --ntasks-per-node=1") == true, "task \(task): \(String(describing: problem))")
        }
    }

    /// The helpers the multi-node tests drive jobs with: a batch job, cancelled, ends CANCELLED.
    @Test func cancelsABatchJob() throws {
        let cluster = try #require(SlurmCluster.shared)
        let directory = try TemporaryDirectory()
        let job = try cluster.sbatch(["-N", "2", "--output=out.txt", "--wrap", "srun sleep 300"], in: directory.path)
        let deadline = Date().addingTimeInterval(30)
        while try cluster.jobState(job) != "RUNNING" && Date() < deadline { usleep(50_000) }
        #expect(try cluster.squeue(["-h", "-j", job, "-o", "%T %D"]).contains("RUNNING 2"))
        try cluster.scancel([job])
        #expect(try cluster.waitUntilEnded(job) == "CANCELLED")
    }

    @Test func readsTheClustersKillWait() throws {
        let cluster = try #require(SlurmCluster.shared)
        #expect(SlurmKillWait.read(environment: ["SLURM_CONF": cluster.configuration, "PATH": "/usr/bin:/bin"]) == 5)
    }
}
