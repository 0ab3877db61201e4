import Foundation
import Glibc
import Testing

@testable import Graceful

/// Multi-node jobs end to end: three `graceful run` nodes of one job on this machine (one directory,
/// each node its own control file and run directory graceful_run/train/node<K>), two ranks each of
/// the toy training, whose six ranks all-reduce through MASTER_ADDR:MASTER_PORT. Real processes,
/// real sockets, real signals. Serialized: a two-core machine runs one nine-process job at a time.
@Suite(.serialized) struct MultiNodeTests {
    static let train = Launched.packageRoot + "/examples/python/train.py"
    static let token = "multi-node-test-job-token-0123456789"
    /// Training that goes on until it is stopped, rank 0 (node 0) logging every 50 steps.
    static let endless = ["--steps", "100000", "--step-time", "0.005", "--log-every", "50"]
    static let failOnce = Launched.packageRoot + "/Tests/fixtures/fail_once_rank.py"

    // MARK: - Helpers

    /// A master port P such that P and the rendezvous port P + 1 are both free now.
    static func freePortPair() throws -> Int {
        for _ in 0..<100 {
            let (first, port) = bind(port: 0)
            guard first >= 0 else { continue }
            defer { close(first) }
            guard port < 65535 else { continue }
            let (second, _) = bind(port: port + 1)
            guard second >= 0 else { continue }
            close(second)
            return port
        }
        throw Launched.SpawnError(message: "no two consecutive free TCP ports")
    }

    /// A socket bound to `port` on every address (as the leader's listener and rank 0 bind), and its port.
    private static func bind(port: Int) -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return (-1, 0) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = INADDR_ANY
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            return (-1, 0)
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// One job's nodes on this machine: its directory, its ports, and every coordinator started for
    /// it, all killed (with whatever still works in the directory) by `cleanUp()`.
    final class Job {
        let directory: TemporaryDirectory
        let masterPort: Int
        var rendezvousPort: Int { masterPort + 1 }
        /// The command's job name: its run directories are graceful_run/<name>/node<K>.
        var name = "train"
        private(set) var started: [Launched] = []

        init() throws {
            directory = try TemporaryDirectory()
            masterPort = try MultiNodeTests.freePortPair()
        }

        /// `graceful run` as node `node` of `nodes`, with the job's token unless `environment` says otherwise.
        @discardableResult
        func start(
            node: Int, nodes: Int = 3, ranks: Int = 2, rendezvousTimeout: String = "60", options: [String] = [],
            training: [String] = MultiNodeTests.endless, environment: [String: String] = ["GRACEFUL_JOB_TOKEN": MultiNodeTests.token],
            prefix: [String] = [], program: [String] = ["python3", MultiNodeTests.train]
        ) throws -> Launched {
            let arguments = prefix + [
                Launched.graceful, "run", "--nnodes", "\(nodes)", "--node-rank", "\(node)", "--master-port", "\(masterPort)",
                "--control-file", "ctl\(node).json", "-n", "\(ranks)", "--rdzv-timeout", rendezvousTimeout,
            ] + options + ["--"] + program + training
            let run = try Launched(arguments, in: directory.path, environment: environment)
            started.append(run)
            return run
        }

        /// The three nodes of the usual job, leader first.
        func startThree(options: [String] = [], training: [String] = MultiNodeTests.endless) throws -> [Launched] {
            try (0..<3).map { try start(node: $0, options: options, training: training) }
        }

        /// Kills every coordinator still running (stopped ones too) and whatever still works in the
        /// job's directory: only processes this test started.
        func cleanUp() {
            for run in started where run.status == nil {
                kill(-run.pid, SIGKILL)
                kill(run.pid, SIGKILL)
                _ = try? run.waitForExit(timeout: 10)
            }
            for _ in 0..<3 {
                let left = processes(workingIn: directory.path)
                if left.isEmpty { break }
                for pid in left { kill(pid, SIGKILL) }
                _ = waitUntilNoProcess(workingIn: directory.path, timeout: 2)
            }
        }

        /// The JSON of node `node`'s copy of the job's record (node 0's is the record itself).
        func record(node: Int) -> String? {
            directory.read("graceful_run/\(name)/node\(node)/last_checkpoint.json")
        }

        /// Every rank log of every node (and any other run directory) with content: none before a launch.
        func rankLogsWithContent() -> [String] {
            let root = directory.file("graceful_run")
            let files = FileManager.default.enumerator(atPath: root)?.compactMap { $0 as? String } ?? []
            return files.filter { ($0 as NSString).lastPathComponent.hasPrefix("rank_") }
                .filter { (directory.read("graceful_run/" + $0) ?? "").isEmpty == false }
        }
    }

