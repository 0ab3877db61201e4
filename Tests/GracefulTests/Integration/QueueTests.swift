import Foundation
import Glibc
import Testing

/// `graceful queue` end to end: real `queue run` processes, real child `graceful run`s, real files.
@Suite(.serialized) struct QueueTests {
    /// A task that records its parameters as its result; `mode` picks how it behaves.
    static let task = """
        #!/bin/sh
        case "$1" in
          flaky) [ "$GRACEFUL_TASK_ATTEMPT" -ge 3 ] || exit 5 ;;
          fail) echo "this task always fails" >&2; exit 3 ;;
          hang) exec sleep 300 ;;
          slow) case "$GRACEFUL_RUN_DIR" in *.copy) ;; *) exec sleep 300 ;; esac ;;
          sleep) sleep 1 ;;
          killworker) kill -9 "$(sed -n 's/.*"pid": \\([0-9]*\\).*/\\1/p' "${GRACEFUL_TASK_RESULT%.result}.claim")"; exit 0 ;;
        esac
        printf '{"task": "%s", "n": %s}\\n' "$GRACEFUL_TASK_ID" "$2" > "$GRACEFUL_TASK_RESULT"

        """

    func prepare() throws -> TemporaryDirectory {
        let directory = try TemporaryDirectory()
        try directory.write("task.sh", Self.task)
        chmod(directory.file("task.sh"), 0o755)
        return directory
    }

    func status(_ directory: TemporaryDirectory, _ queue: String = "sweep") throws -> [[String: Any]] {
        let launched = try Launched([Launched.graceful, "queue", "status", queue, "--json"], in: directory.path)
        #expect(try launched.waitForExit() == 0)
        let object = try JSONSerialization.jsonObject(with: Data(launched.stdout.utf8)) as? [String: Any]
        return object?["tasks"] as? [[String: Any]] ?? []
    }

