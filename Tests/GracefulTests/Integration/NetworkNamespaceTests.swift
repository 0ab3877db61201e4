import Foundation
import Glibc
import Testing

@testable import Graceful

/// Multi-node jobs whose nodes really are apart: each node's `graceful run` in its own network
/// namespace (`ip netns exec`), joined by a veth pair to a bridge in the test's namespace, so every
/// node has its own address on one /24 (node K at .(10 + K), the bridge at .1) and reaches the
/// others only through the bridge. The leader (node 0) is --master-addr for all, and the six ranks
/// of the toy training all-reduce through its address. Needs root and iproute2; skipped otherwise,
/// or where namespaces cannot be made (a container without CAP_SYS_ADMIN). Serialized: a two-core
/// machine runs one nine-process job at a time.
@Suite(.serialized, .enabled(if: NamespaceNetwork.probeFailure == nil, "\(NamespaceNetwork.unavailableReason)"))
struct NetworkNamespaceTests {
    typealias Job = MultiNodeTests.Job

    /// The three nodes of a job, each in its namespace, leader first, --master-addr the leader's address.
    static func startThree(_ job: Job, _ network: NamespaceNetwork, training: [String] = MultiNodeTests.endless) throws -> [Launched] {
        try (0..<3).map { node in
            try job.start(node: node, options: ["--master-addr", network.address(node: 0)], training: training, prefix: network.exec(node: node))
        }
    }

    /// Each coordinator is the process the test started (`ip netns exec` execs it, so signals and
    /// cleanup reach it by its pid) and lives in its node's namespace, not the test's; and the /proc
    /// view of the cleanup sees every process of the job, coordinators and ranks, from here.
    static func expectInTheirNamespaces(_ nodes: [Launched], _ network: NamespaceNetwork, job: Job) {
        let here = NamespaceNetwork.inode("/proc/self/ns/net")
        for (node, run) in nodes.enumerated() {
            let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(run.pid)/exe")
            #expect(executable == Launched.graceful, "node \(node)'s pid \(run.pid) runs \(executable ?? "nothing")")
            let inside = NamespaceNetwork.inode("/proc/\(run.pid)/ns/net")
            #expect(inside != nil && inside == NamespaceNetwork.inode("/run/netns/" + network.namespace(node: node)), "node \(node) is not in its namespace")
            #expect(inside != here, "node \(node) runs in the test's namespace")
        }
        let working = processes(workingIn: job.directory.path)
        #expect(working.count >= 9, "the cleanup sees \(working.count) process(es) of the job: \(working)")
    }

