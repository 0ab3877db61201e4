import Foundation
import Glibc
import Testing

@testable import Graceful

/// Defects an adversarial pass (hostile ranks, operators, filesystem and scheduler) found in the
/// hardened coordinator; each test reproduces one with real processes where it needs them, and
/// states the outcome the fixed coordinator must have.
@Suite(.serialized) struct AttackTests {
    static let fixtures = HardeningTests.fixtures
    static let graceful = Launched.graceful

    /// A rank using the Python client: prints `ready <rank> <resume step or none>`, trains 0.05 s a
    /// step, saves at a stop or checkpoint; rank 0 exits 3 once the file `fail_now` appears.
    static let trainingRank = #"""
        import os, sys, time
        from graceful_exit import Rank
        rank = Rank()
        print(f"ready {rank.rank} {rank.resume_step}", flush=True)
        step = rank.resume_step or 0
        while True:
            step += 1
            time.sleep(0.05)
            if rank.rank == 0 and os.path.exists("fail_now"):
                os.unlink("fail_now")
                sys.exit(3)
            stop = rank.should_stop(step)
            if stop or rank.should_checkpoint(step):
                path = f"ckpt_{rank.rank}_{step}"
                with open(path, "w") as f:
                    f.write(f"{step}\n")
                rank.checkpointed(step, path)
                if stop:
                    sys.exit(0)
        """#

    // MARK: - The control file, then a scheduler's first SIGTERM

    /// Defect: a stop requested by the control file, followed by the first stop signal (a scheduler
    /// that writes the control file and sends SIGTERM, an operator's Ctrl+C after a colleague's edit),
    /// was taken for a second request: "SIGTERM again", every rank SIGTERMed before it could save,
    /// nothing committed, exit 143. The first signal is the same request; only a second one hurries.
    @Test func theFirstSignalAfterAControlFileStopDoesNotEscalate() throws {
        let directory = try TemporaryDirectory()
        defer { HardeningTests.killLeftovers(directory.path) }
        let run = try HardeningTests.launchSlowSaving(in: directory, grace: 20, saveTime: 2)
        try directory.write("graceful_exit.json", #"{"GracefulExit": 1}"#)
        try run.waitFor("stop requested (control-file)")
        try run.waitFor("]: saving", count: 2)
        run.signal(SIGTERM)
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(HardeningTests.committedRecord(directory) != nil, "nothing committed:\n\(run.output)")
        #expect(!run.stderr.contains("SIGTERM again"), "\(run.stderr)")
    }

    /// The coordinator's view of the same: the first signal after a control-file stop sends nothing;
    /// a second one, past the debounce, sends SIGTERM.
    @Test func aSecondSignalAfterAControlFileStopStillEscalates() {
        var machine = Coordinator(rankCount: 1, policy: StopPolicy())
        let t0 = Instant(nanoseconds: 1_000_000_000)
        _ = machine.handle(.launched, now: t0)
        _ = machine.handle(.hello(rank: 0), now: t0)
        _ = machine.handle(.trigger(.controlFile), now: t0)
        let first = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0 + 0.1)
        #expect(!first.contains { if case .signal = $0 { true } else { false } }, "\(first)")
        #expect(first.contains(.report(.alreadyStopping(.signal(SignalNumber.terminate)))))
        let second = machine.handle(.trigger(.signal(SignalNumber.terminate)), now: t0 + 1)
        #expect(second.contains(.signal(rank: 0, SignalNumber.terminate)), "\(second)")
    }

    // MARK: - The guard, racing a rank that ends when the coordinator dies

    /// A rank that starts a child in a session of its own (its command line carries the marker,
    /// `$MARKER`), prints `pid <pid>`, then either trains with the client (`client`: it stops at the
    /// channel's end of file) or prints as fast as it can (`printer`: it dies of the broken pipe once
    /// nobody reads its output).
    static let endingRank = #"""
        import os, subprocess, sys, time
        subprocess.Popen(["setsid", sys.executable, "-c", "import time; time.sleep(300)", os.environ["MARKER"]])
        if os.environ["KIND"] == "client":
            from graceful_exit import Rank
            rank = Rank()
            print(f"pid {os.getpid()}", flush=True)
            step = 0
            while True:
                step += 1
                time.sleep(0.01)
                if rank.should_stop(step):
                    sys.exit(0)
        print(f"pid {os.getpid()}", flush=True)
        while True:
            print("tick", flush=True)
            time.sleep(0.001)
        """#

    /// The guard: the coordinator's child that leads a session of its own.
    static func guardPID(of coordinator: pid_t) -> pid_t? {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(coordinator)/task")) ?? []
        for task in tasks {
            let children = FileManager.default.contents(atPath: "/proc/\(coordinator)/task/\(task)/children")
                .map { String(decoding: $0, as: UTF8.self) } ?? ""
            for child in children.split(separator: " ").compactMap({ pid_t($0) }) {
                guard let stat = FileManager.default.contents(atPath: "/proc/\(child)/stat") else { continue }
                let text = String(decoding: stat, as: UTF8.self)
                guard let close = text.lastIndex(of: ")") else { continue }
                // After ")": state, parent, group, session.
                let fields = text[text.index(after: close)...].split(separator: " ")
                if fields.count > 3, pid_t(fields[3]) == child { return child }
            }
        }
        return nil
    }

    /// Defect: the coordinator's death closed the rank's channel and output pipes, so a rank ended on
    /// it (its client stops at end of file; a printing rank dies of the broken pipe) while the guard,
    /// woken by the same death, had not stopped it yet: its children went to init, where the guard's
    /// walk from the rank never finds them, and a `setsid` child outlived the job (about one run in
    /// five with a printing rank). The guard is made slow here, deterministically: stopped while the
    /// coordinator dies. It now holds the coordinator's ends of the channel and pipes, so nothing ends
    /// for the ranks until it has acted.
    @Test(arguments: ["client", "printer"])
    func aRankCannotEndOnTheCoordinatorsDeathBeforeTheGuardActs(kind: String) throws {
        let directory = try TemporaryDirectory()
        let marker = "graceful-attack-\(kind)-\(getpid())"
        defer { HardeningTests.killLeftovers(directory.path, marker: marker) }
        try directory.write("rank.py", Self.endingRank)
        let run = try Launched([Self.graceful, "run", "-n", "2", "--", "python3", "rank.py"], in: directory.path,
                               environment: ["MARKER": marker, "KIND": kind])
        try run.waitFor("]: pid ", count: 2)
        let ranks = [0, 1].compactMap { HardeningTests.printedPID(run, rank: $0, word: "pid") }
        #expect(ranks.count == 2)
        #expect(HardeningTests.waitUntil(timeout: 20) { processesAlive(containing: marker).count == 2 }, "the ranks' children")
        let guardProcess = try #require(Self.guardPID(of: run.pid))
        kill(guardProcess, SIGSTOP)
        run.signal(SIGKILL)
        _ = try? run.waitForExit(timeout: 30)
        // Before the fix the ranks ended within milliseconds of the coordinator; now they cannot,
        // and this wait runs out: the event it waits for is the defect.
        let ended = HardeningTests.waitUntil(timeout: 2) { ranks.allSatisfy(HardeningTests.hasEnded) }
        #expect(!ended, "the ranks ended before the guard could act")
        kill(guardProcess, SIGCONT)
        let left = HardeningTests.waitUntilNoProcessNaming(marker, timeout: 5)
        #expect(left.isEmpty, "processes of the job left behind: \(left)")
    }

    /// The same race left to chance, as it happens: a printing rank, its coordinator killed.
    @Test func aPrintingRankWhoseCoordinatorIsKilledLeavesNoChildBehind() throws {
        for attempt in 0..<3 {
            let directory = try TemporaryDirectory()
            let marker = "graceful-attack-printer-\(getpid())-\(attempt)"
            defer { HardeningTests.killLeftovers(directory.path, marker: marker) }
            try directory.write("rank.py", Self.endingRank)
            let run = try Launched([Self.graceful, "run", "-n", "2", "--", "python3", "rank.py"], in: directory.path,
                                   environment: ["MARKER": marker, "KIND": "printer"])
            // Its console drops rank lines it cannot pass on: the children are watched in /proc instead.
            #expect(HardeningTests.waitUntil(timeout: 20) { processesAlive(containing: marker).count == 2 }, "the ranks' children")
            run.signal(SIGKILL)
            _ = try? run.waitForExit(timeout: 30)
            let left = HardeningTests.waitUntilNoProcessNaming(marker, timeout: 5)
            #expect(left.isEmpty, "attempt \(attempt): processes of the job left behind: \(left)")
        }
    }

    /// The same child, then the rank sleeps (and dies of a SIGHUP, whose action is the default).
    static let sleeper = #"""
        import os, subprocess, sys, time
        subprocess.Popen(["setsid", sys.executable, "-c",
                          "import time; print('started', flush=True); time.sleep(300)", os.environ["MARKER"]])
        time.sleep(300)
        """#

    /// Defect (made certain by waiting for the coordinator's exit, above): a job paused with Ctrl+Z
    /// when the coordinator is killed has stopped members in every rank's process group, so the
    /// coordinator's exit makes the kernel hang up on them before the guard runs: the ranks die of
    /// SIGHUP and their `setsid` children escape. The guard is now handed every process of the job
    /// when it is paused.
    @Test func aPausedJobWhoseCoordinatorIsKilledLeavesNothingBehind() throws {
        let directory = try TemporaryDirectory()
        let marker = "graceful-attack-paused-\(getpid())"
        defer { HardeningTests.killLeftovers(directory.path, marker: marker) }
        try directory.write("sleeper.py", Self.sleeper)
        let run = try Launched([Self.graceful, "run", "-n", "2", "--", "python3", "sleeper.py"], in: directory.path,
                               environment: ["MARKER": marker])
        try run.waitFor("]: started", count: 2)
        #expect(HardeningTests.waitUntil(timeout: 10) { processesAlive(containing: marker).count == 2 }, "the ranks' children")
        run.signal(SIGTSTP)
        try run.waitFor("paused")
        #expect(HardeningTests.waitUntil(timeout: 10) {
            guard let stat = FileManager.default.contents(atPath: "/proc/\(run.pid)/stat") else { return false }
            return String(decoding: stat, as: UTF8.self).contains(") T ")
        }, "the coordinator did not stop itself")
        run.signal(SIGKILL)
        _ = try? run.waitForExit(timeout: 30)
        let left = HardeningTests.waitUntilNoProcessNaming(marker, timeout: 5)
        #expect(left.isEmpty, "processes of the paused job left behind: \(left)")
    }

    // MARK: - A run directory replaced during the run

    /// Defect: a run directory deleted during a run and recreated by a second run on the same path
    /// (a cleanup, then a relaunch) received the first run's commit, by path: a record of another job
    /// (here of another world size) in the second run's directory. One run per run directory: the
    /// first run's commit now fails (exit 2) and the second run's directory is left alone.
    @Test func aRunWhoseDirectoryWasReplacedNeverCommitsIntoTheNewOne() throws {
        let directory = try TemporaryDirectory()
        defer { HardeningTests.killLeftovers(directory.path) }
        try directory.write("rank.py", Self.trainingRank)
        let first = try Launched(
            [Self.graceful, "run", "-n", "2", "--run-dir", "rd", "--", "python3", "rank.py"], in: directory.path)
        try first.waitFor("]: ready", count: 2)
        try FileManager.default.removeItem(atPath: directory.file("rd"))
        let second = try Launched(
            [Self.graceful, "run", "-n", "3", "--run-dir", "rd", "--", "python3", "rank.py"], in: directory.path)
        try second.waitFor("]: ready", count: 3)
        first.signal(SIGINT)
        #expect(try first.waitForExit(timeout: 30) == 2, "\(first.output)")
        #expect(first.stderr.contains("was removed during the run"), "\(first.stderr)")
        #expect(directory.read("rd/last_checkpoint.json") == nil, "the first run committed into the second's directory")
        second.signal(SIGINT)
        #expect(try second.waitForExit(timeout: 30) == 0, "\(second.output)")
        #expect(directory.read("rd/last_checkpoint.json")?.contains("\"world_size\": 3") == true)
    }

    // MARK: - A restart after the record was damaged

    /// Defect: a restart read the record back from disk, and one that could not be read (edited,
    /// removed) silently relaunched every rank from scratch, right after graceful said "restart 1 of 1
    /// ..., from committed step N". A restart resumes from the commit the coordinator knows.
    @Test func aRestartResumesFromTheCommitEvenIfTheRecordWasDamaged() throws {
        let directory = try TemporaryDirectory()
        defer { HardeningTests.killLeftovers(directory.path) }
        try directory.write("rank.py", Self.trainingRank)
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--run-dir", "rd", "--max-restarts", "1", "--restart-backoff", "0.1", "--",
             "python3", "rank.py"], in: directory.path)
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGUSR2)
        try run.waitFor("committed step ")
        let committed = try #require(Self.committedStep(run.stderr))
        try directory.write("rd/last_checkpoint.json", #"{"version": 1, "step": "damaged"}"#)
        try directory.write("fail_now", "")
        try run.waitFor("restart 1: launching")
        try run.waitFor("]: ready", count: 4)
        run.signal(SIGINT)
        _ = try run.waitForExit(timeout: 30)
        #expect(run.stdout.contains("[rank0]: ready 0 \(committed)"), "\(run.stdout)")
        #expect(run.stdout.contains("[rank1]: ready 1 \(committed)"), "\(run.stdout)")
    }

    static func committedStep(_ text: String) -> Int? {
        guard let range = text.range(of: "committed step ") else { return nil }
        return Int(text[range.upperBound...].prefix { $0.isNumber })
    }

    // MARK: - A record edited by hand

    /// Defect: a record listing a rank twice was accepted: that rank resumed from the other's
    /// checkpoint path, and the rank left out resumed the step with no path at all.
    @Test func aRecordListingARankTwiceIsRefused() throws {
        let text = #"{"version": 1, "step": 7, "world_size": 2, "ranks": [{"rank": 0, "path": "a"}, {"rank": 0, "path": "b"}]}"#
        #expect(throws: CommitRecord.DecodingError.self) { try CommitRecord(contents: Array(text.utf8)) }
    }

    /// Defect: a `completed` marker of another type (`true`, `1`) read as "not completed", and the
    /// next launch silently resumed the finished run.
    @Test(arguments: ["true", "1", "{}"])
    func aCompletedMarkerOfAnotherTypeIsRefused(marker: String) throws {
        let text = #"{"version": 1, "step": 7, "world_size": 1, "completed": "# + marker + #", "ranks": [{"rank": 0, "path": null}]}"#
        #expect(throws: CommitRecord.DecodingError.self) { try CommitRecord(contents: Array(text.utf8)) }
    }

    @Test func aCompletedMarkerOfAnotherTypeStopsTheLaunch() throws {
        let directory = try TemporaryDirectory()
        defer { HardeningTests.killLeftovers(directory.path) }
        try directory.write("rd/last_checkpoint.json",
                            #"{"version": 1, "step": 7, "world_size": 1, "completed": true, "ranks": [{"rank": 0, "path": null}]}"#)
        let run = try Launched([Self.graceful, "run", "--run-dir", "rd", "--", "sh", "-c", "echo launched"], in: directory.path)
        #expect(try run.waitForExit(timeout: 30) == 65, "\(run.output)")
        #expect(!run.stdout.contains("launched"))
    }

    // MARK: - A rank flooding its channel with confirmations

    /// Defect: every `checkpointed` that did not count got its own warning line, so a rank writing
    /// them as fast as it could made graceful write twice as many bytes to its own stderr (a log file
    /// under nohup or a batch scheduler) without bound. One warning per rank per round now.
    @Test func aFloodOfConfirmationsThatDoNotCountIsWarnedOnce() throws {
        let directory = try TemporaryDirectory()
        defer { HardeningTests.killLeftovers(directory.path) }
        let flood = #"""
            import os, socket
            channel = socket.socket(fileno=3)
            channel.sendall(b'{"type":"hello","protocol":1,"pid":%d}\n' % os.getpid())
            lines = b'{"type":"checkpointed","step":5,"path":null}\n' * 1000
            for _ in range(50):
                channel.sendall(lines)
            """#
        try directory.write("flood.py", flood)
        let run = try Launched([Self.graceful, "run", "--", "python3", "flood.py"], in: directory.path)
        #expect(try run.waitForExit(timeout: 60) == 0, "\(run.output)")
        #expect(run.count("while no stop or checkpoint step was set") == 1, "\(run.stderr.prefix(2000))")
    }
}
