import CGraceful
import Glibc
import Testing

@testable import Graceful

/// The walk finds real descendants (through a parent that is still alive, and whatever their
/// process group), attributes them to their rank, and never lists a process outside the tree.
@Suite(.serialized) struct DescendantsTests {
    /// `sh` (its own group) starting a child that leaves the group with setsid and a grandchild of that.
    @Test func findsEveryDescendantAndTheRankItBelongsTo() throws {
        let marker = "descendants-test-\(getpid())"
        let script = "setsid sh -c 'sleep 300 & sleep 300; : \(marker)' & echo ready; sleep 300"
        let rank = try Launched(["/bin/sh", "-c", script], in: "/tmp")
        try rank.waitFor("ready")
        // The setsid'ed shell forks its sleeps right away; wait until both are there (bounded).
        var snapshot = Descendants.walk()
        for _ in 0..<200 where snapshot.members(ofRankLed: rank.pid).count < 5 {
            snapshot.close()
            var pause = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&pause, nil)
            snapshot = Descendants.walk()
        }
        defer { snapshot.close() }
        let members = snapshot.members(ofRankLed: rank.pid)
        // /bin/sh (exec'd by Launched's sh), setsid sh, its two sleeps, and the rank's own sleep.
        #expect(members.count == 5, "\(members.map(\.pid))")
        #expect(members.contains { $0.pid == rank.pid })
        #expect(members.contains { $0.processGroup != rank.pid }, "the setsid'ed shell left the group")
        #expect(snapshot.processes.allSatisfy { $0.pid != getppid() && $0.pid != getpid() })
        #expect(snapshot.members(ofRankLed: 999_999).isEmpty)
        members.forEach { $0.send(SIGKILL) }
        #expect(try rank.waitForExit() == 128 + SIGKILL)
    }
}
