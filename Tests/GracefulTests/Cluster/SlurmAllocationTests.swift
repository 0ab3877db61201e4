import Foundation
@testable import Graceful
import Testing

/// Slurm's environment as the real srun, sbatch and salloc of Slurm 22.05.8 set it (the variables
/// copied from tasks of the test cluster), and the allocation graceful reads from it.
struct SlurmAllocationTests {
    /// A task of `srun -N 3 --ntasks-per-node=1` (node 1 of 3).
    static let step: [String: String] = [
        "SLURM_JOB_ID": "2", "SLURM_JOBID": "2", "SLURM_NNODES": "3", "SLURM_JOB_NUM_NODES": "3",
        "SLURM_NODEID": "1", "SLURM_LOCALID": "0", "SLURM_PROCID": "1", "SLURM_NODELIST": "n[1-3]",
        "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_STEP_NODELIST": "n[1-3]", "SLURM_STEP_NUM_NODES": "3",
        "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_NTASKS": "3", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_STEP_TASKS_PER_NODE": "1(x3)", "SLURM_TASKS_PER_NODE": "1(x3)",
    ]

    /// A task of `srun -N 2 -n 2` inside `sbatch -N 3 --ntasks-per-node=2`: the step has two of the
    /// job's three nodes, and SLURM_NTASKS_PER_NODE is the job's, inherited from the batch script.
    static let stepOnTwoOfThree: [String: String] = [
        "SLURM_JOB_ID": "3", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "3", "SLURM_NODEID": "1",
        "SLURM_LOCALID": "0", "SLURM_NODELIST": "n[1-3]", "SLURM_JOB_NODELIST": "n[1-3]",
        "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_ID": "0",
        "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_TASKS_PER_NODE": "1(x2)",
    ]

    /// The batch script of `sbatch -N 3 --ntasks-per-node=2`: no step, the job's values only.
    static let batchScript: [String: String] = [
        "SLURM_JOB_ID": "3", "SLURM_NNODES": "3", "SLURM_JOB_NUM_NODES": "3", "SLURM_NODEID": "0",
        "SLURM_LOCALID": "0", "SLURM_PROCID": "0", "SLURM_NODELIST": "n[1-3]", "SLURM_JOB_NODELIST": "n[1-3]",
        "SLURM_NTASKS": "6", "SLURM_NTASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "2(x3)",
    ]