    /// Every node exited 0 after one stop that committed one step everywhere (the step, returned, is
    /// the leader's record's); with `resumedFrom`, every node and rank resumed from that step first.
    static func expectOneCommit(_ job: Job, _ nodes: [Launched], trigger: String, resumedFrom resumed: Int? = nil) throws -> Int {
        for (node, run) in nodes.enumerated() {
            #expect(try run.waitForExit(timeout: 90) == 0, "node \(node):\n\(run.output)")
        }
        let step = try MultiNodeTests.committedStep(job)
        let record = try #require(job.record(node: 0))
        #expect(record.contains("\"trigger\": \"\(trigger)\""), "\(record)")
        for (node, run) in nodes.enumerated() {
            let commits = run.stderr.split(separator: "\n").filter { $0.contains("graceful[node \(node)]: committed step ") }
            #expect(commits.map(String.init) == ["graceful[node \(node)]: committed step \(step)"], "node \(node):\n\(run.stderr)")
            for local in 0..<2 {
                let rank = node * 2 + local
                #expect(run.stdout.contains("[rank\(rank)]: rank \(rank)/6: stopped after step \(step) "), "node \(node):\n\(run.stdout)")
                if let resumed {
                    let line = run.stdout.split(separator: "\n").first { $0.hasPrefix("[rank\(rank)]: rank \(rank)/6: resuming from ") }
                    #expect(line?.hasSuffix("/checkpoints/train/rank\(rank)/step_\(resumed).json (step \(resumed))") == true, "node \(node):\n\(run.stdout)")
                }
            }
            if let resumed {
                #expect(run.stderr.contains("graceful[node \(node)]: resuming from committed step \(resumed) "), "node \(node):\n\(run.stderr)")
            }
            if node > 0 { #expect(job.record(node: node) == record, "node \(node)'s copy differs from the leader's record") }
        }
        #expect(waitUntilNoProcess(workingIn: job.directory.path).isEmpty, "processes left behind")
        return step
    }

    /// The control file of a follower stops all six ranks, in three namespaces, at one committed step;
    /// the relaunch resumes every node from it, and SIGTERM to another follower's coordinator (a
    /// scheduler ending that node) commits a second step everywhere.
    @Test func aFollowersControlFileStopsNodesInTheirOwnNamespacesAndSigtermStopsTheResumedJob() throws {
        let network = try NamespaceNetwork(nodes: 3)
        defer { network.tearDown() }
        let job = try Job()
        defer { job.cleanUp() }
        let leader = network.address(node: 0)
        for node in 0..<3 { try job.directory.write("ctl\(node).json", "{\"GracefulExit\": 0}\n") }
        let nodes = try Self.startThree(job, network)
        try nodes[0].waitFor("[rank0]: step 50:")
        Self.expectInTheirNamespaces(nodes, network, job: job)
        for node in 1..<3 { try nodes[node].waitFor("joining the job at \(leader):\(job.rendezvousPort)\n", timeout: 10) }
        try job.directory.replace("ctl1.json", with: "{\"GracefulExit\": 1}\n")
        let step = try Self.expectOneCommit(job, nodes, trigger: "control-file")
        #expect(step > 50)
        #expect(nodes[0].stderr.contains("leader: stop requested (control-file); asking 3 node(s)"), "\(nodes[0].stderr)")
        #expect(job.directory.read("ctl1.json") == "{\"GracefulExit\": 0}\n")

        let resumed = try Self.startThree(job, network)
        try resumed[0].waitFor("[rank0]: step ")
        Self.expectInTheirNamespaces(resumed, network, job: job)
        resumed[2].signal(SIGTERM)
        let second = try Self.expectOneCommit(job, resumed, trigger: "SIGTERM", resumedFrom: step)
        #expect(second > step)
    }

    /// Strangers on the bridge, a port scanner and a connection holding another job's token, reach the
    /// leader's rendezvous port at its address and are dropped, each with one warning naming the
    /// bridge's address; nothing listens at a follower's address; the job trains on and stops as usual.
    @Test func strangersOnTheBridgeAreDroppedWhileTheNodesTrainOn() throws {
        let network = try NamespaceNetwork(nodes: 3)
        defer { network.tearDown() }
        let job = try Job()
        defer { job.cleanUp() }
        let nodes = try Self.startThree(job, network)
        try nodes[0].waitFor("[rank0]: step 50:")
        let leader = network.address(node: 0)

        #expect(throws: Launched.SpawnError.self, "a follower listens at the rendezvous port") {
            try MultiNodeTests.Intruder(host: network.address(node: 1), port: job.rendezvousPort)
        }
        let scanner = try MultiNodeTests.Intruder(host: leader, port: job.rendezvousPort)
        let stranger = try MultiNodeTests.Intruder(host: leader, port: job.rendezvousPort)
        #expect(stranger.handshake(secret: Array("another-job-token-0123456789".utf8)) == nil)
        #expect(stranger.closedByPeer(within: 10), "a wrong proof was not refused")
        #expect(scanner.closedByPeer(within: ClusterSession.handshakeTimeout + 10), "a silent connection was kept")

        let logged = nodes[0].count("[rank0]: step ")
        try nodes[0].waitFor("[rank0]: step ", count: logged + 2)
        try job.directory.write("ctl0.json", "{\"GracefulExit\": 1}\n")
        _ = try Self.expectOneCommit(job, nodes, trigger: "control-file")

        let warnings = nodes[0].stderr.split(separator: "\n").filter { $0.contains("warning: leader: dropped a connection") }
        #expect(warnings.count == 2, "\(nodes[0].stderr)")
        let fromBridge = "graceful[node 0]: warning: leader: dropped a connection from \(network.bridgeAddress):"
        #expect(warnings.allSatisfy { $0.hasPrefix(fromBridge) && $0.contains("that did not prove it holds the job's token") }, "\(warnings)")
        #expect(warnings.contains { $0.contains("(\(LinkRejection.wrongSecret)") }, "\(warnings)")
        #expect(warnings.contains { $0.contains("(it did not complete the handshake within 5s") }, "\(warnings)")
        for node in 1..<3 { #expect(!nodes[node].stderr.contains("warning"), "node \(node):\n\(nodes[node].stderr)") }
    }
}

/// Network namespaces gr<pid>n<K>, one per node, each joined by a veth pair (gr<pid>h<K> here,
/// gr<pid>p<K> inside) to the bridge gr<pid>b, all of one /24 10.213.X.0 that no address or route of
/// this machine uses yet. Everything is removed by `tearDown()`; what a killed test process left
/// (names whose pid is gone) is removed before a network is made.
final class NamespaceNetwork {
    static let ip = SlurmCluster.executable("ip")

