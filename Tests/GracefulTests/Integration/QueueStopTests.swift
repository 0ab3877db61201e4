import CGraceful
import Foundation
import Glibc
import Testing

/// `graceful queue run` stopped in the ways README ("graceful queue", "Stopping the sweep") lists,
/// `queue status` while a task runs, and `queue run` with a console nobody reads: real processes.
@Suite(.serialized) struct QueueStopTests {
    /// A rank that says hello, then never reaches a stop step (it never asks): only a SIGTERM ends
    /// it, and it leaves `<task>.sigterm` behind when one does.
    static let stubborn = """
        import os, signal, time
        import graceful_exit
        rank = graceful_exit.rank()
        def on_term(signum, frame):
            open(os.environ["GRACEFUL_TASK_ID"] + ".sigterm", "w").close()
            os._exit(143)
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)

        """

    func log(_ directory: TemporaryDirectory, _ task: String, attempt: Int = 1) -> String {
        directory.read("sweep/logs/\(task)/attempt_\(attempt)/console.log") ?? ""
    }

    /// Polls a file another process writes (the only view of it) until `condition` holds.
    @discardableResult
    func waitUntil(timeout: Double = 60, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() >= deadline { return false }
            usleep(20_000)
        }
        return true
    }

    func statusJSON(_ directory: TemporaryDirectory) throws -> (text: String, tasks: [[String: Any]], top: [String: Any]) {
        let launched = try Launched([Launched.graceful, "queue", "status", "sweep", "--json"], in: directory.path)
        #expect(try launched.waitForExit() == 0)
        let top = (try JSONSerialization.jsonObject(with: Data(launched.stdout.utf8)) as? [String: Any]) ?? [:]
        return (launched.stdout, top["tasks"] as? [[String: Any]] ?? [], top)
    }

    @Test func aSecondCtrlCPassesSigtermToEveryRunningTasksRanksAndPutsEachBack() throws {
        let directory = try TemporaryDirectory()
        try directory.write("stubborn.py", Self.stubborn)
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=1,2", "--workers", "2", "--grace", "30",
                                "--", "python3", "stubborn.py", "{n}"], in: directory.path)
        try run.waitFor(" started ", count: 2)
        let tasks = ["task-000", "task-001"]
        #expect(waitUntil { tasks.allSatisfy { log(directory, $0).contains("[rank0]: ready") } }, "\(run.output)")
        run.signal(SIGINT)
        try run.waitFor("SIGINT: stopping every running task gracefully")
        // Each attempt's graceful run asked its rank to stop; the rank answers but never gets there.
        #expect(waitUntil { tasks.allSatisfy { log(directory, $0).contains("stop requested") } }, "\(tasks.map { log(directory, $0) })")
        #expect(tasks.allSatisfy { !FileManager.default.fileExists(atPath: directory.file("\($0).sigterm")) }, "the first Ctrl+C reached a rank as SIGTERM")
        // A deliberate second Ctrl+C: one within 0.25 s of the first is the same request (README, "Signals").
        usleep(400_000)
        run.signal(SIGINT)
        #expect(try run.waitForExit() == 130, "\(run.output)")
        #expect(run.output.contains("SIGINT again: the running tasks' ranks get SIGTERM"), "\(run.output)")
        for task in tasks {
            #expect(FileManager.default.fileExists(atPath: directory.file("\(task).sigterm")), "\(task)'s rank got no SIGTERM")
            // Its graceful run was forced by the repeated signal and committed nothing: 128+SIGTERM.
            #expect(run.output.contains("\(task) stopped after "), "\(run.output)")
            let end = directory.read("sweep/tasks/\(task)/attempt_1.end") ?? ""
            #expect(end.contains("\"outcome\": \"released\"") && end.contains("the sweep was stopped"), "\(task): \(end)")
            #expect(directory.read("sweep/runs/\(task)/last_checkpoint.json") == nil, "\(task) committed although its rank never stopped")
        }
        #expect(run.count("(exit 143)") == 2, "\(run.output)")
        let (_, rows, _) = try statusJSON(directory)
        #expect(rows.map { $0["state"] as? String } == ["pending", "pending"])
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }

    @Test func theControlFileStopsEveryRunningTaskWhichCommitsAndIsPutBackExit143() throws {
        let directory = try TemporaryDirectory()
        try directory.write("stop.json", "{\"GracefulExit\": 0, \"note\": \"kept\"}\n")
        let train = Launched.packageRoot + "/examples/python/train.py"
        let arguments = ["--grid", "seed=1,2", "--workers", "2", "--control-file", "stop.json", "--",
                         "python3", train, "--steps", "60", "--step-time", "0.04", "--log-every", "5", "--dim", "4",
                         "--checkpoint-dir", "ckpt/{seed}", "--seed", "{seed}"]
        let run = try Launched([Launched.graceful, "queue", "run", "sweep"] + arguments, in: directory.path)
        try run.waitFor(" started ", count: 2)
        let tasks = ["task-000", "task-001"]
        #expect(waitUntil { tasks.allSatisfy { log(directory, $0).contains("step 10:") } }, "\(run.output)")
        try directory.replace("stop.json", with: "{\"GracefulExit\": 1, \"note\": \"kept\"}\n")
        #expect(try run.waitForExit() == 143, "\(run.output)")
        #expect(run.output.contains("stop.json: stopping every running task gracefully"), "\(run.output)")
        var committed: [String: Int] = [:]
        for task in tasks {
            let record = directory.read("sweep/runs/\(task)/last_checkpoint.json") ?? ""
            let step = (try? JSONSerialization.jsonObject(with: Data(record.utf8)) as? [String: Any])?["step"] as? Int
            #expect(step != nil && step! < 60, "\(task) committed its stop: \(record)")
            committed[task] = step
            // Its graceful run committed the stop and exited 0; the task is put back all the same.
            #expect(run.output.contains("\(task) stopped after ") && run.output.contains("(exit 0): the sweep was stopped"), "\(run.output)")
            #expect(directory.read("sweep/tasks/\(task)/attempt_1.end")?.contains("\"outcome\": \"released\"") == true)
        }
        let (_, rows, _) = try statusJSON(directory)
        #expect(rows.map { $0["state"] as? String } == ["pending", "pending"])
        // The flag is set back to 0, every other key kept: the next queue run starts, and resumes.
        let flag = directory.read("stop.json") ?? ""
        #expect(flag.contains("\"GracefulExit\": 0") && flag.contains("\"note\": \"kept\""), "\(flag)")
        let resumed = try Launched([Launched.graceful, "queue", "run", "sweep", "--workers", "2", "--control-file", "stop.json"],
                                   in: directory.path)
        #expect(try resumed.waitForExit() == 0, "\(resumed.output)")
        for task in tasks {
            #expect(log(directory, task, attempt: 2).contains("(step \(committed[task] ?? -1))"), "\(task) resumed from its committed step")
        }
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }

    @Test func statusShowsARunningTasksWorkerHostAttemptAndElapsedAndJSONHasItsExactShape() throws {
        let directory = try TemporaryDirectory()
        try directory.write("hang.sh", "#!/bin/sh\necho running\nexec sleep 300\n")
        chmod(directory.file("hang.sh"), 0o755)
        let started = time(nil)
        let run = try Launched([Launched.graceful, "queue", "run", "sweep", "--grid", "n=1,2", "--host-id", "statushost", "--grace", "2",
                                "--", "./hang.sh", "{n}"], in: directory.path)
        try run.waitFor("task-000 started ")
        let worker = "statushost/\(run.pid)/w0"

        let table = try Launched([Launched.graceful, "queue", "status", "sweep"], in: directory.path)
        #expect(try table.waitForExit() == 0)
        let lines = table.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "queue sweep: 2 tasks: 1 pending, 1 running, 0 finished, 0 failed", "\(table.stdout)")
        #expect(lines.dropFirst().first?.split(separator: " ", omittingEmptySubsequences: true)
            == ["TASK", "STATE", "ATTEMPTS", "WORKER", "ELAPSED", "EXIT", "PARAMS", "RESULT", "REASON"], "\(table.stdout)")
        // TASK STATE ATTEMPTS WORKER ELAPSED, no EXIT, PARAMS {"n": "1"} (two words), no RESULT, no REASON.
        let running = lines.first { $0.hasPrefix("task-000") }?.split(separator: " ", omittingEmptySubsequences: true).map(String.init) ?? []
        #expect(running.count == 7 && running[1] == "running" && running[2] == "1" && running[3] == worker, "\(table.stdout)")
        #expect(running.count == 7 && running[4].hasSuffix("s") && Int(running[4].dropLast()) != nil, "\(table.stdout)")
        #expect(running.suffix(2) == ["{\"n\":", "\"1\"}"], "\(table.stdout)")

        let (text, rows, top) = try statusJSON(directory)
        #expect(Array(top.keys) == ["tasks"])
        let keys: Set<String> = ["id", "params", "state", "attempts", "result", "exit", "reason", "worker", "host", "elapsed"]
        #expect(rows.count == 2 && rows.allSatisfy { Set($0.keys) == keys }, "\(text)")
        let row = rows.first ?? [:]
        #expect(row["id"] as? String == "task-000" && row["state"] as? String == "running" && row["attempts"] as? Int == 1)
        #expect(row["worker"] as? String == worker && row["host"] as? String == "statushost")
        #expect((row["params"] as? [String: Any])?["n"] as? String == "1")
        #expect(row["result"] is NSNull && row["exit"] is NSNull)
        let elapsed = row["elapsed"] as? Int
        #expect(elapsed != nil && elapsed! >= 0 && elapsed! <= Int(time(nil) - started) + 1, "\(text)")
        // The text itself: one task a line, keys in this order; a pending task's row, byte for byte.
        #expect(text.hasPrefix("{\"tasks\": [\n  {\"id\": \"task-000\", \"params\": {\"n\": \"1\"}, \"state\": \"running\", \"attempts\": 1, \"result\": null, \"exit\": null, \"reason\": null, \"worker\": \"\(worker)\", \"host\": \"statushost\", \"elapsed\": "), "\(text)")
        #expect(text.hasSuffix(",\n  {\"id\": \"task-001\", \"params\": {\"n\": \"2\"}, \"state\": \"pending\", \"attempts\": 0, \"result\": null, \"exit\": null, \"reason\": null, \"worker\": null, \"host\": null, \"elapsed\": null}\n]}\n"), "\(text)")

        run.signal(SIGINT)
        #expect(try run.waitForExit() == 130, "\(run.output)")
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }

    /// A terminal that stops reading must not freeze the queue: `queue run`'s stdout and stderr are a
    /// fifo nobody reads, whose buffer (one page) its first few lines fill.
    @Test func aConsoleNobodyReadsCannotFreezeTheQueue() throws {
        let directory = try TemporaryDirectory()
        let fifo = directory.file("console.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let reader = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        #expect(reader >= 0)
        defer { close(reader) }
        // F_SETPIPE_SZ: the smallest buffer a pipe can have, so a few start lines fill it.
        let size = fcntl(reader, 1031, 4096)
        #expect(size > 0 && size <= 8192, "F_SETPIPE_SZ: \(size)")
        // A long command makes long start lines.
        let padding = String(repeating: "x", count: 400)
        let run = try Launched(
            ["/bin/sh", "-c", #"exec "$@" >console.fifo 2>&1"#, "sh", Launched.graceful, "queue", "run", "sweep",
             "--grid", "n=" + (1...24).map(String.init).joined(separator: ","), "--workers", "3", "--",
             "sh", "-c", "echo {n} > \"$GRACEFUL_TASK_RESULT\"", padding],
            in: directory.path)
        // Its own pipes get nothing (both streams go to the fifo): wait for the process itself.
        let pidfd = graceful_pidfd_open(run.pid)
        #expect(pidfd >= 0)
        defer { close(pidfd) }
        var ready = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        let ended = poll(&ready, 1, 60_000) == 1
        #expect(ended, "queue run did not exit with its console unread")
        if !ended { kill(run.pid, SIGKILL) }
        #expect(try run.waitForExit(timeout: 10) == 0)
        let rows = (try? JSONSerialization.jsonObject(with: Data((try Launched([Launched.graceful, "queue", "status", "sweep", "--json"],
            in: directory.path).finished().utf8))) as? [String: Any])?["tasks"] as? [[String: Any]] ?? []
        #expect(rows.count == 24 && rows.allSatisfy { $0["state"] as? String == "finished" })
        // What the fifo holds is whole lines, starting with the first.
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = read(reader, &buffer, buffer.count)
        let held = count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
        #expect(held.hasPrefix("graceful queue: queue sweep: 24 tasks, 3 workers on "), "\(held.prefix(200))")
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }
}

extension Launched {
    /// Waits for the exit (0 expected by the caller) and returns stdout.
    func finished() throws -> String {
        _ = try waitForExit()
        return stdout
    }
}
