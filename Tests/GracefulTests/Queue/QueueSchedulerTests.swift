import Testing

@testable import Graceful

@Suite struct QueueSchedulerTests {
    var policy: QueuePolicy {
        var policy = QueuePolicy()
        policy.lease = 10
        policy.maxAttempts = 2
        policy.backoff = 1
        return policy
    }

    @Test func claimsPendingTasksInOrder() {
        var scheduler = QueueScheduler(policy: policy)
        let tasks = [TaskFiles(id: "a", outcome: .finished(attempt: 1)), TaskFiles(id: "b"), TaskFiles(id: "c")]
        #expect(scheduler.next(tasks, at: .seconds(1), runningHere: []) == .claim(task: "b", attempt: 1, takeover: nil))
    }

    @Test func leaseExpiresOnlyAfterTheHeartbeatStoodStillForALeaseOnOurClock() {
        var scheduler = QueueScheduler(policy: policy)
        let claim = TaskFiles.Claim(attempt: 1, holder: "h/1/w0", host: "other", heartbeat: 5)
        let tasks = [TaskFiles(id: "a", claims: [claim])]
        #expect(scheduler.next(tasks, at: .seconds(100), runningHere: []) == .wait(until: .seconds(110)))
        #expect(scheduler.next(tasks, at: .seconds(109), runningHere: []) == .wait(until: .seconds(110)))
        var renewed = claim
        renewed.heartbeat = 6
        #expect(scheduler.next([TaskFiles(id: "a", claims: [renewed])], at: .seconds(109.5), runningHere: []) == .wait(until: .seconds(119.5)))
        #expect(scheduler.next([TaskFiles(id: "a", claims: [renewed])], at: .seconds(119.5), runningHere: []) == .claim(task: "a", attempt: 2, takeover: renewed))
    }

    @Test func aGoneHolderOnThisHostIsTakenOverAtOnce() {
        var scheduler = QueueScheduler(policy: policy)
        let claim = TaskFiles.Claim(attempt: 3, holder: "me/9/w0", host: "me", heartbeat: 1, holderGone: true)
        #expect(scheduler.next([TaskFiles(id: "a", claims: [claim])], at: .seconds(1), runningHere: []) == .claim(task: "a", attempt: 4, takeover: claim))
    }

    @Test func failedAttemptsBackOffThenExhaustTheTask() {
        var scheduler = QueueScheduler(policy: policy)
        let failed = TaskFiles.Claim(attempt: 1, holder: "x", host: "h", heartbeat: 1, end: .failed(exit: 1))
        let one = [TaskFiles(id: "a", claims: [failed])]
        #expect(scheduler.next(one, at: .seconds(50), runningHere: []) == .wait(until: .seconds(51)))
        #expect(scheduler.next(one, at: .seconds(51), runningHere: []) == .claim(task: "a", attempt: 2, takeover: nil))
        let released = TaskFiles.Claim(attempt: 2, holder: "x", host: "h", heartbeat: 1, end: .released)
        #expect(scheduler.next([TaskFiles(id: "a", claims: [failed, released])], at: .seconds(52), runningHere: []) == .claim(task: "a", attempt: 3, takeover: nil))
        var second = failed
        second.attempt = 3
        #expect(scheduler.next([TaskFiles(id: "a", claims: [failed, released, second])], at: .seconds(53), runningHere: []) == .fail(task: "a", reason: .attemptsFailed(2)))
    }

    @Test func aLeaseExpiringMaxLeaseExpiriesTimesFailsTheTaskInsteadOfTakingItBackAgain() {
        var bounded = policy
        bounded.maxLeaseExpiries = 3
        var scheduler = QueueScheduler(policy: bounded)
        // Each holder died on this host: taken back at once. A failure and a put-back do not count.
        let first = TaskFiles.Claim(attempt: 1, holder: "me/1/w0", host: "me", heartbeat: 1, holderGone: true)
        #expect(scheduler.next([TaskFiles(id: "a", claims: [first])], at: .seconds(1), runningHere: []) == .claim(task: "a", attempt: 2, takeover: first))
        let failed = TaskFiles.Claim(attempt: 1, holder: "me/1/w0", host: "me", heartbeat: 1, end: .failed(exit: 1))
        let released = TaskFiles.Claim(attempt: 2, holder: "me/2/w0", host: "me", heartbeat: 1, end: .released)
        let second = TaskFiles.Claim(attempt: 3, holder: "me/3/w0", host: "me", heartbeat: 1, holderGone: true, takeover: true)
        #expect(scheduler.next([TaskFiles(id: "a", claims: [failed, released, second])], at: .seconds(2), runningHere: [])
            == .claim(task: "a", attempt: 4, takeover: second))
        // The third expiry: two takeovers before it.
        var third = second
        third.attempt = 4
        let claims = [failed, released, second, third]
        #expect(scheduler.next([TaskFiles(id: "a", claims: claims)], at: .seconds(3), runningHere: [])
            == .fail(task: "a", reason: .leaseExpired(times: 3, last: third)))
        // Not while a copy of it runs here: that copy may still finish it.
        #expect(scheduler.next([TaskFiles(id: "a", claims: claims)], at: .seconds(3), runningHere: ["a"]) == .wait(until: nil))
        // A lease that has not expired (its heartbeat first seen at 3 s, lease 10 s) is no expiry.
        var live = third
        live.holderGone = false
        #expect(scheduler.next([TaskFiles(id: "a", claims: [failed, released, second, live])], at: .seconds(4), runningHere: [])
            == .wait(until: .seconds(13)))
    }

    @Test func stragglerCopiesTheLongestRunningTaskOnlyWhenNothingIsPending() {
        var withCopies = policy
        withCopies.stragglers = true
        var scheduler = QueueScheduler(policy: withCopies)
        let old = TaskFiles(id: "a", claims: [TaskFiles.Claim(attempt: 1, holder: "x", host: "h", heartbeat: 1)])
        _ = scheduler.observe([old], at: .seconds(1))
        let young = TaskFiles(id: "b", claims: [TaskFiles.Claim(attempt: 1, holder: "y", host: "h", heartbeat: 1)])
        #expect(scheduler.next([old, young, TaskFiles(id: "c")], at: .seconds(5), runningHere: []) == .claim(task: "c", attempt: 1, takeover: nil))
        #expect(scheduler.next([old, young], at: .seconds(5), runningHere: []) == .copy(task: "a", attempt: 1))
        var copied = old
        copied.claims[0].copied = true
        #expect(scheduler.next([copied, young], at: .seconds(5), runningHere: ["a"]) == .copy(task: "b", attempt: 1))
    }

    @Test func drainedOnlyWhenEveryTaskHasItsOutcome() {
        var scheduler = QueueScheduler(policy: policy)
        #expect(scheduler.next([TaskFiles(id: "a", outcome: .finished(attempt: 1)), TaskFiles(id: "b", outcome: .failed(attempts: 2))], at: .seconds(1), runningHere: []) == .drained)
    }
}