    let tag: String
    let nodes: Int
    /// X of 10.213.X.0/24.
    let subnet: Int

    var bridge: String { tag + "b" }
    var bridgeAddress: String { "10.213.\(subnet).1" }
    func namespace(node: Int) -> String { tag + "n\(node)" }
    func hostEnd(node: Int) -> String { tag + "h\(node)" }
    func innerEnd(node: Int) -> String { tag + "p\(node)" }
    func address(node: Int) -> String { "10.213.\(subnet).\(10 + node)" }
    /// The prefix that runs a command in node `node`'s namespace.
    func exec(node: Int) -> [String] { [Self.ip ?? "ip", "netns", "exec", namespace(node: node)] }

    init(nodes: Int) throws {
        Self.removeAbandoned()
        tag = Self.tag(getpid())
        self.nodes = nodes
        subnet = try Self.freeSubnet()
        do {
            try Self.run(["link", "add", bridge, "type", "bridge"])
            try Self.run(["addr", "add", bridgeAddress + "/24", "dev", bridge])
            try Self.run(["link", "set", bridge, "up"])
            for node in 0..<nodes {
                let name = namespace(node: node)
                try Self.run(["netns", "add", name])
                try Self.run(["link", "add", hostEnd(node: node), "type", "veth", "peer", "name", innerEnd(node: node), "netns", name])
                try Self.run(["link", "set", hostEnd(node: node), "master", bridge, "up"])
                try Self.run(["-n", name, "link", "set", "lo", "up"])
                try Self.run(["-n", name, "addr", "add", address(node: node) + "/24", "dev", innerEnd(node: node)])
                try Self.run(["-n", name, "link", "set", innerEnd(node: node), "up"])
            }
        } catch {
            tearDown()
            throw error
        }
    }

    /// Removes the namespaces (killing whatever still runs in them), the veth pairs and the bridge,
    /// and records an issue for any of them still there.
    func tearDown() {
        let left = Self.remove(namespaces: (0..<nodes).map { namespace(node: $0) }, links: (0..<nodes).map { hostEnd(node: $0) } + [bridge])
        if !left.isEmpty { Issue.record("network namespace test: left behind: \(left.joined(separator: ", "))") }
    }

    // MARK: - Names

    static func tag(_ pid: pid_t) -> String { "gr\(pid)" }

    /// What follows gr<pid> in a name of this test: nodes' namespaces and veth ends, the bridge, the
    /// probe's namespace.
    private static let kinds: Set<String> = Set((0..<10).flatMap { ["n\($0)", "h\($0)", "p\($0)"] } + ["b", "q"])

    /// The test process whose name `name` is, if it is one of this test's.
    static func owner(of name: String) -> pid_t? {
        guard name.hasPrefix("gr") else { return nil }
        let rest = name.dropFirst(2)
        let digits = rest.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, kinds.contains(String(rest.dropFirst(digits.count))) else { return nil }
        return pid_t(digits)
    }

