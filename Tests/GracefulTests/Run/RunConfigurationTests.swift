import Testing

@testable import Graceful

@Suite struct RunConfigurationTests {
    @Test(arguments: [
        (["python3", "examples/python/train.py", "--lr", "0.1"], "train"),
        (["python3", "-u", "examples/python/torch_ddp.py"], "torch_ddp"),
        (["python3.11", "-m", "pkg.main"], "pkg.main"),
        (["python3", "-c", "print(1)"], "python3"),
        ([".build/release/swift-rank-example"], "swift-rank-example"),
        (["sh", "-c", "exit 0"], "sh"),
        (["/opt/odd name/run me!"], "runme"),
        (["python3", "..."], "job"),
    ])
    func eachJobGetsItsOwnDefaultRunDirectory(_ command: [String], _ job: String) {
        #expect(RunConfiguration.jobName(of: command) == job)
        #expect(RunConfiguration(command: command).effectiveRunDirectory == "graceful_run/" + job)
    }

    @Test func anExplicitRunDirectoryIsUsedAsItIs() {
        var configuration = RunConfiguration(command: ["python3", "train.py"])
        configuration.runDirectory = "out"
        #expect(configuration.effectiveRunDirectory == "out")
    }
}