    func outcomeFiles(_ directory: TemporaryDirectory) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: directory.file("sweep/tasks"))) ?? []
        return tasks.filter { FileManager.default.fileExists(atPath: directory.file("sweep/tasks/\($0)/outcome.json")) }.count
    }

    @Test func twentyTasksThreeWorkersEachFinishedOnce() throws {
        let directory = try prepare()
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=" + (1...20).map(String.init).joined(separator: ","),
                                "--workers", "3", "--", "./task.sh", "ok", "{n}"], in: directory.path)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.count(" finished in ") == 20)
        let tasks = try status(directory)
        #expect(tasks.count == 20)
        for task in tasks {
            #expect(task["state"] as? String == "finished")
            #expect(task["attempts"] as? Int == 1)
            let result = task["result"] as? [String: Any]
            #expect(result?["task"] as? String == task["id"] as? String)
            #expect("\(result?["n"] ?? "")" == (task["params"] as? [String: Any])?["n"] as? String)
        }
        #expect(outcomeFiles(directory) == 20)
        // A second run on the drained queue joins it, finds nothing to do, and changes nothing.
        let again = try Launched([Launched.graceful, "queue", "run", "sweep"], in: directory.path)
        #expect(try again.waitForExit() == 0)
        #expect(again.count(" started ") == 0)
    }

    @Test func failuresAreRetriedTimedOutOrRecordedWhileOthersGoOn() throws {
        let directory = try prepare()
        try directory.write("tasks.jsonl", """
            {"mode": "flaky", "n": 1}
            {"mode": "fail", "n": 2}

            {"mode": "hang", "n": 3}
            {"mode": "ok", "n": 4}

            """)
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--tasks", "tasks.jsonl", "--workers", "2",
                                "--max-attempts", "3", "--backoff", "0.1", "--timeout", "1.5", "--grace", "1", "--kill-after", "1",
                                "--", "./task.sh", "{mode}", "{n}"], in: directory.path)
        #expect(try run.waitForExit() == 1, "\(run.output)")
        let tasks = Dictionary(uniqueKeysWithValues: try status(directory).map { ($0["id"] as! String, $0) })
        #expect(tasks["task-000"]?["state"] as? String == "finished")
        #expect(tasks["task-000"]?["attempts"] as? Int == 3)
        #expect(tasks["task-001"]?["state"] as? String == "failed")
        // The exit status is the attempt's graceful run's: 1, a rank failed.
        #expect(tasks["task-001"]?["exit"] as? Int == 1)
        #expect(tasks["task-001"]?["reason"] as? String == "all 3 attempts failed (the last: exit 1)", "\(tasks["task-001"] ?? [:])")
        #expect(tasks["task-002"]?["state"] as? String == "failed")
        #expect(tasks["task-002"]?["reason"] as? String == "all 3 attempts failed (the last: timed out)", "\(tasks["task-002"] ?? [:])")
        #expect(tasks["task-003"]?["state"] as? String == "finished")
        let outcome = directory.read("sweep/tasks/task-001/outcome.json") ?? ""
        #expect(outcome.contains("this task always fails"), "the failed task's outcome keeps its log tail")
        #expect(directory.read("sweep/tasks/task-002/attempt_1.end")?.contains("timed out") == true)
        #expect(run.output.contains("task-000 attempt 1 failed (exit 1); retrying in 0.1s"))
    }

    @Test func anAttemptPastMaxMemoryIsStoppedAndRetried() throws {
        let directory = try prepare()
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "size=200", "--max-memory", "64M",
                                "--max-attempts", "2", "--backoff", "0.1", "--grace", "1", "--kill-after", "1", "--",
                                "python3", "-c", "import time; x = bytearray({size} << 20); x[::4096] = b'1' * len(x[::4096]); time.sleep(60)"],
                               in: directory.path)
        #expect(try run.waitForExit() == 1, "\(run.output)")
        #expect(directory.read("sweep/tasks/task-000/attempt_1.end")?.contains("more than --max-memory") == true)
        #expect(directory.read("sweep/tasks/task-000/attempt_2.end")?.contains("more than --max-memory") == true)
    }

    @Test func aKilledQueueRunLosesNoTaskAndNothingFinishesTwice() throws {
        let directory = try prepare()
        let arguments = ["queue", "run", "sweep", "--grid", "n=1,2,3,4,5,6", "--lease", "2", "--grace", "2", "--", "./task.sh", "sleep", "{n}"]
        let first = try Launched([Launched.graceful] + arguments + [], in: directory.path)
        try first.waitFor(" started ")
        let second = try Launched([Launched.graceful, "queue", "run", "sweep", "--host-id", "other-host", "--lease", "2"], in: directory.path)
        try second.waitFor(" started ")
        first.signal(SIGKILL)
        #expect(try first.waitForExit() == 128 + SIGKILL)
        #expect(try second.waitForExit(timeout: 60) == 0, "\(second.output)")
        #expect(second.output.contains("expired; taking it back"))
        let tasks = try status(directory)
        #expect(tasks.allSatisfy { $0["state"] as? String == "finished" })
        #expect(outcomeFiles(directory) == 6)
    }

    /// A task that kills the `queue run` running it (its claim names the pid) every time: the next
    /// run, on the same host, sees the holder gone and takes the task back, until the lease has
    /// expired `--max-lease-expiries` times; then the task is failed, not run again, and the queue
    /// goes on.
    @Test func aTaskThatKillsItsWorkerEveryTimeIsFailedAfterMaxLeaseExpiries() throws {
        let directory = try prepare()
        let arguments = [Launched.graceful, "queue", "run", "sweep", "--grid", "mode=killworker,ok", "--max-lease-expiries", "2",
                         "--", "./task.sh", "{mode}", "1"]
        var runs: [Launched] = []
        var exits: [Int32] = []
        while exits.count < 4 && exits.last.map({ $0 == 128 + SIGKILL }) ?? true {
            let run = try Launched(arguments, in: directory.path)
            exits.append(try run.waitForExit())
            runs.append(run)
        }
        #expect(exits == [128 + SIGKILL, 128 + SIGKILL, 1], "\(runs.map(\.output))")
        #expect(runs[1].output.contains("task-000: the lease of attempt 1 ("), "\(runs[1].output)")
        #expect(runs[1].output.contains("taking it back (1 of 2 lease expiries)"), "\(runs[1].output)")
        let last = runs[runs.count - 1]
        #expect(!last.output.contains("task-000 started"), "\(last.output)")
        #expect(last.output.contains("task-000 failed: its lease expired 2 times"), "\(last.output)")
        // The takeover is in the claim that made it; the outcome says why, and counts the expiries.
        let claims = ((try? FileManager.default.contentsOfDirectory(atPath: directory.file("sweep/tasks/task-000"))) ?? [])
            .filter { $0.hasSuffix(".claim") }
        #expect(claims.contains { directory.read("sweep/tasks/task-000/\($0)")?.contains("\"takeover\": ") == true }, "\(claims)")
        let outcome = (try? JSONSerialization.jsonObject(with: Data((directory.read("sweep/tasks/task-000/outcome.json") ?? "").utf8))) as? [String: Any]
        #expect(outcome?["state"] as? String == "failed" && outcome?["expired"] as? Int == 2, "\(outcome ?? [:])")
        #expect(outcome?["attempts"] as? Int == claims.count, "\(outcome ?? [:]) \(claims)")
        let tasks = Dictionary(uniqueKeysWithValues: try status(directory).map { ($0["id"] as! String, $0) })
        #expect(tasks["task-000"]?["state"] as? String == "failed")
        #expect((tasks["task-000"]?["reason"] as? String)?.hasPrefix("its lease expired 2 times: the worker running it died") == true,
                "\(tasks["task-000"] ?? [:])")
        #expect(tasks["task-001"]?["state"] as? String == "finished" && tasks["task-001"]?["reason"] is NSNull)
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }

    @Test func ctrlCPutsEveryRunningTaskBackAndTheNextRunResumesItBitForBit() throws {
        let directory = try prepare()
        let train = Launched.packageRoot + "/examples/python/train.py"
        let arguments = ["--grid", "seed=1,2,3", "--workers", "3", "--", "python3", train, "--steps", "80", "--step-time", "0.04",
                         "--log-every", "5", "--dim", "4", "--checkpoint-dir", "ckpt/{seed}", "--seed", "{seed}"]
        let interrupted = try Launched([Launched.graceful, "queue", "run", "sweep"] + arguments, in: directory.path)
        try interrupted.waitFor(" started ", count: 3)
        for task in ["task-000", "task-001", "task-002"] {
            let log = directory.file("sweep/logs/\(task)/attempt_1/console.log")
            let deadline = Date().addingTimeInterval(60)
            while !((try? String(contentsOfFile: log, encoding: .utf8))?.contains("step 10:") ?? false) && Date() < deadline {
                usleep(50_000)
            }
        }
        interrupted.signal(SIGINT)
        #expect(try interrupted.waitForExit() == 130, "\(interrupted.output)")
        var committed: [Int] = []
        for task in ["task-000", "task-001", "task-002"] {
            let record = directory.read("sweep/runs/\(task)/last_checkpoint.json") ?? ""
            let step = (try? JSONSerialization.jsonObject(with: Data(record.utf8)) as? [String: Any])?["step"] as? Int
            #expect(step != nil && step! < 80, "\(task) committed its stop: \(record)")
            committed.append(step ?? 0)
        }
        #expect(try status(directory).allSatisfy { $0["state"] as? String == "pending" })
        let resumed = try Launched([Launched.graceful, "queue", "run", "sweep", "--workers", "3"], in: directory.path)
        #expect(try resumed.waitForExit() == 0, "\(resumed.output)")
        for (index, task) in ["task-000", "task-001", "task-002"].enumerated() {
            let log = (try? String(contentsOfFile: directory.file("sweep/logs/\(task)/attempt_2/console.log"), encoding: .utf8)) ?? ""
            #expect(log.contains("(step \(committed[index]))"), "\(task) resumed from its committed step")
        }
        let reference = try prepare()
        let straight = try Launched([Launched.graceful, "queue", "run", "sweep"] + arguments, in: reference.path)
        #expect(try straight.waitForExit() == 0, "\(straight.output)")
        for seed in 1...3 {
            let resumedFinal = directory.read("ckpt/\(seed)/final_rank0.json")
            #expect(resumedFinal != nil && resumedFinal == reference.read("ckpt/\(seed)/final_rank0.json"))
        }
    }

    @Test func aStragglerCopyFinishesFirstAndTheOriginalIsStopped() throws {
        let directory = try prepare()
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "mode=slow", "--workers", "2", "--stragglers", "on",
                                "--grace", "1", "--", "./task.sh", "{mode}", "1"], in: directory.path)
        #expect(try run.waitForExit(timeout: 60) == 0, "\(run.output)")
        #expect(run.output.contains("straggler copy"))
        #expect(directory.read("sweep/tasks/task-000/outcome.json")?.contains("\"copy\": true") == true)
        #expect(run.output.contains("another copy finished the task first"))
    }

    @Test func gpusAutoGivesEachWorkerTheDeviceNvidiaSmiRanksBest() throws {
        let directory = try prepare()
        try directory.write("bin/nvidia-smi", "#!/bin/sh\nprintf '0, 100, 0\\n1, 9000, 5\\n'\n")
        chmod(directory.file("bin/nvidia-smi"), 0o755)
        let path = directory.file("bin") + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=1,2", "--workers", "2", "--gpus", "auto", "--",
                                "sh", "-c", "echo \"$CUDA_VISIBLE_DEVICES\" > \"$GRACEFUL_TASK_RESULT\""],
                               in: directory.path, environment: ["PATH": path])
        #expect(try run.waitForExit() == 0, "\(run.output)")
        let devices = try status(directory).map { "\($0["result"] ?? "")" }.sorted()
        #expect(devices == ["0", "1"])
        let none = try Launched([Launched.graceful, "queue", "run", "sweep2", "--grid", "n=1", "--gpus", "auto", "--", "true"],
                                in: directory.path, environment: ["PATH": "/usr/bin:/bin"])
        #expect(try none.waitForExit() == 0)
        #expect(none.count("no nvidia-smi answered") == 1)
    }

    /// Claims are not fsynced (README, "What the directory must provide"): one a crash of the machine
    /// left empty is a claim by an unknown holder, shown as such and taken back after the lease.
    @Test func aClaimACrashLeftEmptyIsTakenBackAfterTheLease() throws {
        let directory = try prepare()
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 1}\n")
        // The queue is made before the control file is read: exit 75, nothing run.
        let create = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=1", "--", "./task.sh", "ok", "{n}"], in: directory.path)
        #expect(try create.waitForExit() == 75, "\(create.output)")
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        try directory.write("sweep/tasks/task-000/attempt_1.claim", "")
        let shown = try status(directory)
        #expect(shown.first?["state"] as? String == "running" && shown.first?["worker"] as? String == "?", "\(shown)")
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--lease", "1"], in: directory.path)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(run.output.contains("task-000: the lease of attempt 1 (?) expired; taking it back"), "\(run.output)")
        #expect(directory.read("sweep/tasks/task-000/outcome.json")?.contains("\"attempt\": 2") == true)
    }

    @Test func badInputIsOneLineAndChangesNothing() throws {
        let directory = try prepare()
        try directory.write("bad.jsonl", "{\"n\": 1}\n[1, 2]\n")
        try directory.write("notaqueue/file", "x")
        let cases: [([String], Int32, String)] = [
            (["queue", "run", "sweep", "--grid", "lr0.1", "--", "./task.sh"], 64, "is not NAME=VALUE"),
            (["queue", "run", "sweep", "--tasks", "bad.jsonl", "--", "./task.sh"], 64, "bad.jsonl, line 2: not a JSON object"),
            (["queue", "run", "sweep", "--grid", "lr=1,2", "--", "./task.sh", "{rate}"], 64, "'{rate}' is no parameter"),
            (["queue", "run", "notaqueue", "--grid", "lr=1", "--", "./task.sh"], 65, "is not a queue"),
            (["queue", "status", "notaqueue"], 65, "is not a queue"),
        ]
        for (arguments, code, message) in cases {
            let launched = try Launched([Launched.graceful] + arguments, in: directory.path)
            #expect(try launched.waitForExit() == code, "\(arguments)")
            #expect(launched.stderr.contains(message) && launched.stderr.split(separator: "\n").count == 1, "\(launched.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("sweep")))
        let made = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=1", "--", "./task.sh", "ok", "{n}"], in: directory.path)
        #expect(try made.waitForExit() == 0)
        let before = directory.read("sweep/queue.json")
        let other = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=1,2", "--", "./task.sh", "ok", "{n}"], in: directory.path)
        #expect(try other.waitForExit() == 65)
        #expect(other.stderr.contains("another definition"))
        try directory.write("sweep/tasks/task-000/outcome.json", "{garbage")
        let corrupted = try Launched([Launched.graceful, "queue", "status", "sweep"], in: directory.path)
        #expect(try corrupted.waitForExit() == 65)
        #expect(corrupted.stderr.contains("outcome.json is corrupted"))
        #expect(directory.read("sweep/queue.json") == before)
    }
}