    /// The step of node 0's record, after checking that it names `ranks` paths, in rank order, that
    /// exist and hold that step.
    static func committedStep(_ job: Job, ranks: Int = 6) throws -> Int {
        let text = try #require(job.record(node: 0), "no commit record on node 0")
        let record = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let step = try #require(record["step"] as? Int)
        let entries = try #require(record["ranks"] as? [[String: Any]])
        #expect(entries.count == ranks)
        #expect(record["world_size"] as? Int == ranks)
        for (rank, entry) in entries.enumerated() {
            #expect(entry["rank"] as? Int == rank)
            let path = try #require(entry["path"] as? String, "rank \(rank) has no path")
            #expect(path == "checkpoints/train/rank\(rank)/step_\(step).json")
            let checkpoint = try #require(job.directory.read(path), "missing checkpoint \(path)")
            let saved = try #require(try JSONSerialization.jsonObject(with: Data(checkpoint.utf8)) as? [String: Any])
            #expect(saved["step"] as? Int == step, "\(path) holds another step")
            #expect(saved["rank"] as? Int == rank, "\(path) holds another rank")
        }
        return step
    }

    /// Every node exited 0 after one stop that committed `step` everywhere: each node says so once,
    /// both of its ranks stopped after that step, each follower keeps a copy equal to the leader's
    /// record, and no process is left.
    static func expectOneCommit(_ job: Job, _ nodes: [Launched], trigger: String) throws -> Int {
        for (node, run) in nodes.enumerated() {
            #expect(try run.waitForExit(timeout: 60) == 0, "node \(node):\n\(run.output)")
        }
        let step = try committedStep(job)
        let record = try #require(job.record(node: 0))
        #expect(record.contains("\"trigger\": \"\(trigger)\""), "\(record)")
        for (node, run) in nodes.enumerated() {
            #expect(run.count("committed step") == 1, "node \(node):\n\(run.stderr)")
            #expect(run.stderr.contains("graceful[node \(node)]: committed step \(step)\n"), "node \(node):\n\(run.stderr)")
            for local in 0..<2 {
                let rank = node * 2 + local
                #expect(run.stdout.contains("[rank\(rank)]: rank \(rank)/6: stopped after step \(step) "), "node \(node):\n\(run.stdout)")
            }
            if node > 0 { #expect(job.record(node: node) == record, "node \(node)'s copy differs from the leader's record") }
        }
        #expect(waitUntilNoProcess(workingIn: job.directory.path).isEmpty, "processes left behind")
        return step
    }

    // MARK: - Stops

    /// The control file of one follower stops all six ranks at one step; the relaunch resumes every
    /// node from it and finishes bit for bit like six ranks that were never interrupted.
    @Test func aFollowersControlFileStopsEveryNodeAndTheRelaunchResumesBitIdentically() throws {
        let job = try Job()
        defer { job.cleanUp() }
        for node in 0..<3 { try job.directory.write("ctl\(node).json", "{\"GracefulExit\": 0}\n") }
        let nodes = try job.startThree()
        try nodes[0].waitFor("[rank0]: step 50:")
        try job.directory.replace("ctl1.json", with: "{\"GracefulExit\": 1}\n")
        let step = try Self.expectOneCommit(job, nodes, trigger: "control-file")
        #expect(step > 50)
        #expect(nodes[0].stderr.contains("leader: stop requested (control-file); asking 3 node(s)"), "\(nodes[0].stderr)")
        #expect(job.directory.read("ctl1.json") == "{\"GracefulExit\": 0}\n")
        #expect(job.directory.read("ctl0.json") == "{\"GracefulExit\": 0}\n")
        #expect(job.directory.read("ctl2.json") == "{\"GracefulExit\": 0}\n")

        let finish = ["--steps", "\(step + 50)", "--step-time", "0", "--log-every", "0"]
        let resumed = try job.startThree(training: finish)
        for (node, run) in resumed.enumerated() {
            #expect(try run.waitForExit(timeout: 60) == 0, "node \(node):\n\(run.output)")
            #expect(run.stderr.contains("graceful[node \(node)]: resuming from committed step \(step) "), "node \(node):\n\(run.stderr)")
            for local in 0..<2 {
                let rank = node * 2 + local
                let line = run.stdout.split(separator: "\n").first { $0.hasPrefix("[rank\(rank)]: rank \(rank)/6: resuming from ") }
                #expect(line?.hasSuffix("/checkpoints/train/rank\(rank)/step_\(step).json (step \(step))") == true, "node \(node):\n\(run.stdout)")
            }
        }

        // The same steps, never interrupted: six ranks of one node.
        let reference = try TemporaryDirectory()
        let whole = try Launched([Launched.graceful, "run", "-n", "6", "--", "python3", Self.train] + finish, in: reference.path)
        defer { if whole.status == nil { kill(-whole.pid, SIGKILL) } }
        #expect(try whole.waitForExit(timeout: 60) == 0, "\(whole.output)")
        for rank in 0..<6 {
            let expected = try #require(reference.read("checkpoints/train/final_rank\(rank).json"))
            #expect(job.directory.read("checkpoints/train/final_rank\(rank).json") == expected, "rank \(rank) differs (stopped at \(step))")
        }
        #expect(waitUntilNoProcess(workingIn: job.directory.path).isEmpty, "processes left behind")
    }

    /// SIGTERM to a follower's coordinator (a scheduler ending that node) stops the whole job at one
    /// committed step.
    @Test func sigtermToAFollowerStopsEveryNodeAtOneCommit() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let nodes = try job.startThree()
        try nodes[0].waitFor("[rank0]: step 50:")
        nodes[2].signal(SIGTERM)
        let step = try Self.expectOneCommit(job, nodes, trigger: "SIGTERM")
        #expect(step > 50)
    }

