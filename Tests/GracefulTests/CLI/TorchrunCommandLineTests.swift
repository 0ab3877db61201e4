import Testing

@testable import Graceful

/// `graceful torchrun`: each class of torchrun option (honoured, harmless, refused with its reason),
/// on a made-up machine with 8 processors and 2 NVIDIA GPUs.
@Suite struct TorchrunCommandLineTests {
    static let machine = CommandLineInterface.Host(environment: [:], processors: 8, nvidiaDevices: 2)

    func run(_ arguments: [String], on host: CommandLineInterface.Host = machine) throws -> RunConfiguration {
        guard case .run(let configuration) = try CommandLineInterface.parse(["torchrun"] + arguments, host: host) else {
            throw CommandLineInterface.UsageError(message: "not a run")
        }
        return configuration
    }

    func refusal(_ arguments: [String], on host: CommandLineInterface.Host = machine) -> String? {
        do {
            _ = try CommandLineInterface.parse(["torchrun"] + arguments, host: host)
            return nil
        } catch {
            return error.message
        }
    }

    @Test func theUsualSingleNodeCommandLine() throws {
        let configuration = try run(["--standalone", "--nnodes=1", "--nproc_per_node=4", "train.py", "--lr", "0.1", "--nnodes", "3"])
        #expect(configuration.ranks == 4)
        #expect(configuration.command == ["python3", "-u", "train.py", "--lr", "0.1", "--nnodes", "3"])
        #expect(configuration.runDirectory == nil && configuration.runID == nil && configuration.masterPort == nil)
    }

    @Test(arguments: [
        ["--nproc-per-node", "3"], ["--nproc_per_node", "3"], ["--nproc-per-node=3"], ["--nproc_per_node=3"], ["--nproc", "3"],
        ["--nproc_per=3"],
    ])
    func everySpellingOfALongOption(_ option: [String]) throws {
        #expect(try run(option + ["t.py"]).ranks == 3)
    }

    @Test(arguments: [("cpu", 8), ("gpu", 2), ("auto", 2), ("1", 1), ("16", 16)])
    func ranksCountedAsTorchrunCountsThem(_ value: String, _ ranks: Int) throws {
        #expect(try run(["--nproc-per-node", value, "t.py"]).ranks == ranks)
    }

    @Test func gpuCountsWhatCudaVisibleDevicesLeavesAndAutoFallsBackToProcessors() throws {
        let one = CommandLineInterface.Host(environment: ["CUDA_VISIBLE_DEVICES": "1"], processors: 8, nvidiaDevices: 2)
        #expect(try run(["--nproc-per-node", "gpu", "t.py"], on: one).ranks == 1)
        let hidden = CommandLineInterface.Host(environment: ["CUDA_VISIBLE_DEVICES": "-1"], processors: 8, nvidiaDevices: 2)
        #expect(try run(["--nproc-per-node", "auto", "t.py"], on: hidden).ranks == 8)
        let cpuOnly = CommandLineInterface.Host(environment: [:], processors: 6, nvidiaDevices: 0)
        #expect(try run(["--nproc-per-node", "auto", "t.py"], on: cpuOnly).ranks == 6)
        #expect(refusal(["--nproc-per-node", "gpu", "t.py"], on: cpuOnly)?.contains("no NVIDIA GPU here") == true)
        #expect(refusal(["--nproc-per-node", "xpu", "t.py"])?.contains("is not a number of ranks, cpu, gpu or auto") == true)
    }

    @Test func theScriptRunsAsTorchrunRunsIt() throws {
        #expect(try run(["-m", "pkg.train", "--x"]).command == ["python3", "-u", "-m", "pkg.train", "--x"])
        #expect(try run(["--module", "pkg.train"]).command == ["python3", "-u", "-m", "pkg.train"])
        #expect(try run(["--no-python", "./trainer", "-v"]).command == ["./trainer", "-v"])
        #expect(try run(["--no_python", "train.py"]).command == ["train.py"])
        #expect(try run(["--run-path", "--no-python", "/abs/t.py"]).command == ["python3", "-u", "/abs/t.py"])
        #expect(try run(["--", "t.py", "--", "-m"]).command == ["python3", "-u", "t.py", "--", "-m"])
        let venv = CommandLineInterface.Host(environment: ["PYTHON_EXEC": "/opt/venv/bin/python"], processors: 1, nvidiaDevices: 0)
        #expect(try run(["t.py"], on: venv).command == ["/opt/venv/bin/python", "-u", "t.py"])
        #expect(refusal(["-m", "--no-python", "x"])?.contains("don't use both '--no-python' and '--module'") == true)
    }

