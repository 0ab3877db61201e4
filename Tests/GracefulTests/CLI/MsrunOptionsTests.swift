import Testing

@testable import Graceful

/// `graceful msrun`: msrun's options honoured, accepted as harmless, or refused with one line.
@Suite struct MsrunOptionsTests {
    func run(_ arguments: [String]) throws -> RunConfiguration {
        guard case .run(let configuration) = try CommandLineInterface.parse(["msrun"] + arguments) else {
            throw CommandLineInterface.UsageError(message: "not a run")
        }
        return configuration
    }

    func refusal(_ arguments: [String]) -> String {
        do {
            _ = try CommandLineInterface.parse(["msrun"] + arguments)
            return "accepted"
        } catch {
            return error.message
        }
    }

    @Test func honoursMsrunsOptionsInBothForms() throws {
        let configuration = try run([
            "--worker_num=4", "--local_worker_num", "4", "--master_addr", "10.0.0.7", "--master_port=9123",
            "--log_dir", "msrun_log", "--cluster_time_out=45", "--worker_log_name", "w_{hostname}",
            "train.py", "--epochs", "3",
        ])
        #expect(configuration.ranks == 4)
        #expect(configuration.command == ["python", "train.py", "--epochs", "3"])
        #expect(configuration.masterAddress == "10.0.0.7")
        #expect(configuration.masterPort == 9123)
        #expect(configuration.runDirectory == "msrun_log")
        #expect(configuration.extraEnvironment == ["MS_TOPO_TIMEOUT": "45"])
        #expect(configuration.auxiliary == AuxiliaryConfiguration(
            name: "scheduler", logPath: "msrun_log/scheduler.log", exitDeadline: MsrunOptions.defaultSchedulerTimeout))
        let paths = try #require(configuration.rankLogPaths)
        #expect(paths.count == 4)
        #expect(paths[3].hasPrefix("msrun_log/w_") && paths[3].hasSuffix("_3.log") && !paths[3].contains("{"))
    }

    /// msrun's `{ip}`: the address this machine reaches the scheduler from.
    @Test func theWorkerLogNameTakesTheLocalAddress() throws {
        let configuration = try run(["--worker_num=1", "--local_worker_num=1", "--worker_log_name=w_{ip}", "train.py"])
        #expect(configuration.rankLogPaths == ["w_127.0.0.1_0.log"])
    }

    /// Only the listed workers reach the console, as msrun tails only their logs; -1 is all of them.
    @Test(arguments: [(["--tail_worker_log=-1"], nil), (["--tail_worker_log", "0,2"], [0, 2] as Set<Int>?), ([], nil)])
    func tailWorkerLogChoosesTheConsolesWorkers(_ option: [String], _ shown: Set<Int>?) throws {
        let configuration = try run(["--worker_num=3", "--local_worker_num=3"] + option + ["train.py"])
        #expect(configuration.consoleRanks == shown)
    }

    @Test func defaultsAreMsrunsExceptTheFreePort() throws {
        let configuration = try run(["train.py"])
        #expect(configuration.ranks == 8)
        #expect(configuration.masterAddress == "127.0.0.1")
        #expect(configuration.masterPort == nil)
        #expect(configuration.runDirectory == nil)
        #expect(configuration.effectiveRunDirectory == "graceful_run/train")
        #expect(configuration.rankLogPaths == (0..<8).map { "worker_\($0).log" })
        #expect(configuration.auxiliary?.logPath == "scheduler.log")
        #expect(configuration.extraEnvironment == ["MS_TOPO_TIMEOUT": "600"])
    }

    @Test(arguments: [["python", "train.py"], ["python3", "-u", "train.py"], ["pytest", "-x", "test_net.py"]])
    func anInterpreterGivenAsTheScriptRunsAsGiven(_ command: [String]) throws {
        #expect(try run(["--worker_num=1", "--local_worker_num=1"] + command).command == command)
    }

    @Test func theScriptsOwnOptionsAreNeverReadAsMsruns() throws {
        let configuration = try run(["--worker_num=2", "--local_worker_num=2", "train.py", "--worker_num=9", "--help"])
        #expect(configuration.ranks == 2)
        #expect(configuration.command == ["python", "train.py", "--worker_num=9", "--help"])
    }

    @Test(arguments: [
        ["--join=True"], ["--join", "False"], ["--join=1"], ["--node_rank=0"], ["--node_rank", "-1"], ["--node_rank=3"],
        ["--bind_core=False"], ["--bind_numa", "false"],
        ["--rank_table_file="], ["--cluster_time_out=-1"],
    ])
    func harmlessOptionsAreAccepted(_ option: [String]) throws {
        let configuration = try run(["--worker_num=2", "--local_worker_num=2"] + option + ["train.py"])
        #expect(configuration.ranks == 2)
        #expect(configuration.command == ["python", "train.py"])
    }

    @Test func gracefulsOwnOptions() throws {
        let configuration = try run([
            "--local_worker_num=1", "--worker_num=1", "--grace", "5", "--kill-after=2", "--scheduler-timeout", "0.5",
            "--control-file", "stop.json", "train.py",
        ])
        #expect(configuration.policy.grace == 5)
        #expect(configuration.policy.killAfter == 2)
        #expect(configuration.auxiliary?.exitDeadline == 0.5)
        #expect(configuration.controlFile == "stop.json")
    }

    @Test(arguments: [
        (["--worker_num=8", "--local_worker_num=4", "train.py"], "needs --node_rank on every node"),
        (["--worker_num=6", "--local_worker_num=4", "--node_rank=0", "train.py"], "is not a multiple of --local_worker_num 4"),
        (["--worker_num=2", "train.py"], "Total worker number is 2, but got exceeded local worker number: 8."),
        (["--bind_core=True", "train.py"], "binding workers to cores or NUMA nodes is not supported"),
        (["--sim_level=1", "train.py"], "simulation (dry run) is not supported"),
        (["--sim_rank_id", "0", "train.py"], "simulation (dry run) is not supported"),
        (["--rank_table_file=rt.json", "train.py"], "rank table files are for Ascend"),
        (["--master_addr=no-such-host.invalid", "--worker_log_name=w_{ip}", "train.py"], "{ip} needs this machine's address toward --master_addr 'no-such-host.invalid'"),
        (["--worker_num=two", "train.py"], "is not an integer"),
        (["--master_port=70000", "train.py"], "out of range"),
        (["--join=yes", "train.py"], "is not True or False"),
        (["--nproc_per_node=2", "train.py"], "unknown option '--nproc_per_node'"),
        (["--worker_num=2"], "missing the task script"),
        (["--log_dir"], "missing value for '--log_dir'"),
    ])
    func refusedWithOneLine(_ arguments: [String], _ reason: String) {
        let message = refusal(arguments)
        #expect(message.contains(reason), "\(message)")
        #expect(!message.contains("\n"))
        #expect(message.hasSuffix("(see 'graceful msrun --help')"))
    }

    @Test func helpIsMsruns() throws {
        #expect(try CommandLineInterface.parse(["msrun", "--help"]) == .help(MsrunOptions.help))
        #expect(try CommandLineInterface.parse(["help", "msrun"]) == .help(MsrunOptions.help))
    }
}

