import CGraceful
import Foundation
import Glibc
import Testing

/// Defects of the coordinator reproduced with real processes, signals, files and pipes; each test
/// states the outcome the fixed coordinator must have, and names the defect it covers. Tests that
/// need root (writing /proc/sys/kernel/ns_last_pid, mounting a tmpfs) are skipped, visibly, without it.
@Suite(.serialized) struct HardeningTests {
    static let fixtures = Launched.packageRoot + "/Tests/fixtures"
    static let soakRank = fixtures + "/soak_rank.py"
    static let graceful = Launched.graceful

    // MARK: - Helpers

    /// A fake rank speaking the wire protocol itself on its channel: `send`, `send_line`, `receive`.
    /// It says hello at once.
    static let wirePrelude = #"""
        import json, os, signal, socket, sys, time
        channel = socket.socket(fileno=int(os.environ["GRACEFUL_CHANNEL_FD"]))
        incoming = channel.makefile("rb")
        def send_line(data):
            channel.sendall(data + b"\n")
        def send(message):
            send_line(json.dumps(message).encode())
        def receive(kind):
            for line in incoming:
                message = json.loads(line)
                if message.get("type") == kind:
                    return message
            sys.exit("channel closed before " + kind)
        send({"type": "hello", "protocol": 1, "pid": os.getpid()})

