import Testing

@testable import Graceful

@Suite struct CommandLineInterfaceTests {
    func run(_ arguments: [String]) throws -> RunConfiguration {
        guard case .run(let configuration) = try CommandLineInterface.parse(arguments) else {
            throw CommandLineInterface.UsageError(message: "not a run")
        }
        return configuration
    }

    @Test func parsesEveryOptionAndTheCommand() throws {
        let configuration = try run([
            "run", "-n", "4", "--run-dir", "out", "--control-file=ctl.json", "--grace", "12.5", "--kill-after", "3",
            "--master-addr", "10.1.1.1", "--master-port", "29501", "--run-id", "job7", "--", "python3", "train.py", "--steps", "5",
        ])
        #expect(configuration.ranks == 4)
        #expect(configuration.runDirectory == "out")
        #expect(configuration.controlFile == "ctl.json")
        #expect(configuration.policy.grace == 12.5)
        #expect(configuration.policy.killAfter == 3)
        #expect(configuration.masterAddress == "10.1.1.1")
        #expect(configuration.masterPort == 29501)
        #expect(configuration.runID == "job7")
        #expect(configuration.command == ["python3", "train.py", "--steps", "5"])
    }

    @Test(arguments: [
        ["--nproc-per-node", "3"], ["--nproc_per_node=3"], ["--local_worker_num", "3"], ["-n3"], ["--ranks=3"],
    ])
    func torchrunAndMsrunSpellingsOfTheRankCount(_ option: [String]) throws {
        #expect(try run(["run"] + option + ["python3", "x.py"]).ranks == 3)
    }

    @Test func msrunSpellings() throws {
        let configuration = try run(["run", "--master_addr", "h", "--master_port=1234", "--log_dir", "logs", "x"])
        #expect(configuration.masterAddress == "h" && configuration.masterPort == 1234 && configuration.runDirectory == "logs")
    }

    @Test func theCommandStartsAtTheFirstNonOption() throws {
        #expect(try run(["run", "-n", "2", "python3", "-u", "t.py", "-n", "9"]).command == ["python3", "-u", "t.py", "-n", "9"])
    }

    @Test func aPythonScriptRunsUnderPythonAsTorchrunRunsIt() throws {
        let host = CommandLineInterface.Host(environment: [:], processors: 1, nvidiaDevices: 0)
        func command(_ arguments: [String], on host: CommandLineInterface.Host = host) throws -> [String]? {
            guard case .run(let configuration) = try CommandLineInterface.parse(arguments, host: host) else { return nil }
            return configuration.command
        }
        #expect(try command(["run", "--nproc-per-node", "4", "train.py", "--x"]) == ["python3", "-u", "train.py", "--x"])
        #expect(try command(["run", "--", "dir/train.py"]) == ["python3", "-u", "dir/train.py"])
        #expect(try command(["run", "--no-python", "./train.py"]) == ["./train.py"])
        #expect(try command(["run", "--no_python", "-n", "2", "--", "./train.py"]) == ["./train.py"])
        #expect(try command(["run", "python3", "train.py"]) == ["python3", "train.py"])
        #expect(try command(["run", "./trainer", "x.py"]) == ["./trainer", "x.py"])
        let venv = CommandLineInterface.Host(environment: ["PYTHON_EXEC": "/opt/venv/bin/python"], processors: 1, nvidiaDevices: 0)
        #expect(try command(["run", "train.py"], on: venv) == ["/opt/venv/bin/python", "-u", "train.py"])
        #expect(RunConfiguration.jobName(of: ["python3", "-u", "examples/train.py"]) == "train")
        #expect(throws: CommandLineInterface.UsageError(message: "'--no-python' takes no value (see 'graceful run --help')")) {
            try command(["run", "--no-python=1", "train.py"])
        }
    }

    @Test(arguments: [
        ["run"], ["run", "-n", "2"], ["run", "-n"], ["run", "-n", "0", "x"], ["run", "-n", "two", "x"],
        ["run", "--grace", "-1", "x"], ["run", "--grace", "nan", "x"], ["run", "--kill-after", "soon", "x"],
        ["run", "--master-port", "70000", "x"], ["run", "--bogus", "x"], ["run", "--run-dir", "", "x"],
        ["run", "--control-file", "dir/", "x"], ["launch"], ["--bogus"], ["run", "--", ""],
    ])
    func usageErrorsAreOneLine(_ arguments: [String]) {
        do {
            _ = try CommandLineInterface.parse(arguments)
            Issue.record("\(arguments) parsed")
        } catch {
            #expect(!error.message.isEmpty && !error.message.contains("\n"))
        }
    }

    @Test(arguments: [("30", 30.0), ("0.5", 0.5), (".5", 0.5), ("007", 7.0), ("0", 0.0)])
    func secondsArePlainDecimal(_ text: String, _ seconds: Double) throws {
        #expect(try run(["run", "--grace", text, "x"]).policy.grace == seconds)
    }

    @Test(arguments: ["0x10", "1e3", "inf", "nan", "infinity", "+5", "-0", "5.", ".", "", " 5", "5 ", "1_0", "0x1p4", "٣"])
    func otherNumberSpellingsAreRefused(_ text: String) {
        #expect(throws: CommandLineInterface.UsageError.self) { try run(["run", "--grace", text, "x"]) }
        #expect(throws: CommandLineInterface.UsageError.self) { try run(["run", "-n", text, "x"]) }
    }

    @Test func theErrorNamesTheOptionAndTheValue() {
        #expect {
            try run(["run", "--grace", "0x10", "x"])
        } throws: { error in
            (error as? CommandLineInterface.UsageError)?.message.hasPrefix(#"--grace: "0x10" is not a number of seconds"#) == true
        }
        #expect {
            try run(["run", "--max-restarts", "+3", "x"])
        } throws: { error in
            (error as? CommandLineInterface.UsageError)?.message.hasPrefix(#"--max-restarts: "+3" is not a whole number"#) == true
        }
    }

    @Test func helpDocumentsEveryOption() throws {
        guard case .help(let text) = try CommandLineInterface.parse(["run", "--help"]) else {
            Issue.record("no help")
            return
        }
        for option in ["--ranks", "--nproc-per-node", "--local_worker_num", "--run-dir", "--log_dir", "--control-file",
                       "--grace", "--kill-after", "--master-addr", "--master_port", "--run-id", "--no-python", "EXIT CODES"] {
            #expect(text.contains(option), "help lacks \(option)")
        }
        #expect(try CommandLineInterface.parse(["--help"]) == .help(CommandLineInterface.overview))
    }
}