    static func isAlive(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

    /// Namespaces and links of this test whose process is gone (killed before its teardown), and any
    /// of this process (none is in use when a network is made: the suite is serialized).
    static func removeAbandoned() {
        let mine = getpid()
        let abandoned: (String) -> Bool = { name in owner(of: name).map { $0 == mine || !isAlive($0) } ?? false }
        let left = remove(namespaces: namespaces().filter(abandoned), links: links().filter(abandoned))
        if !left.isEmpty { print("network namespace test: could not remove leftovers \(left.joined(separator: ", "))") }
    }

    /// Kills what runs in `namespaces`, deletes `links` (a veth pair goes with either end) and then
    /// the namespaces; returns those still listed after a few seconds.
    @discardableResult
    static func remove(namespaces doomed: [String], links doomedLinks: [String]) -> [String] {
        let existing = Set(namespaces())
        for namespace in doomed where existing.contains(namespace) {
            let pids = ((try? run(["netns", "pids", namespace])) ?? "").split(separator: "\n").compactMap { pid_t($0) }
            for pid in pids { kill(pid, SIGKILL) }
        }
        let existingLinks = Set(links())
        for link in doomedLinks where existingLinks.contains(link) { _ = try? run(["link", "del", link]) }
        for namespace in doomed where existing.contains(namespace) { _ = try? run(["netns", "del", namespace]) }
        let deadline = Date().addingTimeInterval(5)
        while true {
            let left = Set(namespaces()).intersection(doomed).union(Set(links()).intersection(doomedLinks)).sorted()
            if left.isEmpty || Date() >= deadline { return left }
            usleep(50_000)
        }
    }

    /// The named network namespaces (`ip netns list`: "name" or "name (id: N)").
    static func namespaces() -> [String] {
        ((try? run(["netns", "list"])) ?? "").split(separator: "\n").compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    /// The links of the test's namespace (`ip -o link show`: "N: name[@peer]: <...").
    static func links() -> [String] {
        ((try? run(["-o", "link", "show"])) ?? "").split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ":", maxSplits: 2)
            guard fields.count == 3 else { return nil }
            return fields[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init)
        }
    }

    /// X such that 10.213.X.0/24 appears in no address or route here (another test process's network
    /// included), starting from one that depends on the pid.
    static func freeSubnet() throws -> Int {
        let used = try run(["-4", "-o", "addr", "show"]) + run(["-4", "route", "show", "table", "all"])
        let start = Int(getpid() % 256)
        for offset in 0..<256 {
            let candidate = (start + offset) % 256
            if !used.contains("10.213.\(candidate).") { return candidate }
        }
        throw Launched.SpawnError(message: "every 10.213.X.0/24 is in use")
    }

    /// `ip arguments...`: its standard output, or an error with its standard error.
    @discardableResult
    static func run(_ arguments: [String]) throws -> String {
        guard let ip else { throw Launched.SpawnError(message: "ip is not installed") }
        let launched = try Launched([ip] + arguments, in: "/")
        let status = try launched.waitForExit(timeout: 30)
        guard status == 0 else {
            let message = launched.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw Launched.SpawnError(message: "ip \(arguments.joined(separator: " ")) exited \(status): \(message)")
        }
        return launched.stdout
    }

    /// The inode of a namespace file (/proc/PID/ns/net, /run/netns/NAME), nil when it cannot be read.
    static func inode(_ path: String) -> UInt? {
        var info = stat()
        return stat(path, &info) == 0 ? UInt(info.st_ino) : nil
    }

    // MARK: - Whether it can run here

    /// What keeps the test from running, when that is known without trying.
    private static let knownObstacle: String? = {
        if geteuid() != 0 { return "needs root: creates network namespaces, veth pairs and a bridge" }
        if ip == nil { return "the ip command (iproute2) is not installed" }
        return nil
    }()

    /// Why the tests are skipped, decided without creating anything (traits are built for every test).
    static let unavailableReason = knownObstacle
        ?? "creating a network namespace, veth pair or bridge failed here: the line 'network namespace test: ...' above says why"

    /// Nil when a namespace, a veth pair and a bridge can be made here; else why not (also printed).
    /// Made inside a probe namespace of this process, which takes them along when it is deleted, so
    /// nothing ever appears in the test's namespace: a few ip commands, once per test process.
    static let probeFailure: String? = {
        if let knownObstacle { return knownObstacle }
        let namespace = tag(getpid()) + "q"
        let script = """
            # A name of this pid that exists was left by a killed process of the same pid.
            { ip netns add \(namespace) 2>/dev/null || { ip netns del \(namespace) 2>/dev/null; ip netns add \(namespace); }; } && ip -n \(namespace) link add \(namespace)v type veth peer name \(namespace)w \
              && ip -n \(namespace) link add \(namespace)b type bridge
            status=$?
            ip netns del \(namespace) 2>/dev/null
            exit $status
            """
        let directory = URL(fileURLWithPath: ip!).deletingLastPathComponent().path
        let failure: String? = {
            guard let probe = try? Launched(["/bin/sh", "-c", "PATH=\(directory):$PATH; " + script], in: "/") else { return "could not start /bin/sh" }
            let status = (try? probe.waitForExit(timeout: 30)) ?? -1
            guard status != 0 else { return nil }
            let said = probe.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            return "creating a network namespace, veth pair and bridge failed (exit \(status)): \(said)"
        }()
        if let failure { print("network namespace test: \(failure)") }
        return failure
    }()
}