/// msrun's multi-node form: one `graceful msrun` per node, the scheduler on node 0.
@Suite struct MsrunSeveralNodesTests {
    static let node = CommandLineInterface.Host(environment: ["GRACEFUL_JOB_TOKEN": "0123456789abcdef"], processors: 4, nvidiaDevices: 0)

    func run(_ arguments: [String]) throws -> RunConfiguration {
        guard case .run(let configuration) = try MsrunOptions.parse(arguments, host: Self.node) else {
            throw CommandLineInterface.UsageError(message: "not a run")
        }
        return configuration
    }

    @Test func eachNodeRunsItsShareAndNodeZeroTheScheduler() throws {
        let follower = try run(["--worker_num=8", "--local_worker_num=4", "--node_rank=1", "--master_addr=10.0.0.1", "--log_dir=logs", "train.py"])
        #expect(follower.cluster?.nodeCount == 2 && follower.cluster?.nodeRank == 1)
        #expect(follower.ranks == 4 && follower.masterAddress == "10.0.0.1" && follower.masterPort == 8118)
        #expect(follower.auxiliary == nil)
        #expect(follower.rankLogPaths == (4..<8).map { "logs/worker_\($0).log" })
        #expect(follower.runDirectory == "logs/node1")
        let leader = try run(["--worker_num=8", "--local_worker_num=4", "--node_rank=0", "--master_port=9000", "train.py"])
        #expect(leader.auxiliary?.name == "scheduler" && leader.masterPort == 9000)
        #expect(leader.rankLogPaths == (0..<4).map { "worker_\($0).log" })
    }
}