    /// Task 3 of `srun -N 3 -n 6`: the second task on node 1.
    static let secondTaskOnANode: [String: String] = [
        "SLURM_JOB_ID": "3", "SLURM_NNODES": "3", "SLURM_NODEID": "1", "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_STEP_NODELIST": "n[1-3]", "SLURM_STEP_NUM_NODES": "3",
        "SLURM_STEP_ID": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x3)",
    ]

    @Test func nilOutsideSlurm() throws {
        #expect(try SlurmAllocation.from(environment: [:]) == nil)
        #expect(try SlurmAllocation.from(environment: ["SLURM_NNODES": "3", "SLURM_NODEID": "9"]) == nil)
        #expect(SlurmAllocation.launchProblem(environment: ["SLURM_LOCALID": "1"]) == nil)
    }

    @Test func readsAStepTask() throws {
        let allocation = try #require(try SlurmAllocation.from(environment: Self.step))
        #expect(allocation == SlurmAllocation(jobID: "2", nodeCount: 3, nodeRank: 1, hosts: ["n1", "n2", "n3"]))
        #expect(allocation.leaderHost == "n1")
        #expect(SlurmAllocation.launchProblem(environment: Self.step) == nil)
    }

    @Test func theStepsNodesWinOverTheJobs() throws {
        let allocation = try #require(try SlurmAllocation.from(environment: Self.stepOnTwoOfThree))
        #expect(allocation == SlurmAllocation(jobID: "3", nodeCount: 2, nodeRank: 1, hosts: ["n1", "n2"]))
        // One task per node in the step, whatever the batch job asked for.
        #expect(SlurmAllocation.launchProblem(environment: Self.stepOnTwoOfThree) == nil)
    }

    @Test func fallsBackToTheJobsVariables() throws {
        var environment = ["SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu-[09-10]"]
        #expect(try SlurmAllocation.from(environment: environment) == SlurmAllocation(jobID: "7", nodeCount: 2, nodeRank: 0, hosts: ["gpu-09", "gpu-10"]))
        environment["SLURM_NNODES"] = "2"
        environment["SLURM_JOB_NUM_NODES"] = nil
        #expect(try SlurmAllocation.from(environment: environment)?.hosts == ["gpu-09", "gpu-10"])
    }

    /// salloc's shell sets no SLURM_NODEID: with one node it is node 0; with more, graceful cannot
    /// know which it is.
    @Test func noNodeIDIsNodeZeroOfOneNodeOnly() throws {
        let salloc = ["SLURM_JOB_ID": "4", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "n2"]
        #expect(try SlurmAllocation.from(environment: salloc) == SlurmAllocation(jobID: "4", nodeCount: 1, nodeRank: 0, hosts: ["n2"]))
        var three = salloc
        three["SLURM_NNODES"] = "3"
        three["SLURM_JOB_NODELIST"] = "n[1-3]"
        try expectError(three, naming: "SLURM_NODEID")
    }

    @Test func inconsistentValuesNameTheVariable() throws {
        var environment = Self.step
        environment["SLURM_NODEID"] = "3"
        try expectError(environment, naming: "SLURM_NODEID=3 is not below SLURM_STEP_NUM_NODES=3")
        environment = Self.step
        environment["SLURM_STEP_NODELIST"] = "n[1-4]"
        try expectError(environment, naming: "SLURM_STEP_NODELIST='n[1-4]' names 4 hosts but SLURM_STEP_NUM_NODES=3")
        environment = Self.step
        environment["SLURM_STEP_NUM_NODES"] = "three"
        try expectError(environment, naming: "SLURM_STEP_NUM_NODES='three' is not a number")
        environment = Self.step
        environment["SLURM_NODEID"] = "-1"
        try expectError(environment, naming: "SLURM_NODEID='-1' is not a number")
        environment = Self.step
        environment["SLURM_STEP_NUM_NODES"] = "0"
        try expectError(environment, naming: "SLURM_STEP_NUM_NODES=0")
        environment = Self.step
        environment["SLURM_STEP_NODELIST"] = "n[3-1]"
        try expectError(environment, naming: "SLURM_STEP_NODELIST: range '3-1' in 'n[3-1]' goes down")
        environment = Self.step
        environment["SLURM_JOB_ID"] = "12 34"
        try expectError(environment, naming: "SLURM_JOB_ID='12 34' is not a job number")
        environment = ["SLURM_JOB_ID": "5", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1"]
        try expectError(environment, naming: "SLURM_NNODES is not set")
        environment = ["SLURM_JOB_ID": "5", "SLURM_NNODES": "1", "SLURM_NODEID": "0"]
        try expectError(environment, naming: "SLURM_JOB_NODELIST is not set")
        environment = ["SLURM_JOB_ID": "5", "SLURM_NNODES": "99999999999999999999", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1"]
        try expectError(environment, naming: "SLURM_NNODES='99999999999999999999' is not a number")
    }

    @Test func reportsMoreThanOneTaskPerNode() throws {
        let second = try #require(SlurmAllocation.launchProblem(environment: Self.secondTaskOnANode))
        #expect(second.contains("SLURM_LOCALID=1") && second.contains("srun --ntasks-per-node=1"), "\(second)")
        var first = Self.secondTaskOnANode
        first["SLURM_LOCALID"] = "0"
        let problem = try #require(SlurmAllocation.launchProblem(environment: first))
        #expect(problem.contains("SLURM_STEP_TASKS_PER_NODE=2(x3)") && problem.contains("srun --ntasks-per-node=1"), "\(problem)")
        var uneven = Self.step
        uneven["SLURM_STEP_TASKS_PER_NODE"] = "1(x2),2"
        #expect(SlurmAllocation.launchProblem(environment: uneven)?.contains("starts 2 tasks on a node") == true)
        // Without the step's layout (an older srun), the requested tasks per node.
        var older = first
        older["SLURM_STEP_TASKS_PER_NODE"] = nil
        #expect(SlurmAllocation.launchProblem(environment: older)?.contains("SLURM_NTASKS_PER_NODE=2") == true)
        for problem in [second, problem] { #expect(!problem.contains("\n")) }
    }

    /// graceful started by a multi-node batch script itself (no srun) is one node's graceful
    /// waiting for peers that never start.
    @Test func reportsABatchScriptOfSeveralNodes() throws {
        let problem = try #require(SlurmAllocation.launchProblem(environment: Self.batchScript))
        #expect(problem.contains("not under srun") && problem.contains("3 nodes"), "\(problem)")
        var single = Self.batchScript
        single["SLURM_NNODES"] = "1"
        #expect(SlurmAllocation.launchProblem(environment: single) == nil)
        // Its allocation still reads (node 0 of the job's three).
        #expect(try SlurmAllocation.from(environment: Self.batchScript)?.nodeRank == 0)
    }

    func expectError(_ environment: [String: String], naming text: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        do {
            let allocation = try SlurmAllocation.from(environment: environment)
            Issue.record("accepted: \(String(describing: allocation))", sourceLocation: sourceLocation)
        } catch {
            #expect(error.description.contains(text), "\(error.description)", sourceLocation: sourceLocation)
            #expect(!error.description.contains("\n"), sourceLocation: sourceLocation)
        }
    }
}

/// KillWait as `scontrol show config` prints it.
struct SlurmKillWaitTests {
    @Test func parsesTheConfigLine() {
        let config = """
            Configuration data as of 2026-11-30T20:35:27
            JobAcctGatherType       = jobacct_gather/none
            KillOnBadExit           = 0
            KillWait                = 30 sec
            LaunchParameters        = (null)
            """
        #expect(SlurmKillWait.parse(config: config) == 30)
        #expect(SlurmKillWait.parse(config: "KillWait                = 5 sec\n") == 5)
        #expect(SlurmKillWait.parse(config: "KillOnBadExit           = 0\n") == nil)
        #expect(SlurmKillWait.parse(config: "KillWait                = (null)\n") == nil)
        #expect(SlurmKillWait.parse(config: "") == nil)
    }

    /// Without a configuration scontrol retries for 60 s; graceful waits 5 s at most.
    @Test(.enabled(if: SlurmHostListTests.scontrol != nil, "scontrol is not installed (Debian: apt-get install slurm-client)"))
    func givesUpWithinItsTimeout() {
        let start = ContinuousClock.now
        #expect(SlurmKillWait.read(environment: ["SLURM_CONF": "/nonexistent/slurm.conf", "PATH": "/usr/bin:/bin"]) == nil)
        #expect(ContinuousClock.now - start < .seconds(SlurmKillWait.timeout + 1))
    }

    @Test func nilWithoutScontrol() {
        #expect(SlurmKillWait.read(environment: ["PATH": "/nonexistent"]) == nil)
    }
}

/// The leader's address inside a multi-node step: its node's name, or Slurm's NodeAddr for it when
/// that name does not resolve here (the test cluster's n1..n3 are NodeAddr=127.0.0.1).
struct SlurmNodeAddressTests {
    static let node = """
        NodeName=n1 Arch=x86_64 CoresPerSocket=1  CPUAlloc=2 CPUEfctv=2 CPUTot=2 CPULoad=13.92 AvailableFeatures=(null) \
        ActiveFeatures=(null) Gres=(null) NodeAddr=127.0.0.1 NodeHostName=localhost Port=25701 Version=22.05.8

        """

    @Test func parsesNodeAddr() {
        #expect(SlurmNodeAddress.parse(node: Self.node) == "127.0.0.1")
        #expect(SlurmNodeAddress.parse(node: "NodeName=gpu7 NodeAddr=gpu7-ib NodeHostName=gpu7\n") == "gpu7-ib")
        #expect(SlurmNodeAddress.parse(node: "Node nosuch not found\n") == nil)
        #expect(SlurmNodeAddress.parse(node: "NodeName=n1 NodeAddr= NodeHostName=n1") == nil)
        #expect(SlurmNodeAddress.parse(node: "") == nil)
    }

    @Test func resolvesOnlyRealNames() {
        #expect(SlurmNodeAddress.resolves("localhost"))
        #expect(SlurmNodeAddress.resolves("127.0.0.1"))
        #expect(!SlurmNodeAddress.resolves("graceful-no-such-host.invalid"))
    }

    @Test func nilWithoutScontrol() {
        #expect(SlurmNodeAddress.read(node: "n1", environment: ["PATH": "/nonexistent"]) == nil)
    }

    func configuration(_ host: CommandLineInterface.Host) throws -> RunConfiguration {
        guard case .run(let configuration) = try CommandLineInterface.parse(["run", "-n", "2", "--", "python3", "train.py"], host: host) else {
            throw CommandLineInterface.UsageError(message: "not a run")
        }
        return configuration
    }

    /// A master port from the job id, the rendezvous on the next port, both below Linux's ephemeral
    /// ports: one of those, held by any connection on the node, made the ranks' bind fail.
    @Test func theMasterPortComesFromTheJobIdBelowTheEphemeralPorts() throws {
        var environment = SlurmAllocationTests.step
        environment["GRACEFUL_JOB_TOKEN"] = "0123456789abcdef0123456789abcdef"
        var ports: [Int] = []
        for job in [0, 1, 2, 5999, 6000, 7187, 123_456_789] {
            environment["SLURM_JOB_ID"] = "\(job)"
            let host = CommandLineInterface.Host(environment: environment, processors: 2, nvidiaDevices: 0)
            let port = try #require(try configuration(host).masterPort)
            #expect(port >= 20000 && port + 1 < 32768, "job \(job): \(port)")
            ports.append(port)
        }
        #expect(ports == [20000, 20002, 20004, 31998, 20000, 22374, 21578])
    }

    @Test func theLeadersNodeAddrWhenItsNameDoesNotResolve() throws {
        var environment = SlurmAllocationTests.step
        environment["GRACEFUL_JOB_TOKEN"] = "0123456789abcdef0123456789abcdef"
        let asked = Asked()
        let unresolved = CommandLineInterface.Host(
            environment: environment, processors: 2, nvidiaDevices: 0,
            slurmNodeAddress: { name in
                asked.add(name)
                return "127.0.0.1"
            })
        let configuration = try configuration(unresolved)
        #expect(configuration.masterAddress == "127.0.0.1")
        #expect(asked.names == ["n1"])
        #expect(configuration.cluster?.nodeRank == 1 && configuration.cluster?.nodeCount == 3)

        // A name that resolves is kept.
        let resolved = CommandLineInterface.Host(environment: environment, processors: 2, nvidiaDevices: 0)
        #expect(try self.configuration(resolved).masterAddress == "n1")
        // --master-addr wins, and Slurm is not asked.
        guard case .run(let given) = try CommandLineInterface.parse(
            ["run", "-n", "2", "--master-addr", "10.0.0.9", "--", "python3", "train.py"], host: unresolved)
        else { throw CommandLineInterface.UsageError(message: "not a run") }
        #expect(given.masterAddress == "10.0.0.9")
        #expect(asked.names == ["n1"])
    }

    /// The names Slurm was asked about.
    final class Asked: @unchecked Sendable {
        private let lock = NSLock()
        private var asked: [String] = []
        var names: [String] { lock.withLock { asked } }
        func add(_ name: String) { lock.withLock { asked.append(name) } }
    }
}