    /// A scheduler ending the job signals every node at once: one stop, not an escalation.
    @Test func sigtermToEveryNodeAtOnceIsOneStop() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let nodes = try job.startThree()
        try nodes[0].waitFor("[rank0]: step 50:")
        for node in nodes { node.signal(SIGTERM) }
        let step = try Self.expectOneCommit(job, nodes, trigger: "SIGTERM")
        #expect(step > 50)
        #expect(!nodes[0].stderr.contains("escalating"), "\(nodes[0].stderr)")
    }

    /// Ctrl+C on the leader stops the whole job at one committed step.
    @Test func sigintToTheLeaderStopsEveryNodeAtOneCommit() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let nodes = try job.startThree()
        try nodes[0].waitFor("[rank0]: step 50:")
        nodes[0].signal(SIGINT)
        let step = try Self.expectOneCommit(job, nodes, trigger: "SIGINT")
        #expect(step > 50)
    }

    // MARK: - Lost nodes

    /// A follower's coordinator killed outright: the other nodes stop theirs and exit 1 within the
    /// heartbeat timeout plus the kill delay (a liveness bound, not a benchmark), the record of an
    /// earlier checkpoint stays as it was, and no process of any node is left.
    @Test func aKilledFollowerEndsTheJobWithoutACommit() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let (heartbeat, killAfter) = (2.0, 2.0)
        let nodes = try job.startThree(options: ["--heartbeat-timeout", "2", "--kill-after", "2", "--grace", "5"])
        try nodes[0].waitFor("[rank0]: step 50:")
        // A checkpoint without stopping first, so that there is a record the failure must leave alone.
        nodes[0].signal(SIGUSR2)
        try nodes[0].waitFor("graceful[node 0]: committed step")
        for node in 1..<3 { try nodes[node].waitFor("committed step") }
        let before = try #require(job.record(node: 0))
        _ = try Self.committedStep(job)

        let killedAt = Date()
        nodes[1].signal(SIGKILL)
        for node in [0, 2] {
            #expect(try nodes[node].waitForExit(timeout: 60) == 1, "node \(node):\n\(nodes[node].output)")
            let elapsed = Date().timeIntervalSince(killedAt)
            #expect(elapsed < heartbeat + killAfter + 2, "node \(node) took \(elapsed)s to exit")
            #expect(nodes[node].stderr.contains("node 1 (") && nodes[node].stderr.contains("is gone"), "node \(node):\n\(nodes[node].stderr)")
            #expect(nodes[node].count("committed step") == 1, "node \(node):\n\(nodes[node].stderr)")
        }
        #expect(try nodes[1].waitForExit(timeout: 10) == 128 + SIGKILL)
        #expect(job.record(node: 0) == before, "the record changed")
        #expect(job.record(node: 2) == before, "node 2's copy changed")
        #expect(waitUntilNoProcess(workingIn: job.directory.path, timeout: 10).isEmpty, "processes left behind")
    }

    /// A follower's coordinator that hangs (SIGSTOP) is found by its silence: the others exit 1 naming
    /// it, nothing is committed, and once it runs again it ends too.
    @Test func aHungFollowerIsFoundByItsSilence() throws {
        let job = try Job()
        defer {
            for run in job.started where run.status == nil { kill(run.pid, SIGCONT) }
            job.cleanUp()
        }
        let (heartbeat, killAfter) = (2.0, 2.0)
        let nodes = try job.startThree(options: ["--heartbeat-timeout", "2", "--kill-after", "2", "--grace", "5"])
        try nodes[0].waitFor("[rank0]: step 50:")
        let stoppedAt = Date()
        nodes[2].signal(SIGSTOP)
        for node in [0, 1] {
            #expect(try nodes[node].waitForExit(timeout: 60) == 1, "node \(node):\n\(nodes[node].output)")
            let elapsed = Date().timeIntervalSince(stoppedAt)
            #expect(elapsed < heartbeat + killAfter + 2, "node \(node) took \(elapsed)s to exit")
            let line = nodes[node].stderr.split(separator: "\n").first { $0.contains("sent nothing for") }
            #expect(line?.contains("node 2 (") == true, "node \(node):\n\(nodes[node].stderr)")
            #expect(line?.contains("sent nothing for 2s (--heartbeat-timeout)") == true, "node \(node):\n\(nodes[node].stderr)")
        }
        #expect(job.record(node: 0) == nil)
        nodes[2].signal(SIGCONT)
        let code = try nodes[2].waitForExit(timeout: 30)
        #expect(code != 0, "\(nodes[2].output)")
        #expect(job.record(node: 2) == nil)
        #expect(waitUntilNoProcess(workingIn: job.directory.path, timeout: 10).isEmpty, "processes left behind")
    }

    // MARK: - Restarts across nodes

    /// Every rank of every node resumed from committed step `step` in restart 1.
    static func expectResumed(_ nodes: [Launched], from step: Int) throws {
        for (node, run) in nodes.enumerated() {
            for local in 0..<2 {
                let rank = node * 2 + local
                try run.waitFor("[rank\(rank)]: rank \(rank)/6: resuming from ")
                let line = run.stdout.split(separator: "\n").first { $0.hasPrefix("[rank\(rank)]: rank \(rank)/6: resuming from ") }
                #expect(line?.hasSuffix("/checkpoints/train/rank\(rank)/step_\(step).json (step \(step))") == true, "node \(node):\n\(run.stdout)")
            }
        }
    }

    /// A stop after the restart commits a later step across all six ranks; every node exits 0.
    static func expectStopAfterRestart(_ job: Job, _ nodes: [Launched], after first: Int) throws {
        try job.directory.replace("ctl2.json", with: "{\"GracefulExit\": 1}\n")
        for (node, run) in nodes.enumerated() {
            #expect(try run.waitForExit(timeout: 60) == 0, "node \(node):\n\(run.output)")
        }
        let step = try committedStep(job)
        #expect(step > first)
        let record = try #require(job.record(node: 0))
        #expect(record.contains("\"trigger\": \"control-file\""), "\(record)")
        for node in 1..<3 { #expect(job.record(node: node) == record, "node \(node)'s copy differs from the leader's record") }
        #expect(waitUntilNoProcess(workingIn: job.directory.path, timeout: 10).isEmpty, "processes left behind")
    }

    /// A rank that crashes on one node, with --max-restarts 1: every node tears its ranks down, the
    /// whole world relaunches as restart 1 from the last commit, and a stop afterwards commits.
    @Test func aCrashedRankRestartsEveryNodeFromTheLastCommit() throws {
        let job = try Job()
        job.name = "fail_once_rank"
        defer { job.cleanUp() }
        for node in 0..<3 { try job.directory.write("ctl\(node).json", "{\"GracefulExit\": 0}\n") }
        let environment = [
            "GRACEFUL_JOB_TOKEN": Self.token, "FAIL_RANK": "3", "FAIL_AFTER": "graceful_run/fail_once_rank/node0/last_checkpoint.json",
        ]
        let options = ["--max-restarts", "1", "--restart-backoff", "0.1", "--kill-after", "2"]
        let nodes = try (0..<3).map {
            try job.start(node: $0, options: options, environment: environment, program: ["python3", Self.failOnce, Self.train])
        }
        try nodes[0].waitFor("[rank0]: step 50:")
        nodes[0].signal(SIGUSR2)
        for (node, run) in nodes.enumerated() {
            try run.waitFor("graceful[node \(node)]: restart 1: launching 2 rank(s)")
        }
        let first = try Self.committedStep(job)
        let restarting = nodes[0].stderr.split(separator: "\n").first { $0.contains("restarting every node") }
        #expect(restarting?.contains("leader: node 1: rank 3 failed") == true, "\(nodes[0].stderr)")
        #expect(restarting?.hasSuffix("restarting every node from the last commit (restart 1 of 1)") == true, "\(nodes[0].stderr)")
        #expect(nodes[1].stdout.contains("rank 3: crashing on purpose"), "\(nodes[1].stdout)")
        try Self.expectResumed(nodes, from: first)
        try Self.expectStopAfterRestart(job, nodes, after: first)
    }

    /// A follower's coordinator killed outright, with --max-restarts 1: the others clear their ranks
    /// and wait; the same node started again joins the restart, and every rank resumes from the
    /// last commit.
    @Test func aKilledFollowerStartedAgainRejoinsTheRestart() throws {
        let job = try Job()
        defer { job.cleanUp() }
        for node in 0..<3 { try job.directory.write("ctl\(node).json", "{\"GracefulExit\": 0}\n") }
        let options = ["--max-restarts", "1", "--restart-backoff", "0.1", "--heartbeat-timeout", "2", "--kill-after", "2"]
        var nodes = try job.startThree(options: options)
        try nodes[0].waitFor("[rank0]: step 50:")
        nodes[0].signal(SIGUSR2)
        for (node, run) in nodes.enumerated() { try run.waitFor("graceful[node \(node)]: committed step") }
        let first = try Self.committedStep(job)

        nodes[1].signal(SIGKILL)
        #expect(try nodes[1].waitForExit(timeout: 10) == 128 + SIGKILL)
        try nodes[0].waitFor("restarting every node from the last commit (restart 1 of 1)")
        try nodes[2].waitFor("graceful[node 2]: this node's ranks are gone; waiting for every node before restart 1")
        nodes[1] = try job.start(node: 1, options: options)
        try nodes[0].waitFor("leader: node 1 (")
        try nodes[0].waitFor("joined again for restart 1")
        for node in [0, 2] { try nodes[node].waitFor("graceful[node \(node)]: restart 1: launching 2 rank(s)") }
        try nodes[1].waitFor("graceful[node 1]: resuming from committed step \(first) ")
        try Self.expectResumed(nodes, from: first)
        try Self.expectStopAfterRestart(job, nodes, after: first)
    }

    // MARK: - IPv6

    /// Nodes 0 and 2 finish their training while node 1's coordinator hangs, then dies: the job did
    /// not complete. The leader exits 1 naming node 1, and its record is not marked completed, so
    /// the next launch of every node resumes from it.
    @Test func aFollowerLostAfterTheOthersFinishedFailsTheJob() throws {
        let job = try Job()
        defer {
            for run in job.started where run.status == nil { kill(run.pid, SIGCONT) }
            job.cleanUp()
        }
        let training = ["--steps", "300", "--step-time", "0.005", "--log-every", "50"]
        let nodes = try job.startThree(options: ["--heartbeat-timeout", "60"], training: training)
        try nodes[0].waitFor("[rank0]: step 50:")
        nodes[0].signal(SIGUSR2)
        for (node, run) in nodes.enumerated() { try run.waitFor("graceful[node \(node)]: committed step") }
        nodes[1].signal(SIGSTOP)
        #expect(try nodes[2].waitForExit(timeout: 60) == 0, "\(nodes[2].output)")
        try nodes[0].waitFor("leader: node 0 finished (exit 0)")
        nodes[1].signal(SIGKILL)
        #expect(try nodes[0].waitForExit(timeout: 30) == 1, "\(nodes[0].output)")
        #expect(nodes[0].stderr.contains("graceful[node 0]: exit 1: node 1 ("), "\(nodes[0].stderr)")
        let record = try #require(job.record(node: 0), "the leader's record was moved away")
        #expect(record.contains("\"completed\": null") || !record.contains("\"completed\""), "\(record)")
        #expect(!nodes[0].stderr.contains("the run completed"), "\(nodes[0].stderr)")
    }

    /// Whether this machine can bind IPv6 loopback (a kernel booted without IPv6 cannot).
    static let hasIPv6Loopback: Bool = {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_addr = in6addr_loopback
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) == 0 }
        }
    }()

    /// The leader listens on IPv6 as well as IPv4: followers that reach it at ::1 join and stop with
    /// one commit.
    @Test(.enabled(if: hasIPv6Loopback, "this machine cannot bind ::1 (no IPv6)"))
    func followersJoinOverIPv6() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let nodes = try job.startThree(options: ["--master-addr", "::1"])
        try nodes[0].waitFor("[rank0]: step 50:")
        nodes[1].signal(SIGTERM)
        #expect(try Self.expectOneCommit(job, nodes, trigger: "SIGTERM") > 50)
        #expect(nodes[1].stderr.contains("graceful[node 1]: joining the job at ::1:\(job.rendezvousPort)"), "\(nodes[1].stderr)")
    }

    // MARK: - Strangers at the rendezvous port

    /// A client of the leader's rendezvous port, speaking as much of the link protocol as an attack needs.
    final class Intruder {
        let fd: Int32

        init(host: String = "127.0.0.1", port: Int) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr(host)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard fd >= 0, connected == 0 else {
                let error = errno
                if fd >= 0 { close(fd) }
                throw Launched.SpawnError(message: "connect to \(host):\(port): \(String(cString: strerror(error)))")
            }
        }

        deinit { close(fd) }

        /// Sends all of `bytes` in one call where the socket takes them; errors (the leader hung up) are ignored.
        func send(_ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if sent <= 0 { return }
                offset += sent
            }
        }

        /// Exactly `count` bytes, or nil at the end of the connection or after `timeout`.
        func receive(_ count: Int, timeout: Double = 10) -> [UInt8]? {
            var received: [UInt8] = []
            let deadline = Date().addingTimeInterval(timeout)
            while received.count < count {
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard Date() < deadline, poll(&poller, 1, 100) >= 0 else { return nil }
                guard poller.revents != 0 else { continue }
                var buffer = [UInt8](repeating: 0, count: count - received.count)
                let got = read(fd, &buffer, buffer.count)
                if got <= 0 { return nil }
                received += buffer[0..<got]
            }
            return received
        }

        /// Whether the leader closed the connection within `timeout` (what it sent is discarded).
        func closedByPeer(within timeout: Double) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&poller, 1, 100) >= 0 else { return false }
                guard poller.revents != 0 else { continue }
                var buffer = [UInt8](repeating: 0, count: 4096)
                if read(fd, &buffer, buffer.count) <= 0 { return true }
            }
            return false
        }

        /// The handshake as a follower holding `secret`. With the job's secret: the link's keys. With
        /// another: the leader's challenge does not verify here (nil), and a proof made with that
        /// secret is sent anyway, as a stranger who ignores the check would.
        func handshake(secret: [UInt8]) -> LinkKeys? {
            let nonce = SecureRandom.bytes(LinkHandshake.nonceLength)
            var handshake = LinkHandshake(role: .follower, secret: secret, nonce: nonce)
            send(handshake.start())
            guard let challenge = receive(LinkHandshake.challengeLength) else { return nil }
            switch handshake.receive(challenge) {
            case .established(let keys, let proof, _):
                send(proof)
                return keys
            case .rejected(let rejection):
                #expect(rejection == .wrongSecret)
                let leaderNonce = Array(challenge[LinkHandshake.magic.count..<LinkHandshake.magic.count + LinkHandshake.nonceLength])
                send(HMACSHA256.authenticationCode(key: secret, message: Array("graceful follower".utf8) + leaderNonce + nonce))
                return nil
            default:
                Issue.record("unexpected handshake step")
                return nil
            }
        }
    }

    /// Wrong secrets, tampered and replayed frames, garbage and silent port scanners, several of each,
    /// while the job trains: the job goes on and commits its stop, and the leader warns once per kind.
    @Test func strangersAtTheRendezvousPortAreDroppedWithOneWarningPerKind() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let nodes = try job.startThree()
        try nodes[0].waitFor("[rank0]: step 50:")
        let secret = Array(Self.token.utf8)
        let attempts = 3

        // Port scanners first: they say nothing and are dropped after the handshake timeout.
        let scanners = try (0..<attempts).map { _ in try Intruder(port: job.rendezvousPort) }
        for _ in 0..<attempts {
            let stranger = try Intruder(port: job.rendezvousPort)
            #expect(stranger.handshake(secret: Array("another-job-token-0123456789".utf8)) == nil)
            #expect(stranger.closedByPeer(within: 10), "a wrong proof was not refused")
        }
        for _ in 0..<attempts {
            let forger = try Intruder(port: job.rendezvousPort)
            let keys = try #require(forger.handshake(secret: secret))
            var writer = LinkFrameWriter(key: keys.sending)
            var frame = writer.seal(ClusterCoding.encode(ClusterNodeMessage.ping))
            frame[frame.count - 1] ^= 0x5A
            forger.send(frame)
            #expect(forger.closedByPeer(within: 10), "a frame with a wrong MAC was not refused")
        }
        for attempt in 0..<attempts {
            let replayer = try Intruder(port: job.rendezvousPort)
            let keys = try #require(replayer.handshake(secret: secret))
            var writer = LinkFrameWriter(key: keys.sending)
            let frames = (0...attempt).map { _ in writer.seal(ClusterCoding.encode(ClusterNodeMessage.ping)) }
            // Authentic frames, then the first one again: sequence number 1 where 2, 3, ... is due.
            // One write, so the leader reads the replay with the frames before it.
            replayer.send(frames.joined() + frames[0])
            #expect(replayer.closedByPeer(within: 10), "a replayed frame was not refused")
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<attempts {
            let noise = try Intruder(port: job.rendezvousPort)
            noise.send((0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) })
            #expect(noise.closedByPeer(within: 10), "garbage was not refused")
        }
        for scanner in scanners {
            #expect(scanner.closedByPeer(within: ClusterSession.handshakeTimeout + 10), "a silent connection was kept")
        }

        // The job went on training through it all, and stops as usual.
        let logged = nodes[0].count("[rank0]: step ")
        try nodes[0].waitFor("[rank0]: step ", count: logged + 2)
        try job.directory.write("ctl0.json", "{\"GracefulExit\": 1}\n")
        _ = try Self.expectOneCommit(job, nodes, trigger: "control-file")

        let leader = nodes[0].stderr
        // Strangers did not prove they hold the token; the fake followers did, but never joined.
        let stranger = "that did not prove it holds the job's token", insider = "that holds the job's token but did not join"
        let kinds = [
            (stranger, "\(LinkRejection.wrongSecret)"), (insider, "\(LinkRejection.tampered)"), (insider, "frame 1 arrived where frame "),
            (stranger, "\(LinkRejection.notGraceful)"), (stranger, "it did not complete the handshake within 5s"),
        ]
        let warnings = leader.split(separator: "\n").filter { $0.contains("warning: leader: dropped a connection") }
        for (who, kind) in kinds {
            let matching = warnings.filter { $0.contains("(\(kind)") }
            #expect(matching.count == 1, "\(kind):\n\(leader)")
            #expect(matching.first?.contains(who) == true, "\(kind):\n\(leader)")
        }
        #expect(warnings.count == kinds.count, "\(leader)")
        for node in 1..<3 { #expect(!nodes[node].stderr.contains("warning"), "node \(node):\n\(nodes[node].stderr)") }
    }

    // MARK: - Launches that do not fit together

    enum Inconsistency: String, CaseIterable {
        case rankClaimedTwice, otherRankCount, otherCommand, otherNodeCount
    }

    /// Nodes that disagree are refused before anything starts: every node exits 78 with one line
    /// naming the node at fault, and no rank ran.
    @Test(.serialized, arguments: Inconsistency.allCases)
    func disagreeingNodesAreRefusedEverywhereBeforeAnyLaunch(_ inconsistency: Inconsistency) throws {
        let job = try Job()
        defer { job.cleanUp() }
        // The leader and a good follower first, so the one at fault is the last to join and the
        // leader still has everyone to tell.
        let leader = try job.start(node: 0)
        let follower = try job.start(node: 1)
        try leader.waitFor("leader: node 1 (")
        let culprit: Launched
        let fault: String
        switch inconsistency {
        case .rankClaimedTwice:
            // Another machine would have its own run directory; this one shares the directory.
            culprit = try job.start(node: 1, options: ["--run-dir", "graceful_run/impostor"])
            fault = "node rank 1 was claimed twice"
        case .otherRankCount:
            culprit = try job.start(node: 2, ranks: 3)
            fault = "was started with -n 3, the leader"
        case .otherCommand:
            culprit = try job.start(node: 2, training: ["--steps", "99"])
            fault = "runs 'python3 \(Self.train) --steps 99', the leader"
        case .otherNodeCount:
            culprit = try job.start(node: 2, nodes: 4)
            fault = "node 2 ("
        }
        for (name, run) in [("leader", leader), ("follower", follower), ("node at fault", culprit)] {
            #expect(try run.waitForExit(timeout: 30) == 78, "\(name):\n\(run.output)")
            let refusals = run.stderr.split(separator: "\n").filter { $0.contains("the job was not launched:") }
            #expect(refusals.count == 1, "\(name):\n\(run.stderr)")
            #expect(refusals.first?.contains(fault) == true, "\(name):\n\(run.stderr)")
            if inconsistency == .otherNodeCount {
                #expect(refusals.first?.contains("was started with --nnodes 4, the leader with 3") == true, "\(name):\n\(run.stderr)")
            } else if inconsistency != .rankClaimedTwice {
                #expect(refusals.first?.contains("node 2 (") == true, "\(name):\n\(run.stderr)")
            }
            #expect(!run.stdout.contains("[rank"), "\(name) launched ranks:\n\(run.stdout)")
        }
        #expect(job.rankLogsWithContent().isEmpty, "\(job.rankLogsWithContent())")
        #expect(!FileManager.default.fileExists(atPath: job.directory.file("checkpoints")))
        #expect(waitUntilNoProcess(workingIn: job.directory.path).isEmpty, "processes left behind")
    }

    /// A follower holding another token is not let in: it says the leader does not hold its token and
    /// exits 78; the leader warns of a connection that did not prove the token, and gives up on the
    /// missing node at its --rdzv-timeout, like the good follower, having launched nothing.
    @Test func aFollowerWithAnotherTokenIsTurnedAway() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let leader = try job.start(node: 0, rendezvousTimeout: "3")
        let follower = try job.start(node: 1, rendezvousTimeout: "3")
        let stranger = try job.start(node: 2, environment: ["GRACEFUL_JOB_TOKEN": "another-job-token-0123456789"])
        #expect(try stranger.waitForExit(timeout: 30) == 78, "\(stranger.output)")
        #expect(stranger.stderr.contains("the job was not launched: the leader at 127.0.0.1:\(job.rendezvousPort) does not hold this node's job token"), "\(stranger.stderr)")
        for (name, run) in [("leader", leader), ("follower", follower)] {
            #expect(try run.waitForExit(timeout: 30) == 78, "\(name):\n\(run.output)")
            #expect(run.stderr.contains("the job was not launched: node(s) 2 did not join within 3s (--rdzv-timeout)"), "\(name):\n\(run.stderr)")
        }
        #expect(leader.count("warning: leader: dropped a connection") == 1, "\(leader.stderr)")
        #expect(leader.stderr.contains("that did not prove it holds the job's token"), "\(leader.stderr)")
        #expect(job.rankLogsWithContent().isEmpty)
        #expect(waitUntilNoProcess(workingIn: job.directory.path).isEmpty, "processes left behind")
    }

    /// A multi-node job needs a secret of at least 16 bytes; without one nothing starts, exit 64.
    @Test func aMultiNodeJobNeedsAJobTokenOfSixteenBytes() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let missing = try job.start(node: 0, nodes: 2, environment: [:], prefix: ["env", "-u", "GRACEFUL_JOB_TOKEN"])
        #expect(try missing.waitForExit(timeout: 30) == 64, "\(missing.output)")
        #expect(missing.stderr.split(separator: "\n").count == 1, "\(missing.stderr)")
        #expect(missing.stderr.hasPrefix("error: --nnodes 2 needs the job's secret on every node: export GRACEFUL_JOB_TOKEN="), "\(missing.stderr)")
        #expect(missing.stderr.contains("--token-file PATH"))

        let short = try job.start(node: 0, nodes: 2, environment: ["GRACEFUL_JOB_TOKEN": "fifteen-bytes.."])
        #expect(try short.waitForExit(timeout: 30) == 64, "\(short.output)")
        #expect(short.stderr.contains("the job token has 15 byte(s); it needs at least 16"), "\(short.stderr)")
        #expect(short.stderr.split(separator: "\n").count == 1, "\(short.stderr)")

        try job.directory.write("token", "fifteen-bytes..\n")
        let shortFile = try job.start(node: 1, nodes: 2, options: ["--token-file", "token"], environment: [:], prefix: ["env", "-u", "GRACEFUL_JOB_TOKEN"])
        #expect(try shortFile.waitForExit(timeout: 30) == 64, "\(shortFile.output)")
        #expect(shortFile.stderr.contains("the job token has 15 byte(s); it needs at least 16"), "\(shortFile.stderr)")
        #expect(job.rankLogsWithContent().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: job.directory.file("checkpoints")))
    }

    // MARK: - Rendezvous timing

    /// CPU time (user + system, clock ticks) of process `pid` so far.
    static func cpuTicks(_ pid: pid_t) -> Int? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state (0), ..., utime (11), stime (12).
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return nil }
        return user + system
    }

    /// A node waiting at the rendezvous reads its control file's events: an edit that asks for nothing
    /// leaves it waiting (without spinning on the unread event), one that requests the exit ends it
    /// as before a start (exit 75), with nothing launched.
    @Test func aControlFileFlipDuringTheRendezvousEndsTheNodeWithNothingLaunched() throws {
        let job = try Job()
        defer { job.cleanUp() }
        try job.directory.write("ctl0.json", "{\"GracefulExit\": 0}\n")
        let leader = try job.start(node: 0, nodes: 2)
        try leader.waitFor("leader: waiting for 1 node(s)")
        try job.directory.replace("ctl0.json", with: "{\"GracefulExit\": 0, \"note\": \"edited\"}\n")
        let before = try #require(Self.cpuTicks(leader.pid))
        let ticksPerSecond = Int(sysconf(Int32(_SC_CLK_TCK)))
        // Two seconds of waiting: a loop spinning on the unread event would use about two seconds of CPU.
        var waited = pollfd(fd: -1, events: 0, revents: 0)
        _ = poll(&waited, 0, 2000)
        let used = try #require(Self.cpuTicks(leader.pid)) - before
        #expect(used < ticksPerSecond / 2, "the waiting leader used \(used) ticks of CPU in 2 s")
        #expect(leader.status == nil, "\(leader.output)")
        try job.directory.replace("ctl0.json", with: "{\"GracefulExit\": 1}\n")
        #expect(try leader.waitForExit(timeout: 30) == 75, "\(leader.output)")
        #expect(leader.stderr.contains("already requests an exit"), "\(leader.stderr)")
        #expect(job.rankLogsWithContent().isEmpty)
    }

    /// Followers started before their leader wait for it and join; a follower whose leader never comes
    /// gives up after --rdzv-timeout, exit 78, having launched nothing.
    @Test func followersWaitForALateLeaderButNotForever() throws {
        let job = try Job()
        defer { job.cleanUp() }
        let training = ["--steps", "40", "--step-time", "0.005", "--log-every", "0"]
        let followers = try (1..<3).map { try job.start(node: $0, training: training) }
        for run in followers { try run.waitFor("waiting for the leader at 127.0.0.1:\(job.rendezvousPort)") }
        let leader = try job.start(node: 0, training: training)
        for (node, run) in ([leader] + followers).enumerated() {
            #expect(try run.waitForExit(timeout: 60) == 0, "node \(node):\n\(run.output)")
            for local in 0..<2 {
                let rank = node * 2 + local
                #expect(run.stdout.contains("[rank\(rank)]: rank \(rank)/6: finished 40 steps"), "node \(node):\n\(run.stdout)")
            }
        }
        #expect(leader.stderr.contains("leader: every node joined: launching 6 rank(s) on 3 node(s)"))

        let lonely = try Job()
        defer { lonely.cleanUp() }
        let startedAt = Date()
        let orphan = try lonely.start(node: 1, nodes: 2, rendezvousTimeout: "2")
        #expect(try orphan.waitForExit(timeout: 30) == 78, "\(orphan.output)")
        let elapsed = Date().timeIntervalSince(startedAt)
        #expect(elapsed >= 2 && elapsed < 10, "gave up after \(elapsed)s")
        #expect(orphan.stderr.contains("within 2s (--rdzv-timeout)"), "\(orphan.stderr)")
        #expect(lonely.rankLogsWithContent().isEmpty)
    }
}