        """#

    /// SIGKILL to every process working in `directory` or naming `marker`: a failing test leaves nothing.
    static func killLeftovers(_ directory: String, marker: String? = nil) {
        for pid in processes(workingIn: directory) { kill(pid, SIGKILL) }
        if let marker { for pid in processesAlive(containing: marker) { kill(pid, SIGKILL) } }
    }

    /// Polls (the only view of unrelated processes and files) until `condition` holds or `timeout` passed.
    @discardableResult
    static func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() >= deadline { return false }
            usleep(20_000)
        }
        return true
    }

    static func waitUntilNoProcessNaming(_ marker: String, timeout: Double = 5) -> [Int32] {
        var left: [Int32] = []
        waitUntil(timeout: timeout) {
            left = processesAlive(containing: marker)
            return left.isEmpty
        }
        return left
    }

    /// The resident memory of `pid` in KiB, or nil when it is gone.
    static func residentKiB(_ pid: pid_t) -> Int? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/status") else { return nil }
        let line = String(decoding: data, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
        return line.flatMap { Int($0.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]) }
    }

    /// Whether `pid` has ended (a zombie not yet reaped counts as ended).
    static func hasEnded(_ pid: pid_t) -> Bool {
        guard let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return true }
        return String(decoding: stat, as: UTF8.self).contains(") Z ")
    }

    /// Beyond this resident size (KiB) a coordinator piling up a flood is killed by the test.
    static let memoryKillKiB = 256 * 1024

    /// Waits up to `timeout` for `run` to end while watching its memory: a coordinator that buffers a
    /// flood without bound is killed at `killAboveKiB` so it cannot take the machine down. Returns the
    /// exit code, or nil when it did not end in time (it is killed then), and the largest VmRSS seen.
    static func waitForExit(_ run: Launched, timeout: Double, killAboveKiB: Int = memoryKillKiB) throws -> (code: Int32?, peakKiB: Int) {
        var peak = 0
        let ended = waitUntil(timeout: timeout) {
            if let rss = residentKiB(run.pid) { peak = max(peak, rss) }
            if peak > killAboveKiB { kill(run.pid, SIGKILL) }
            return hasEnded(run.pid)
        }
        if !ended {
            kill(run.pid, SIGKILL)
            _ = try? run.waitForExit(timeout: 10)
            return (nil, peak)
        }
        return (try run.waitForExit(timeout: 30), peak)
    }

    /// Runs a short command to its end; its exit code.
    @discardableResult
    static func runQuietly(_ arguments: [String], in directory: String = "/") -> Int32 {
        guard let launched = try? Launched(arguments, in: directory) else { return -1 }
        return (try? launched.waitForExit(timeout: 30)) ?? -1
    }

    /// The pid printed by a rank as `[rankN]: <word> <pid>`.
    static func printedPID(_ run: Launched, rank: Int, word: String) -> pid_t? {
        let prefix = "[rank\(rank)]: \(word) "
        return run.stdout.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { pid_t($0.dropFirst(prefix.count)) }
    }

    static func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func isSymlink(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFLNK
    }

    static func committedRecord(_ directory: TemporaryDirectory) -> [String: Any]? {
        guard let text = directory.read(directory.run("last_checkpoint.json")) else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
    }

    // Runtime capabilities, for the tests that need root.

    static let canSetNextPID: Bool = {
        let fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // Writing the current value changes nothing but proves the capability.
        guard let current = FileManager.default.contents(atPath: "/proc/sys/kernel/ns_last_pid") else { return false }
        return current.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == current.count
    }()

    static let canMountTmpfs: Bool = {
        guard geteuid() == 0, let probe = try? TemporaryDirectory() else { return false }
        guard runQuietly(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe.path]) == 0 else { return false }
        runQuietly(["umount", probe.path])
        return true
    }()

    static let hardOpenFilesLimit: rlim_t = {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return limit.rlim_max
    }()

    /// Makes the next pid of this namespace `wanted` and spawns there a stranger (`sleep 300`, leader of
    /// a process group of its own, a child of the test); nil when other processes kept taking the pid.
    static func spawnStranger(at wanted: pid_t) -> pid_t? {
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(null) }
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("300"), nil]
        let envp: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/bin:/bin"), nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        // Any fork elsewhere (another test's) between setting ns_last_pid and ours takes the pid;
        // while that process holds it, wait for it to go, within a bound.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if access("/proc/\(wanted)", F_OK) == 0 {
                usleep(20_000)
                continue
            }
            let fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY)
            guard fd >= 0 else { return nil }
            let text = Array("\(wanted - 1)".utf8)
            _ = write(fd, text, text.count)
            close(fd)
            var pid: pid_t = 0
            guard graceful_spawn("/bin/sleep", argv, envp, [null, null, null], 3, 0, -1, &pid) == 0 else { return nil }
            if pid == wanted { return pid }
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        return nil
    }

    // MARK: - 1. Pid reuse

    /// Defect: the teardown signals a rank's process group by the rank's pid even after the rank has
    /// exited and been reaped, so a stranger that got the same pid (and leads its own group) is SIGKILLed
    /// ("killed processes left behind").
    @Test(.enabled(if: HardeningTests.canSetNextPID, "needs root: writes /proc/sys/kernel/ns_last_pid to reuse a pid"))
    func aStrangerThatReusesAnExitedRanksPidIsNeverSignalled() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = #"""
            if [ "$RANK" = 0 ]; then echo "early $$"; exit 0; fi
            echo ready
            exec sleep 300
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--grace", "2", "--kill-after", "1", "--", "sh", "-c", script], in: directory.path)
        try run.waitFor("[rank1]: ready")
        try run.waitFor("[rank0]: early ")
        let rank0 = try #require(Self.printedPID(run, rank: 0, word: "early"))
        #expect(Self.waitUntil(timeout: 10) { !Self.fileExists("/proc/\(rank0)") }, "rank 0 was not reaped")
        let stranger = try #require(Self.spawnStranger(at: rank0), "could not get pid \(rank0) for the stranger")
        defer {
            kill(stranger, SIGKILL)
            var status: Int32 = 0
            waitpid(stranger, &status, 0)
        }
        run.signal(SIGTERM)
        _ = try run.waitForExit(timeout: 30)
        var status: Int32 = 0
        #expect(waitpid(stranger, &status, WNOHANG) == 0, "the stranger with rank 0's old pid was killed:\n\(run.output)")
    }

    // MARK: - 2. A flooding rank

    /// Defect: a rank's pipe is read until it is empty, which a flooding rank never lets happen: the
    /// event loop never gets to the SIGTERM, and the lines pile up in memory.
    @Test func aFloodingRankCannotFreezeTheCoordinatorNorGrowItsMemory() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Self.launchFlooding(#"if [ "$RANK" = 0 ]; then exec yes; fi; echo ready; exec sleep 300"#, in: directory)
        let log = directory.file("graceful_run/sh/rank_0.log")
        // The flood shows in rank 0's log, or in the coordinator's memory when it piles lines up; one
        // that passes the hard limit is killed at once so the machine is spared.
        let flooding = Self.waitUntil(timeout: 20) {
            let size = (try? FileManager.default.attributesOfItem(atPath: log)[.size] as? Int) ?? 0
            let rss = Self.residentKiB(run.pid) ?? 0
            if rss > Self.memoryKillKiB { kill(run.pid, SIGKILL) }
            return size > 1 << 20 || rss > 64 * 1024 || Self.hasEnded(run.pid)
        }
        #expect(flooding, "the flood never showed")
        // Samples while it floods: the pace is the measurement's, not a synchronisation.
        var samples: [Int] = []
        for _ in 0..<8 {
            guard let rss = Self.residentKiB(run.pid), !Self.hasEnded(run.pid) else { break }
            samples.append(rss)
            if rss > Self.memoryKillKiB {
                kill(run.pid, SIGKILL)
                break
            }
            usleep(250_000)
        }
        #expect(!samples.isEmpty && samples.allSatisfy { $0 <= 64 * 1024 }, "VmRSS while flooding (KiB): \(samples)")
        run.signal(SIGTERM)
        let (code, peak) = try Self.waitForExit(run, timeout: 15)
        #expect(code == 0, "exit \(String(describing: code)), peak VmRSS \(peak) KiB:\n\(run.stderr)")
        #expect(peak <= 64 * 1024, "peak VmRSS \(peak) KiB")
    }

    /// Two ranks of `script` under graceful, whose console goes to /dev/null: the test must not hold
    /// a flood in its own memory.
    static func launchFlooding(_ script: String, in directory: TemporaryDirectory) throws -> Launched {
        try Launched(
            ["/bin/sh", "-c", #"exec "$@" >/dev/null"#, "sh", graceful, "run", "-n", "2", "--grace", "2", "--kill-after", "1",
             "--", "sh", "-c", script],
            in: directory.path)
    }

    /// Defect: once every rank has exited, what is left in the pipes is drained until it is empty, which
    /// a background `yes` holding the rank's stdout never lets happen: the run never ends.
    @Test func aBackgroundFloodLeftByAnExitedRankDoesNotKeepTheRunAlive() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        // Rank 1 runs a second longer (the scenario, not a synchronisation): every rank has ended only
        // once the flood holds rank 0's pipe.
        let run = try Self.launchFlooding(#"if [ "$RANK" = 0 ]; then yes & exit 0; fi; sleep 1; exit 0"#, in: directory)
        let (code, peak) = try Self.waitForExit(run, timeout: 15)
        #expect(code == 0, "exit \(String(describing: code)), peak VmRSS \(peak) KiB:\n\(run.stderr)")
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty, "the job's yes is still running")
    }

    // MARK: - 3. A blocked console

    /// Defect: graceful writes its console with blocking writes; a stdout nobody reads freezes the whole
    /// coordinator (no signal handled, no rank output read, ranks blocked on their pipes).
    @Test func aConsoleNobodyReadsCannotFreezeTheCoordinatorAndTheLogKeepsEveryLine() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let fifo = directory.file("console.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let reader = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        #expect(reader >= 0)
        defer { close(reader) }
        let lines = 200_000
        let script = """
            import time
            for i in range(\(lines)):
                print(i)
            open("printed", "w").close()
            time.sleep(1000)
            """
        let run = try Launched(
            ["/bin/sh", "-c", #"exec "$@" >console.fifo"#, "sh", Self.graceful, "run", "-n", "1", "--grace", "2",
             "--kill-after", "1", "--", "python3", "-c", script],
            in: directory.path)
        let printed = Self.waitUntil(timeout: 20) { Self.fileExists(directory.file("printed")) }
        #expect(printed, "the rank could not print its \(lines) lines: the coordinator stopped reading it")
        run.signal(SIGTERM)
        let (code, _) = try Self.waitForExit(run, timeout: 15)
        #expect(code != nil, "graceful did not exit with its console blocked")
        if printed {
            let log = directory.read(directory.run("rank_0.log")) ?? ""
            let numbers = log.split(separator: "\n").compactMap { Int($0) }
            #expect(numbers == Array(0..<lines), "rank_0.log holds \(numbers.count) of the \(lines) lines")
        }
        // Its own lines go to stderr, which is read: they say how many rank lines stdout lost.
        #expect(run.stderr.contains("dropped from the console"), "the console does not say lines were dropped:\n\(run.stderr)")
    }

    // MARK: - 4. A control-file stop during a failed gang's teardown

    /// Defect: while a failed gang is torn down, only a signal cancels the restart; the control file is
    /// ignored, the gang is relaunched and the flag is never reset.
    @Test func aControlFileStopDuringAFailedGangsTeardownCancelsTheRestart() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        let script = #"""
            if [ "$RANK" = 1 ]; then
                trap '' TERM
                touch rank1_ready
                echo ready
                while :; do sleep 1; done
            fi
            while [ ! -e rank1_ready ]; do sleep 0.02; done
            echo "rank 0 fails"
            exit 3
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--max-restarts", "1", "--kill-after", "3", "--restart-backoff", "0.02",
             "--", "sh", "-c", script],
            in: directory.path)
        try run.waitFor("rank 0 failed")
        try directory.replace("graceful_exit.json", with: "{\"GracefulExit\": 1}\n")
        #expect(try run.waitForExit(timeout: 30) == 1, "\(run.output)")
        #expect(!run.stderr.contains("restart 1: launching"), "the gang was relaunched:\n\(run.stderr)")
        let headers = (directory.read(directory.run("rank_0.log")) ?? "").components(separatedBy: "=== graceful run").count - 1
        #expect(headers == 1, "rank 0 was launched \(headers) times")
        #expect(directory.read("graceful_exit.json")?.contains("\"GracefulExit\": 0") == true, "the flag was not reset")
    }

    // MARK: - 5. A rank in the coordinator's own process group

    /// Defect: ranks are signalled only through their own process group; a rank that moved into the
    /// coordinator's group and ignores SIGTERM is never killed, and the coordinator waits for it forever.
    @Test func aRankThatJoinsTheCoordinatorsGroupAndIgnoresSigtermIsStillKilled() throws {
        let directory = try TemporaryDirectory()
        let marker = directory.path + "/group-joiner"
        defer { Self.killLeftovers(directory.path, marker: marker) }
        let script = """
            import os, signal, time
            os.setpgid(0, os.getpgid(os.getppid()))
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ready", flush=True)
            while True:
                time.sleep(1000)
            """
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "1", "--kill-after", "1", "--", "python3", "-c", script, marker],
            in: directory.path)
        try run.waitFor("[rank0]: ready")
        run.signal(SIGTERM)
        let (code, _) = try Self.waitForExit(run, timeout: 15)
        #expect(code != nil, "graceful did not exit:\n\(run.output)")
        #expect(Self.waitUntilNoProcessNaming(marker).isEmpty, "the rank is still alive")
    }

    // MARK: - 6. SIGQUIT, SIGABRT, SIGSEGV

    /// Defect: these signals do not end the coordinator the way they should (the runtime's crash
    /// handling swallows or delays them), or ranks outlive it. Expected: SIGQUIT 131, SIGABRT 134, and
    /// for SIGSEGV an end of any kind; never a rank left.
    @Test(arguments: [(SIGQUIT, Int32(131)), (SIGABRT, Int32(134)), (SIGSEGV, Int32(-1))])
    func quitAbortAndSegvEndTheCoordinatorAndLeaveNoRank(_ signal: Int32, _ expected: Int32) throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--grace", "2", "--kill-after", "1",
             "--", "sh", "-c", "echo ready; while :; do sleep 1; done"],
            in: directory.path)
        try run.waitFor("]: ready", count: 2)
        run.signal(signal)
        let (code, _) = try Self.waitForExit(run, timeout: 20)
        #expect(code != nil, "graceful did not end on signal \(signal):\n\(run.output)")
        if expected >= 0 { #expect(code == expected, "\(run.output)") }
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty, "ranks left after signal \(signal)")
    }

    /// Two ranks of `slow_save_rank.py`, which take `saveTime` seconds to save, once both are ready:
    /// a stop lasts long enough for signals to land inside it.
    static func launchSlowSaving(in directory: TemporaryDirectory, grace: Int, saveTime: Double) throws -> Launched {
        let run = try Launched(
            [graceful, "run", "-n", "2", "--grace", String(grace), "--kill-after", "1", "--", "python3", fixtures + "/slow_save_rank.py"],
            in: directory.path, environment: ["SAVE_TIME": String(saveTime)])
        try run.waitFor("]: ready", count: 2)
        return run
    }

    // MARK: - 7. Signal storms

    /// Defect: the debounce counts from the last signal that counted, so a storm spread over more than
    /// 0.25 s (100 SIGTERMs 17 ms apart) escalates ("again") instead of being one stop.
    @Test func aSignalStormSpreadOverTimeIsOneStop() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Self.launchSlowSaving(in: directory, grace: 10, saveTime: 2.5)
        // The storm's pace is the scenario (a scheduler repeating its signal), not a synchronisation.
        for _ in 0..<100 {
            run.signal(SIGTERM)
            usleep(17_000)
        }
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(Self.committedRecord(directory) != nil, "nothing committed")
        #expect(!run.stderr.contains("again"), "the storm escalated:\n\(run.stderr)")
    }

    /// Not a defect today: a second Ctrl+C half a second after the stop was requested still escalates.
    @Test func aSecondSigintHalfASecondLaterStillEscalates() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Self.launchSlowSaving(in: directory, grace: 10, saveTime: 5)
        run.signal(SIGINT)
        try run.waitFor("stop requested")
        usleep(500_000)  // the gap between the two Ctrl+C is the scenario
        run.signal(SIGINT)
        try run.waitFor("again", timeout: 10)
        _ = try run.waitForExit(timeout: 30)
    }

    // MARK: - 8. A huge position

    /// Defect: `T = 1 + position` overflows for a position of Int64.max and the coordinator traps.
    @Test func aPositionOfInt64MaxIsRejectedWithoutACrash() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = Self.wirePrelude + """
            print("ready", flush=True)
            stop = receive("stop")
            send({"type": "position", "id": stop["id"], "step": 9223372036854775807})
            while True:
                time.sleep(1000)
            """
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "2", "--kill-after", "1", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("[rank0]: ready")
        run.signal(SIGTERM)
        let code = try run.waitForExit(timeout: 30)
        #expect(code == 2, "\(run.output)")
        #expect(run.stderr.contains("warning"), "no warning about the position:\n\(run.stderr)")
    }

    // MARK: - 9. A full filesystem and a truncated run directory

    /// Defect: the doorbell is a sparse file mapped shared; on a full filesystem the first store into it
    /// raises SIGBUS in the coordinator (or a rank). Expected: a clear refusal (73) or a run, never SIGBUS.
    @Test(.enabled(if: HardeningTests.canMountTmpfs, "needs root: mounts a tiny tmpfs and fills it"))
    func aFullFilesystemUnderTheRunDirectoryNeverKillsWithSigbus() throws {
        let full = try FullTmpfs()
        defer { withExtendedLifetime(full) {} }
        let directory = full.directory
        full.fill()
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--run-dir", "full/run", "--grace", "3", "--kill-after", "1",
             "--", "python3", Self.soakRank],
            in: directory.path, environment: ["STEP_TIME": "0.01"])
        if (try? run.waitFor("]: ready", count: 2, timeout: 30)) != nil {
            run.signal(SIGTERM)
        }
        let code = try run.waitForExit(timeout: 30)
        #expect(code != 128 + SIGBUS, "graceful died of SIGBUS:\n\(run.output)")
        #expect([0, 2, 73].contains(code), "exit \(code):\n\(run.output)")
        #expect(!run.output.contains("SIGBUS"), "a rank died of SIGBUS:\n\(run.output)")
    }

    /// A full filesystem under a run directory used before: its lock is already there, and rewriting
    /// the pid in it reuses the block it frees, so only a write that needs a new block tells. Expected:
    /// 73 before any rank starts, the lock's pid still readable.
    @Test(.enabled(if: HardeningTests.canMountTmpfs, "needs root: mounts a tiny tmpfs and fills it"))
    func aFullFilesystemIsRefusedBeforeLaunchWhenTheLockIsAlreadyThere() throws {
        let full = try FullTmpfs()
        defer { withExtendedLifetime(full) {} }
        let (directory, mountPoint) = (full.directory, full.mountPoint)
        try "1\n".write(toFile: mountPoint + "/run/lock", atomically: false, encoding: .utf8)
        full.fill()
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--run-dir", "full/run", "--", "touch", directory.file("started")],
            in: directory.path)
        let code = try run.waitForExit(timeout: 30)
        #expect(code == 73, "exit \(code):\n\(run.output)")
        #expect(run.output.contains("cannot write in"), "\(run.output)")
        #expect(!FileManager.default.fileExists(atPath: directory.file("started")), "a rank started")
        let lock = try String(contentsOfFile: mountPoint + "/run/lock", encoding: .utf8)
        #expect(lock.hasSuffix("\n") && Int32(lock.dropLast()) != nil, "the lock holds \(lock.debugDescription)")
    }

    /// A 64 KiB tmpfs mounted at `full/` of a temporary directory, with `full/run/` in it; when it
    /// goes, the processes working in the directory are killed and it is unmounted.
    final class FullTmpfs {
        let directory: TemporaryDirectory
        let mountPoint: String

        init() throws {
            directory = try TemporaryDirectory()
            mountPoint = directory.file("full")
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try #require(HardeningTests.runQuietly(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mountPoint]) == 0)
            try FileManager.default.createDirectory(atPath: mountPoint + "/run", withIntermediateDirectories: true)
        }

        /// Fills it to the last byte.
        func fill() {
            let fd = open(mountPoint + "/fill", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
            let page = [UInt8](repeating: 0x55, count: 4096)
            while write(fd, page, page.count) > 0 {}
            while write(fd, page, 1) > 0 {}
            close(fd)
        }

        deinit {
            HardeningTests.killLeftovers(directory.path)
            HardeningTests.runQuietly(["umount", "-l", mountPoint])
        }
    }

    /// Defect: the doorbell file truncated under a running job makes every access to its mapping raise
    /// SIGBUS (coordinator and ranks). Expected: the ranks keep working and the stop commits.
    @Test func truncatingEveryFileOfTheRunDirectoryDuringARunChangesNothing() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--grace", "5", "--kill-after", "1", "--", "python3", Self.soakRank],
            in: directory.path, environment: ["STEP_TIME": "0.01"])
        try run.waitFor("]: ready", count: 2)
        let runDirectory = directory.file("graceful_run/soak_rank")
        for name in try FileManager.default.contentsOfDirectory(atPath: runDirectory) {
            var info = stat()
            let path = runDirectory + "/" + name
            if lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG { truncate(path, 0) }
        }
        try directory.replace("graceful_exit.json", with: "{\"GracefulExit\": 1}\n")
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(Self.committedRecord(directory)?["step"] as? Int != nil, "nothing committed")
    }

    // MARK: - 10. One run per run directory

    /// Defect: nothing stops a second coordinator from using a run directory in use: it replaces the
    /// doorbell, appends to the same logs and may overwrite the record. Expected: 69 at once, naming
    /// the pid of the coordinator that holds the directory.
    @Test func aSecondRunOnTheSameRunDirectoryIsRefused() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let command = [Self.graceful, "run", "-n", "2", "--grace", "5", "--kill-after", "1", "--", "python3", Self.soakRank]
        let first = try Launched(command, in: directory.path, environment: ["STEP_TIME": "0.01"])
        try first.waitFor("]: ready", count: 2)
        let second = try Launched(command, in: directory.path, environment: ["STEP_TIME": "0.01"])
        let code = try? second.waitForExit(timeout: 10)
        #expect(code == 69, "the second run was not refused (exit \(String(describing: code))):\n\(second.output)")
        #expect(second.stderr.contains(String(first.pid)), "the refusal does not name pid \(first.pid):\n\(second.stderr)")
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 30) == 0, "\(first.output)")
        #expect(FaultInjectionTests.invariantViolation(in: directory.path, ranks: 2) == nil)
        #expect(Self.committedRecord(directory) != nil)
    }

    /// Defect: a rank that runs `graceful run` itself in the same directory gets a second coordinator on
    /// the same default run directory. Expected: the inner one is refused (69); the outer run stops
    /// normally and can be relaunched from its commit.
    /// A run inside a rank gets its own default directory when it runs another job, and is refused
    /// (69) when it would share the outer run's.
    @Test func aNestedRunOnTheSameRunDirectoryIsRefusedAndTheOuterRunIsIntact() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = #"""
            if [ "$RANK" = 0 ]; then
                "$GRACEFUL_BIN" run -n 1 -- sh -c true >/dev/null 2>&1
                echo "same job exit $?"
                "$GRACEFUL_BIN" run -n 1 -- true >/dev/null 2>&1
                echo "other job exit $?"
            fi
            exec python3 "$SOAK_RANK"
            """#
        let command = [Self.graceful, "run", "-n", "2", "--grace", "5", "--kill-after", "1", "--", "sh", "-c", script]
        let environment = ["GRACEFUL_BIN": Self.graceful, "SOAK_RANK": Self.soakRank, "STEP_TIME": "0.01"]
        let first = try Launched(command, in: directory.path, environment: environment)
        try first.waitFor("]: ready", count: 2)
        #expect(first.stdout.contains("[rank0]: same job exit 69"), "\(first.stdout)")
        #expect(first.stdout.contains("[rank0]: other job exit 0"), "\(first.stdout)")
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 30) == 0, "\(first.output)")
        #expect(FaultInjectionTests.invariantViolation(in: directory.path, ranks: 2, job: "sh") == nil)

        let again = try Launched(command, in: directory.path, environment: environment)
        try? again.waitFor("]: ready", count: 2, timeout: 30)
        again.signal(SIGTERM)
        let code = try again.waitForExit(timeout: 30)
        #expect(code == 0, "the relaunch failed (exit \(code)):\n\(again.output)")
        #expect(again.stderr.contains("resuming from committed step"))
        #expect(again.stdout.contains("[rank0]: same job exit 69"), "\(again.stdout)")
    }

    // MARK: - 11. A setsid grandchild

    /// Defect: a grandchild that left for its own session while its parent (the rank's child) was alive
    /// is neither in the rank's process group nor an orphan when the teardown looks: it outlives the run.
    @Test(arguments: ["exit", "sigterm"])
    func aSetsidGrandchildDoesNotOutliveANormalEnd(_ end: String) throws {
        let directory = try TemporaryDirectory()
        let marker = directory.path + "/setsid-grandchild"
        defer { Self.killLeftovers(directory.path, marker: marker) }
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "2", "--kill-after", "1", "--", "python3", Self.fixtures + "/setsid_grandchild_rank.py"],
            in: directory.path, environment: ["MARKER": marker, "END": end])
        try run.waitFor("[rank0]: ready")
        if end == "sigterm" { run.signal(SIGTERM) }
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(Self.waitUntilNoProcessNaming(marker).isEmpty, "the setsid grandchild is still alive")
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty, "processes of the job are left")
    }

    // MARK: - 12. Smaller ones

    /// Defect: a checkpoint path is handed to stat() as a C string, so `"/etc/passwd\u0000x"` is checked
    /// as `/etc/passwd`, exists, and is committed.
    @Test func aCheckpointPathContainingNulIsNeverCommitted() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = Self.wirePrelude + #"""
            print("ready", flush=True)
            stop = receive("stop")
            send({"type": "position", "id": stop["id"], "step": 5})
            target = receive("stop_at")["step"]
            send({"type": "checkpointed", "step": target, "path": "/etc/passwd\u0000x"})
            time.sleep(1000)
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "2", "--kill-after", "1", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("[rank0]: ready")
        run.signal(SIGTERM)
        #expect(try run.waitForExit(timeout: 30) == 2, "\(run.output)")
        let record = directory.read(directory.run("last_checkpoint.json"))
        #expect(record == nil || !record!.contains("/etc/passwd"), "committed: \(record ?? "")")
    }

    /// Defect: paths are decoded as UTF-8 text; a file name that is not UTF-8 (sent as Python's
    /// surrogate escape, `\udcff`) cannot be checked nor handed back. Expected: committed, and the next
    /// launch's GRACEFUL_RESUME_PATH holds the exact bytes.
    @Test func aCheckpointFileNameThatIsNotUtf8IsCommittedAndHandedBackByteForByte() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = Self.wirePrelude + #"""
            path = b"ckpt_\xff.bin"
            with open(path, "wb") as f:
                f.write(b"x")
            print("ready", flush=True)
            stop = receive("stop")
            send({"type": "position", "id": stop["id"], "step": 5})
            target = receive("stop_at")["step"]
            send_line(('{"type":"checkpointed","step":%d,"path":%s}' % (target, json.dumps(os.fsdecode(path)))).encode())
            sys.exit(0)
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "3", "--kill-after", "1", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("[rank0]: ready")
        run.signal(SIGTERM)
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")

        let show = #"import os; print("resume", os.environb.get(b"GRACEFUL_RESUME_PATH", b"<unset>").hex())"#
        let next = try Launched([Self.graceful, "run", "-n", "1", "--", "python3", "-c", show], in: directory.path)
        #expect(try next.waitForExit(timeout: 30) == 0, "\(next.output)")
        let name: [UInt8] = Array("ckpt_".utf8) + [0xff] + Array(".bin".utf8)
        let hex = { (bytes: [UInt8]) in bytes.map { String(format: "%02x", $0) }.joined() }
        let relative = "[rank0]: resume " + hex(name) + "\n"
        let absolute = "[rank0]: resume " + hex(Array((directory.path + "/").utf8) + name) + "\n"
        #expect(next.stdout.contains(relative) || next.stdout.contains(absolute), "\(next.stdout)")
    }

    /// Defect: a confirmation that arrives after `--grace` expired still counts, and a stop whose
    /// deadline passed commits.
    @Test func aConfirmationAfterTheGraceExpiredIsNotCommitted() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = Self.wirePrelude + #"""
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            with open("late.ckpt", "w") as f:
                f.write("x")
            print("ready", flush=True)
            stop = receive("stop")
            send({"type": "position", "id": stop["id"], "step": 5})
            target = receive("stop_at")["step"]
            signal.sigwait({signal.SIGTERM})  # sent when the grace expired
            send({"type": "checkpointed", "step": target, "path": "late.ckpt"})
            print("confirmed late", flush=True)
            sys.exit(0)
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "1", "--kill-after", "3", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("[rank0]: ready")
        run.signal(SIGTERM)
        let code = try run.waitForExit(timeout: 30)
        #expect(run.stdout.contains("confirmed late"), "\(run.output)")
        #expect(code != 0, "\(run.output)")
        #expect(directory.read(directory.run("last_checkpoint.json")) == nil, "a late confirmation was committed")
    }

    /// Defect: a dangling `last_checkpoint.json` symlink reads as "no record": the launch starts from
    /// scratch and a later commit replaces the link.
    @Test func aDanglingRecordSymlinkStopsTheLaunchAndIsLeftAlone() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        try FileManager.default.createDirectory(atPath: directory.file("graceful_run/true"), withIntermediateDirectories: true)
        let link = directory.file("graceful_run/true/last_checkpoint.json")
        #expect(symlink("nowhere.json", link) == 0)
        let run = try Launched([Self.graceful, "run", "-n", "1", "--", "true"], in: directory.path)
        #expect(try run.waitForExit(timeout: 30) == 65, "\(run.output)")
        #expect(Self.isSymlink(link))
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == "nowhere.json")
    }

    /// Defect: the flag is reset by re-serialising the whole file, which changes other keys (numbers
    /// beyond 64 bits, 1e400) and their layout.
    @Test func theControlFileResetChangesOnlyTheFlag() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        try directory.write("graceful_exit.json", "{\"GracefulExit\": 0}\n")
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "2", "--kill-after", "1", "--", "sh", "-c", "echo ready; exec sleep 300"],
            in: directory.path)
        try run.waitFor("[rank0]: ready")
        let contents = "{\"GracefulExit\": 1, \"big\": 123456789012345678901234567890, \"x\": 1e400}\n"
        try directory.replace("graceful_exit.json", with: contents)
        let (code, _) = try Self.waitForExit(run, timeout: 20)
        #expect(code == 0, "\(run.output)")
        let expected = contents.replacingOccurrences(of: "\"GracefulExit\": 1", with: "\"GracefulExit\": 0")
        #expect(directory.read("graceful_exit.json") == expected)
    }

    /// Defect: the reset renames a new file over the control file's path, replacing a symlink with a
    /// regular file; its target keeps the 1, so the next launch through the same target is refused.
    @Test func aControlFileThatIsASymlinkStaysOneAndItsTargetIsReset() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        try directory.write("flag_idle.json", "{\"GracefulExit\": 0}\n")
        try directory.write("flag_stop.json", "{\"GracefulExit\": 1}\n")
        let link = directory.file("graceful_exit.json")
        #expect(symlink("flag_idle.json", link) == 0)
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "2", "--kill-after", "1", "--", "sh", "-c", "echo ready; exec sleep 300"],
            in: directory.path)
        try run.waitFor("[rank0]: ready")
        // Point the link at a file that asks for the stop, replacing it atomically.
        #expect(symlink("flag_stop.json", link + ".new") == 0)
        #expect(rename(link + ".new", link) == 0)
        let (code, _) = try Self.waitForExit(run, timeout: 20)
        #expect(code == 0, "\(run.output)")
        #expect(Self.isSymlink(link), "the control file is no longer a symlink")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == "flag_stop.json")
        #expect(directory.read("flag_stop.json")?.contains("\"GracefulExit\": 0") == true, "\(directory.read("flag_stop.json") ?? "")")
    }

    /// Defect: doorbell variables from graceful's own environment leak into the ranks (and the doorbell
    /// is named by a path any process can open). Expected: no GRACEFUL_DOORBELL at all, and
    /// GRACEFUL_DOORBELL_FD absent or 4.
    @Test func doorbellVariablesFromTheEnvironmentDoNotReachTheRanks() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = #"""
            echo "GRACEFUL_DOORBELL=${GRACEFUL_DOORBELL-<unset>}"
            echo "GRACEFUL_DOORBELL_FD=${GRACEFUL_DOORBELL_FD-<unset>}"
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--", "sh", "-c", script], in: directory.path,
            environment: ["GRACEFUL_DOORBELL": "/tmp/x", "GRACEFUL_DOORBELL_FD": "9"])
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(run.stdout.contains("[rank0]: GRACEFUL_DOORBELL=<unset>\n"), "\(run.stdout)")
        #expect(run.stdout.contains("[rank0]: GRACEFUL_DOORBELL_FD=<unset>\n") || run.stdout.contains("[rank0]: GRACEFUL_DOORBELL_FD=4\n"),
                "\(run.stdout)")
    }

    /// Defect: the channel's line limit counts the newline, so a line of exactly 65,536 bytes (the
    /// documented maximum) is discarded and the confirmation is lost.
    @Test func aChannelLineOfExactly65536BytesIsAccepted() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = Self.wirePrelude + #"""
            with open("ckpt.json", "w") as f:
                f.write("{}")
            print("ready", flush=True)
            stop = receive("stop")
            send({"type": "position", "id": stop["id"], "step": 5})
            target = receive("stop_at")["step"]
            head = '{"type":"checkpointed","step":%d,"path":"ckpt.json"' % target
            line = (head + " " * (65536 - len(head) - 1) + "}").encode()
            assert len(line) == 65536
            send_line(line)
            sys.exit(0)
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "3", "--kill-after", "1", "--", "python3", "-c", script], in: directory.path)
        try run.waitFor("[rank0]: ready")
        run.signal(SIGTERM)
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(Self.committedRecord(directory) != nil, "nothing committed")
    }

    /// Defect: durations are parsed with Double(String), which takes hexadecimal floats (`0x10` = 16).
    @Test func aHexadecimalGraceIsAUsageError() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Launched([Self.graceful, "run", "--grace", "0x10", "--", "true"], in: directory.path)
        #expect(try run.waitForExit(timeout: 30) == 64, "\(run.output)")
    }

    /// Defect: an exec that fails for a missing interpreter (ENOENT from execve) or unknown format
    /// (ENOEXEC) is reported as a system error (71) instead of "not executable" (126).
    @Test(arguments: ["missing-interpreter", "garbage"])
    func aCommandThatCannotBeExecutedExits126(_ kind: String) throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let contents = kind == "garbage"
            ? Data([0x00, 0x13, 0x37, 0xfe, 0xff, 0x00, 0x42, 0x99, 0x0a, 0x01, 0x02, 0x03])
            : Data("#!/nonexistent/interpreter\necho hello\n".utf8)
        let path = directory.file("command")
        try contents.write(to: URL(fileURLWithPath: path))
        #expect(chmod(path, 0o755) == 0)
        let run = try Launched([Self.graceful, "run", "-n", "1", "--", "./command"], in: directory.path)
        #expect(try run.waitForExit(timeout: 30) == 126, "\(run.output)")
    }

    /// Defect: graceful raises its soft limit of open files for itself, and the ranks inherit the raised
    /// one instead of the limit graceful was started with.
    @Test(.enabled(if: HardeningTests.hardOpenFilesLimit > 1024, "the hard limit of open files is 1024 or less: nothing to raise"))
    func ranksGetTheOpenFilesLimitGracefulWasStartedWith() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Launched(
            ["/bin/sh", "-c", #"ulimit -Sn 1024 && exec "$@""#, "sh", Self.graceful, "run", "-n", "1",
             "--", "sh", "-c", #"echo "nofile $(ulimit -Sn)""#],
            in: directory.path)
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        #expect(run.stdout.contains("[rank0]: nofile 1024\n"), "\(run.stdout)")
    }

    /// Defect: a rank that exited 0 before the stop ends the stop with exit 2 (right: it cannot confirm),
    /// but nothing says why; a line must name rank 0 as having ended before the stop.
    @Test func aRankThatEndedBeforeTheStopMeansNoCommit() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = #"""
            if [ "$RANK" = 0 ]; then echo "early $$"; exit 0; fi
            exec python3 "$SOAK_RANK"
            """#
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--grace", "3", "--kill-after", "1", "--", "sh", "-c", script],
            in: directory.path, environment: ["SOAK_RANK": Self.soakRank, "STEP_TIME": "0.01"])
        try run.waitFor("[rank1]: ready")
        try run.waitFor("[rank0]: early ")
        let rank0 = try #require(Self.printedPID(run, rank: 0, word: "early"))
        #expect(Self.waitUntil(timeout: 10) { !Self.fileExists("/proc/\(rank0)") }, "rank 0 was not reaped")
        run.signal(SIGTERM)
        #expect(try run.waitForExit(timeout: 30) == 2, "\(run.output)")
        let named = run.stderr.split(separator: "\n").contains { $0.contains("rank 0") && $0.contains("before") }
        #expect(named, "no line names rank 0 as having ended before the stop:\n\(run.stderr)")
        #expect(directory.read(directory.run("last_checkpoint.json")) == nil, "something was committed")
    }

    /// Defect: every intermediate state of a control file written slowly (here one byte at a time)
    /// is a "new problem" with its own warning.
    @Test func aControlFileWrittenByteByByteWarnsAtMostTwice() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let run = try Launched(
            [Self.graceful, "run", "-n", "1", "--grace", "2", "--kill-after", "1", "--", "sh", "-c", "echo ready; exec sleep 300"],
            in: directory.path)
        try run.waitFor("[rank0]: ready")
        let path = directory.file("graceful_exit.json")
        for byte in Array("{\"GracefulExit\": 0}".utf8) {
            let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            _ = withUnsafeBytes(of: byte) { write(fd, $0.baseAddress, 1) }
            close(fd)
            usleep(10_000)  // a slow writer: the pace is the scenario
        }
        run.signal(SIGTERM)
        #expect(try run.waitForExit(timeout: 30) == 0, "\(run.output)")
        let warnings = run.stderr.split(separator: "\n").filter { $0.contains("warning") && $0.contains("control file") }
        #expect(warnings.count <= 2, "\(warnings.count) warnings:\n\(warnings.joined(separator: "\n"))")
    }

    /// Defect: each periodic round that finds a rank not yet said hello prints its own "skipped" line,
    /// so a slow start floods the console (one line every 0.05 s here).
    @Test func periodicCheckpointsSkippedWhileRanksStartPrintAtMostOneLine() throws {
        let directory = try TemporaryDirectory()
        defer { Self.killLeftovers(directory.path) }
        let script = """
            import time
            time.sleep(1.5)  # a slow start: imports, data loading
            from graceful_exit import Rank
            rank = Rank()
            print("ready", flush=True)
            step = 0
            while not rank.should_stop(step := step + 1):
                if rank.should_checkpoint(step):
                    rank.checkpointed(step, None)
                time.sleep(0.01)
            rank.checkpointed(step, None)
            """
        let run = try Launched(
            [Self.graceful, "run", "-n", "2", "--checkpoint-every", "0.05", "--grace", "3", "--kill-after", "1",
             "--", "python3", "-c", script],
            in: directory.path)
        try run.waitFor("]: ready", count: 2)
        run.signal(SIGTERM)
        _ = try run.waitForExit(timeout: 30)
        let skipped = run.stderr.split(separator: "\n").filter { $0.contains("skipped") }
        #expect(skipped.count <= 1, "\(skipped.count) lines:\n\(skipped.joined(separator: "\n"))")
    }
}
