import Foundation
import Glibc
import Testing

/// The MindSpore example (examples/mindspore/train.py) under `graceful msrun`, with MindSpore
/// itself: two CPU workers and the scheduler, data parallel. Needs the virtual environment where
/// .ci/run installs MindSpore ($GRACEFUL_MS_VENV, else ~/.cache/graceful/venv-mindspore); without
/// it the tests are skipped, with the reason. The venv's bin comes first on PATH: msrun, and
/// graceful msrun, run the script with the `python` found there.
@Suite(.serialized) struct MindSporeTests {
    static let venv: String = {
        let environment = ProcessInfo.processInfo.environment
        if let venv = environment["GRACEFUL_MS_VENV"], !venv.isEmpty { return venv }
        return (environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()) + "/.cache/graceful/venv-mindspore"
    }()

    static let hasMindSpore: Bool = {
        guard let run = try? Launched([venv + "/bin/python", "-c", "import mindspore"], in: "/tmp") else { return false }
        return (try? run.waitForExit(timeout: 180)) == 0
    }()

    static let train = Launched.packageRoot + "/examples/mindspore/train.py"

    /// A TCP port nothing listens on now (the kernel's pick for port 0).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else { throw Launched.SpawnError(message: "no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// 60 steps (3 epochs of 20), worker 0 logging every 5.
    func launch(in directory: TemporaryDirectory) throws -> Launched {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return try Launched(
            [Launched.graceful, "msrun", "--worker_num=2", "--local_worker_num=2", "--master_port=\(try Self.freePort())",
             "--log_dir=logs", "--join=True", Self.train,
             "--epochs", "3", "--steps-per-epoch", "20", "--step-time", "0.02", "--log-every", "5"],
            in: directory.path, environment: ["PATH": Self.venv + "/bin:" + path, "OMP_NUM_THREADS": "1"])
    }

    /// The committed step of logs/last_checkpoint.json, after checking that both workers confirmed
    /// it with a checkpoint that exists.
    func committedStep(in directory: TemporaryDirectory) throws -> Int {
        let text = try #require(directory.read("logs/last_checkpoint.json"), "no commit record")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let step = try #require(record["step"] as? Int)
        let entries = try #require(record["ranks"] as? [[String: Any]])
        #expect(entries.count == 2)
        for entry in entries {
            let path = try #require(entry["path"] as? String)
            #expect(path.hasSuffix("/step_\(step).ckpt"), "\(path)")
            #expect(FileManager.default.fileExists(atPath: path.hasPrefix("/") ? path : directory.file(path)), "missing \(path)")
        }
        return step
    }

    /// Stops a 2-worker job once worker 0 logged step 10, checks the commit, then relaunches it:
    /// both workers resume at the committed step + 1 (inside its epoch) and train to the end.
    func stopThenResume(_ stop: (Launched, TemporaryDirectory) throws -> Void) throws {
        let directory = try TemporaryDirectory()
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        let first = try launch(in: directory)
        try first.waitFor("[rank0]: step 10:", timeout: 120)
        try stop(first, directory)
        #expect(try first.waitForExit(timeout: 90) == 0, "\(first.output)")
        let step = try committedStep(in: directory)
        #expect(step >= 10 && step < 60, "\(first.output)")
        #expect(first.stderr.contains("committed step \(step)"), "\(first.output)")
        #expect(first.count("stopping after step \(step), saved") == 2, "\(first.output)")
        #expect(directory.read("graceful_exit.json")?.contains("\"GracefulExit\": 0") == true, "the flag was not reset")
        #expect(waitUntilNoProcess(workingIn: directory.path, timeout: 10).isEmpty, "processes left behind")

        let second = try launch(in: directory)
        #expect(try second.waitForExit(timeout: 150) == 0, "\(second.output)")
        #expect(second.count("/checkpoints/mindspore/rank") >= 2, "\(second.output)")
        #expect(second.count("/step_\(step).ckpt (step \(step))") == 2, "\(second.output)")
        #expect(second.count("starting at step \(step + 1) of 60") == 2, "\(second.output)")
        #expect(second.count("trained to step 60") == 2, "\(second.output)")
        #expect(waitUntilNoProcess(workingIn: directory.path, timeout: 10).isEmpty, "processes left behind")
    }

    @Test(.enabled(if: hasMindSpore, "\(venv)/bin/python cannot import mindspore (.ci/run installs it: pip install mindspore \"numpy<2\")"))
    func theControlFileStopsBothWorkersAtOneCommittedStepAndTheyResume() throws {
        try stopThenResume { _, directory in
            try directory.replace("graceful_exit.json", with: "{\"GracefulExit\": 1}\n")
        }
    }

    @Test(.enabled(if: hasMindSpore, "\(venv)/bin/python cannot import mindspore (.ci/run installs it: pip install mindspore \"numpy<2\")"))
    func ctrlCStopsBothWorkersAtOneCommittedStepAndTheyResume() throws {
        try stopThenResume { job, _ in job.signal(SIGINT) }
    }

    /// msrun itself as the one rank: its worker, in a session of its own, gets SIGTERM at the stop and
    /// the grace to save (the client's standalone mode here), not a SIGKILL when msrun dies of the
    /// SIGTERM; nothing speaks to graceful, so nothing is committed (README, "Wrapping msrun instead").
    @Test(.enabled(if: hasMindSpore, "\(venv)/bin/python cannot import mindspore (.ci/run installs it: pip install mindspore \"numpy<2\")"))
    func wrappingMsrunGivesItsWorkerTheGraceToSave() throws {
        let directory = try TemporaryDirectory()
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let job = try Launched(
            [Launched.graceful, "run", "-n", "1", "--grace", "60", "--", "msrun", "--worker_num=1", "--local_worker_num=1",
             "--master_port=\(try Self.freePort())", "--log_dir=mslogs", "--join=True", Self.train,
             "--epochs", "3", "--steps-per-epoch", "20", "--step-time", "0.02", "--log-every", "5"],
            in: directory.path, environment: ["PATH": Self.venv + "/bin:" + path, "OMP_NUM_THREADS": "1"])
        try job.waitFor("[rank0]: step 10:", timeout: 120)
        job.signal(SIGTERM)
        #expect(try job.waitForExit(timeout: 90) == 0, "\(job.output)")
        let worker = directory.read("mslogs/worker_0.log") ?? ""
        let saved = try #require(worker.firstMatch(of: /stopping after step (\d+), saved (\S+)/), "the worker saved nothing:\n\(worker)")
        #expect(FileManager.default.fileExists(atPath: directory.file(String(saved.2))), "\(saved.2) is missing")
        #expect(Int(saved.1).map { $0 >= 10 && $0 < 60 } == true, "\(worker)")
        #expect(directory.read("graceful_run/msrun/last_checkpoint.json") == nil, "a commit without a confirmation")
        #expect(job.stderr.contains("process(es) the ranks left behind got SIGTERM"), "\(job.stderr)")
        #expect(waitUntilNoProcess(workingIn: directory.path, timeout: 10).isEmpty, "processes left behind")
    }
}