    @Test func honouredOptions() throws {
        let configuration = try run([
            "--nnodes", "1:1", "--node_rank=0", "--max-restarts", "3", "--rdzv-id", "job7", "--master-addr", "10.0.0.1",
            "--master_port", "29501", "--shutdown-timeout", "45", "--role", "default", "t.py",
        ])
        #expect(configuration.policy.maxRestarts == 3)
        #expect(configuration.runID == "job7")
        #expect(configuration.masterAddress == "10.0.0.1" && configuration.masterPort == 29501)
        #expect(configuration.policy.grace == 45)
    }

    @Test func theStaticRendezvousTakesItsEndpointAsTorchrunDoes() throws {
        let configuration = try run(["--rdzv-endpoint", "[::1]:29400", "--master-port", "1234", "t.py"])
        #expect(configuration.masterAddress == "::1" && configuration.masterPort == 29400)
        #expect(refusal(["--rdzv-endpoint", "localhost", "t.py"])?.contains("is not host:port") == true)
        // Another backend, or --standalone, picks its own: --master-* and the endpoint are left out.
        let c10d = try run(["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost", "--master-port", "1234", "t.py"])
        #expect(c10d.masterPort == nil && c10d.masterAddress == "127.0.0.1")
        let standalone = try run(["--standalone", "--rdzv-id", "ignored", "--master-addr", "h", "t.py"])
        #expect(standalone.runID == nil && standalone.masterAddress == "127.0.0.1")
    }

    @Test func theLogDirectoryHoldsOneRunDirectoryPerJob() throws {
        #expect(try run(["--log-dir", "/var/log/elastic", "examples/train.py"]).runDirectory == "/var/log/elastic/train")
        #expect(try run(["--log_dir=logs", "-m", "pkg.main"]).runDirectory == "logs/pkg.main")
        #expect(try run(["--log-dir", "logs", "--run-dir", "mine", "t.py"]).runDirectory == "mine")
    }

    @Test(arguments: [
        ["--standalone"], ["--rdzv-backend", "etcd-v2"], ["--rdzv_conf", "timeout=900,join_timeout=600"],
        ["--monitor-interval", "0.5"], ["--start-method", "fork"], ["--event-log-handler", "console"], ["-r", "3"], ["-r3"],
        ["-t=0:1,1:2"], ["--tee", "3"], ["--redirects=1"], ["--local-ranks-filter", "0,1"], ["--local-addr", "node7"],
        ["--signals-to-handle", "SIGTERM,SIGUSR1"], ["--log-line-prefix-template", "${rank}: "],
        ["--duplicate-stdout-filters", "loss"], ["--duplicate_stderr_filters", "NCCL"],
    ])
    func harmlessOptionsAreAcceptedAndChangeNothing(_ option: [String]) throws {
        var expected = RunConfiguration(command: ["python3", "-u", "t.py"])
        expected.ranks = 1
        #expect(try run(option + ["t.py"]) == expected)
    }

    @Test(arguments: [
        (["--nnodes", "2", "t.py"], "--nnodes 2 needs the job's secret on every node: export GRACEFUL_JOB_TOKEN="),
        (["--nnodes=1:4", "t.py"], "an elastic number of nodes is not supported"),
        (["--node-rank", "1", "t.py"], "--node-rank 1 needs --nnodes above it"),
        (["--nnodes", "2", "--standalone", "t.py"], "--standalone is one node"),
        (["--numa-binding", "node", "t.py"], "graceful binds no rank to NUMA nodes"),
        (["--logs-specs", "mine", "t.py"], "loads no torchrun plugin"),
        (["--virtual-local-rank", "t.py"], "LOCAL_RANK is each rank's number"),
        (["--print-completion", "bash", "t.py"], "prints no shell completion"),
        (["--role", "trainer", "t.py"], "other roles are not supported yet"),
        (["--start-method", "thread", "t.py"], "is not spawn, fork or forkserver"),
        (["-r", "4", "t.py"], "is not 0 to 3"),
        (["--local-ranks-filter", "0,x", "t.py"], "is not local ranks"),
        (["--nnodes", "one", "t.py"], "is not a number of nodes"),
        (["--max-restarts", "-1", "t.py"], "is not a whole number"),
        (["--master-port", "70000", "t.py"], "is not a TCP port"),
        (["--standalone=1", "t.py"], "takes no value"),
        (["--log-dir"], "missing value for '--log-dir'"),
        (["--log-dir", "--standalone", "t.py"], "missing value for '--log-dir'"),
        (["--ma", "x", "t.py"], "ambiguous option '--ma' could match --master-addr, --master-port, --max-restarts"),
        (["--bogus", "t.py"], "unknown option '--bogus'"),
        (["-n", "2", "t.py"], "unknown option '-n'"),
        (["--standalone"], "missing the training script"),
        (["--grace", "soon", "t.py"], "is not a number of seconds"),
    ])
    func refusedWithTheReasonOnOneLine(_ arguments: [String], _ reason: String) {
        let message = refusal(arguments)
        #expect(message?.contains(reason) == true, "\(message ?? "accepted")")
        #expect(message?.hasSuffix("(see 'graceful torchrun --help')") == true && message?.contains("\n") == false)
    }

    @Test func gracefulsOwnOptionsComeBeforeTheScriptToo() throws {
        let configuration = try run([
            "--grace", "12", "--kill-after=3", "--checkpoint-every", "600", "--control-file", "stop.json", "--restart-backoff", "2",
            "--run-id", "mine", "--rdzv-id", "theirs", "t.py",
        ])
        #expect(configuration.policy.grace == 12 && configuration.policy.killAfter == 3)
        #expect(configuration.policy.checkpointEvery == 600 && configuration.policy.restartBackoff == 2)
        #expect(configuration.controlFile == "stop.json" && configuration.runID == "mine")
    }

    @Test func torchrunsEnvironmentDefaultsApplyUnlessTheCommandLineSaysOtherwise() throws {
        let kubeflow = CommandLineInterface.Host(
            environment: ["PET_NPROC_PER_NODE": "3", "PET_NNODES": "2", "PET_MASTER_PORT": "23456", "PET_STANDALONE": "0"],
            processors: 8, nvidiaDevices: 0)
        #expect(refusal(["t.py"], on: kubeflow)?.hasPrefix("--nnodes 2 needs the job's secret") == true)
        let configuration = try run(["--nnodes", "1", "t.py"], on: kubeflow)
        #expect(configuration.ranks == 3 && configuration.masterPort == 23456)
        let module = CommandLineInterface.Host(environment: ["PET_MODULE": "1"], processors: 1, nvidiaDevices: 0)
        #expect(try run(["pkg"], on: module).command == ["python3", "-u", "-m", "pkg"])
        let bad = CommandLineInterface.Host(environment: ["PET_STANDALONE": "yes"], processors: 1, nvidiaDevices: 0)
        #expect(refusal(["t.py"], on: bad)?.contains(#"PET_STANDALONE: "yes" is not 0 or 1"#) == true)
    }

    @Test func helpInTheShapeOfRunsHelp() throws {
        guard case .help(let text) = try CommandLineInterface.parse(["torchrun", "--nnodes", "1", "--help"], host: Self.machine) else {
            Issue.record("no help")
            return
        }
        #expect(try CommandLineInterface.parse(["help", "torchrun"], host: Self.machine) == .help(text))
        for section in ["OVERVIEW:", "USAGE: graceful torchrun", "ARGUMENTS:", "OPTIONS (honoured):", "OPTIONS (refused, with the reason):"] {
            #expect(text.contains(section), "help lacks \(section)")
        }
        #expect(CommandLineInterface.overview.contains("torchrun"))
    }
}

/// torchrun's multi-node forms, one `graceful torchrun` per node.
@Suite struct TorchrunSeveralNodesTests {
    static let node = CommandLineInterface.Host(
        environment: ["GRACEFUL_JOB_TOKEN": "0123456789abcdef"], processors: 8, nvidiaDevices: 0)

    func run(_ arguments: [String]) throws -> RunConfiguration {
        guard case .run(let configuration) = try CommandLineInterface.parse(["torchrun"] + arguments, host: Self.node) else {
            throw CommandLineInterface.UsageError(message: "not a run")
        }
        return configuration
    }

    /// The static rendezvous: the framework at --master-port, graceful's leader at the port above.
    @Test func staticRendezvousLeavesTheMasterPortToTheFramework() throws {
        let configuration = try run([
            "--nnodes", "4", "--node-rank", "2", "--nproc-per-node", "8", "--master-addr", "node0", "--master-port", "29500", "t.py",
        ])
        #expect(configuration.cluster?.nodeCount == 4 && configuration.cluster?.nodeRank == 2)
        #expect(configuration.ranks == 8 && configuration.masterAddress == "node0" && configuration.masterPort == 29500)
        #expect(configuration.cluster?.rendezvousHost == nil && configuration.cluster?.rendezvousPort == nil)
        #expect(configuration.effectiveRunDirectory == "graceful_run/t/node2")
    }

    /// c10d: the endpoint is graceful's leader; the framework gets the port above it on that host.
    @Test func c10dEndpointIsTheLeaders() throws {
        let configuration = try run([
            "--nnodes=2:2", "--node_rank=1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "head:29400", "--log-dir", "logs", "t.py",
        ])
        #expect(configuration.cluster?.rendezvousHost == "head" && configuration.cluster?.rendezvousPort == 29400)
        #expect(configuration.masterAddress == "head" && configuration.masterPort == 29401)
        #expect(configuration.runDirectory == "logs/t/node1")
    }

    /// The leader restarts the whole job: every node takes its own --max-restarts as the job's.
    @Test func severalNodesRestartTogether() throws {
        let configuration = try run(["--nnodes", "2", "--node-rank", "1", "--max-restarts", "2", "t.py"])
        #expect(configuration.policy.maxRestarts == 2 && configuration.cluster?.nodeCount == 2)
    }
}
