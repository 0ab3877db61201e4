import GracefulProtocol
import Testing

@testable import Graceful

/// The leader of a multi-node job, driven by messages and a fake clock; no network involved.
@Suite struct ClusterLeaderTests {
    let t0 = Instant.seconds(100)
    let policy = ClusterLeader.Policy(grace: 30, alignTimeout: 2, checkpointEvery: nil, rendezvousTimeout: 60)
    let command = ["python", "train.py"]
    let world = ClusterWorld(runID: "run-a", nodeCount: 3, localRanks: 2)

    func join(
        _ node: Int, nodes: Int = 3, ranks: Int = 2, command: [String]? = nil, commit: ClusterJoin.Commit? = nil,
        host: String? = nil
    ) -> ClusterJoin {
        ClusterJoin(node: node, nodeCount: nodes, localRanks: ranks, command: command ?? self.command, commit: commit,
                    host: host ?? "n\(node)")
    }

    /// A leader of `nodes` nodes, still gathering.
    func gathering(nodes: Int = 3, commit: ClusterJoin.Commit? = nil, record: String? = nil, policy: ClusterLeader.Policy? = nil) -> ClusterLeader {
        ClusterLeader(leader: join(0, nodes: nodes, commit: commit), runID: "run-a", record: record, policy: policy ?? self.policy, now: t0)
    }

    /// A leader of `nodes` nodes that launched the job at `t0`.
    func launched(nodes: Int = 3, policy: ClusterLeader.Policy? = nil) -> ClusterLeader {
        var leader = gathering(nodes: nodes, policy: policy)
        for node in 1..<nodes { _ = leader.joined(join(node, nodes: nodes), now: t0) }
        precondition(leader.phase == .running)
        return leader
    }

    /// Every command of `actions`, per node, in order.
    func sends(_ actions: [ClusterLeader.Action]) -> [Int: [ClusterCommand]] {
        var result: [Int: [ClusterCommand]] = [:]
        for case .send(let node, let command) in actions { result[node, default: []].append(command) }
        return result
    }

    /// The same command to each of `nodes`, and to no other node.
    func toEach(_ nodes: [Int], _ command: ClusterCommand) -> [Int: [ClusterCommand]] {
        Dictionary(uniqueKeysWithValues: nodes.map { ($0, [command]) })
    }

    func commits(_ actions: [ClusterLeader.Action]) -> [ClusterLeader.Action] {
        actions.filter { if case .commit = $0 { true } else { false } }
    }

    func reports(_ actions: [ClusterLeader.Action]) -> [ClusterReport] {
        actions.compactMap { if case .report(let report) = $0 { report } else { nil } }
    }

    func paths(_ node: Int) -> [CheckpointPath?] {
        [CheckpointPath("n\(node)r0"), CheckpointPath("n\(node)r1")]
    }

    /// A stop from node 1 whose step the leader chose: 1 + the furthest position (41).
    func stopWithStep(nodes: Int = 3, trigger: Trigger = .signal(SignalNumber.terminate)) -> ClusterLeader {
        var leader = launched(nodes: nodes)
        _ = leader.received(.trigger(trigger), from: min(1, nodes - 1), now: t0)
        for node in 0..<nodes { _ = leader.received(.position(round: 1, furthest: 40 + node % 2), from: node, now: t0) }
        return leader
    }

    // MARK: - Rendezvous

    @Test func theJobLaunchesOnlyOnceEveryNodeJoined() {
        var leader = gathering(record: "{\"step\":7}")
        #expect(leader.joined(join(2), now: t0) == [.report(.joined(node: 2, host: "n2", waiting: 1))])
        #expect(leader.nextDeadline == t0 + 60)
        #expect(leader.received(.trigger(.controlFile), from: 2, now: t0).isEmpty)
        #expect(leader.tick(now: t0 + 59).isEmpty)
        let last = leader.joined(join(1), now: t0 + 59.5)
        #expect(last.first == .report(.launching(world)))
        #expect(sends(last) == toEach([0, 1, 2], .launch(world, record: "{\"step\":7}")))
        #expect(leader.phase == .running)
        #expect(leader.living == [0, 1, 2])
        #expect(leader.nextDeadline == nil)
        #expect(leader.joined(join(1, host: "late"), now: t0 + 60)
            == [.report(.lateJoin(node: 1, host: "late")), .refuseJoin(
                "node rank 1 is still held by n1 in the running job (a silent node counts as gone after --heartbeat-timeout); late may join once the leader restarts the job")])
        #expect(leader.tick(now: t0 + 1000).isEmpty)
        #expect("\(ClusterReport.launching(world))" == "leader: every node joined: launching 6 rank(s) on 3 node(s)")
    }

    /// Each way a node can disagree with the leader, after node 1 joined: (the join, the line).
    static let disagreements: [(ClusterJoin, String)] = {
        let command = ["python", "train.py"]
        func join(_ node: Int, nodes: Int = 3, ranks: Int = 2, command: [String] = command, commit: ClusterJoin.Commit? = nil, host: String? = nil) -> ClusterJoin {
            ClusterJoin(node: node, nodeCount: nodes, localRanks: ranks, command: command, commit: commit, host: host ?? "n\(node)")
        }
        return [
            (join(1, host: "impostor"), "node rank 1 was claimed twice: by n1 and by impostor"),
            (join(0, host: "impostor"), "node rank 0 was claimed twice: by n0 and by impostor"),
            (join(2, nodes: 4), "node 2 (n2) was started with --nnodes 4, the leader with 3"),
            (join(3), "node 3 (n3) has a node rank outside 0...2"),
            (join(2, ranks: 3), "node 2 (n2) was started with -n 3, the leader (n0) with -n 2"),
            (join(2, command: ["python", "other.py"]), "node 2 (n2) runs 'python other.py', the leader (n0) 'python train.py'"),
            (join(2, commit: .init(runID: "run-z", step: 5)),
             "node 2 (n2) last committed step 5 of run run-z, the leader (n0) none: they are not one job's records"),
        ]
    }()

    @Test(arguments: disagreements.indices)
    func anyDisagreementRefusesEveryJoinedNodeNamingTheOneAtFault(_ index: Int) {
        let (wrong, line) = Self.disagreements[index]
        var leader = gathering()
        _ = leader.joined(join(1), now: t0)
        let actions = leader.joined(wrong, now: t0)
        #expect(actions == [.send(node: 1, .refused(line)), .abort(line)])
        #expect(line.contains(wrong.host))
        #expect(leader.phase == .aborted)
        #expect(leader.nextDeadline == nil)
        // Nothing more happens: no launch, whoever joins or leaves next.
        #expect(leader.joined(join(2), now: t0) == [.report(.lateJoin(node: 2, host: "n2"))])
        #expect(leader.lost(node: 1, reason: "gone", now: t0).isEmpty)
        #expect(leader.received(.trigger(.controlFile), from: 1, now: t0).isEmpty)
        #expect(leader.tick(now: t0 + 1000).isEmpty)
        #expect(leader.living.isEmpty && !leader.allEnded)
    }

    @Test func aCommitTheLeaderNeverMadeRefusesTheJob() {
        let own = ClusterJoin.Commit(runID: "run-a", step: 100)
        for (theirs, leaderSide) in [
            (ClusterJoin.Commit(runID: "run-a", step: 120), "step 100 of run run-a"),
            (ClusterJoin.Commit(runID: "run-b", step: 100), "step 100 of run run-a"),
        ] {
            var leader = gathering(commit: own)
            _ = leader.joined(join(2), now: t0)
            let line = "node 1 (n1) last committed \(theirs), the leader (n0) \(leaderSide): they are not one job's records"
            #expect(leader.joined(join(1, commit: theirs), now: t0) == [.send(node: 2, .refused(line)), .abort(line)])
        }
    }

    @Test func anOlderFollowerCommitIsAccepted() {
        let own = ClusterJoin.Commit(runID: "run-a", step: 100)
        var leader = gathering(commit: own)
        #expect(leader.joined(join(1, commit: .init(runID: "run-a", step: 80)), now: t0) == [.report(.joined(node: 1, host: "n1", waiting: 1))])
        let last = leader.joined(join(2, commit: own), now: t0)
        #expect(sends(last) == toEach([0, 1, 2], .launch(world, record: nil)))
    }

    @Test func theRendezvousTimeoutNamesTheMissingNodes() {
        var leader = gathering(nodes: 4)
        _ = leader.joined(join(2, nodes: 4), now: t0 + 5)
        #expect(leader.nextDeadline == t0 + 60)
        #expect(leader.tick(now: t0 + 59.9).isEmpty)
        let line = "node(s) 1, 3 did not join within 60s (--rdzv-timeout)"
        #expect(leader.tick(now: t0 + 60) == [.send(node: 2, .refused(line)), .abort(line)])
        #expect(leader.phase == .aborted)
    }

    @Test func aNodeLeavingBeforeTheLaunchFreesItsRank() {
        var leader = gathering()
        _ = leader.joined(join(1, host: "first"), now: t0)
        #expect(leader.lost(node: 1, reason: "connection reset", now: t0) == [.report(.leftBeforeLaunch(node: 1, reason: "connection reset"))])
        #expect(leader.lost(node: 1, reason: "again", now: t0).isEmpty)
        #expect(leader.lost(node: 0, reason: "itself", now: t0).isEmpty)
        #expect(leader.joins[1] == nil && leader.joins[0] != nil)
        #expect(leader.joined(join(1, host: "second"), now: t0) == [.report(.joined(node: 1, host: "second", waiting: 1))])
        #expect(sends(leader.joined(join(2), now: t0)).count == 3)
        #expect(leader.joins[1]?.host == "second")
    }

    @Test func aJobOfOneNodeLaunchesAtTheFirstTick() {
        var leader = gathering(nodes: 1)
        #expect(leader.nextDeadline == t0)
        let actions = leader.tick(now: t0)
        #expect(sends(actions) == toEach([0], .launch(ClusterWorld(runID: "run-a", nodeCount: 1, localRanks: 2), record: nil)))
        #expect(leader.phase == .running)
    }

    // MARK: - A stop

    @Test func aStopAsksEveryNodeChoosesOneStepAndCommitsOnce() {
        var leader = launched()
        let stop = leader.received(.trigger(.signal(SignalNumber.terminate)), from: 1, now: t0)
        #expect(reports(stop) == [.stopping(trigger: "SIGTERM", nodes: 3)])
        #expect(sends(stop) == toEach([0, 1, 2], .stop(round: 1, .signal(SignalNumber.terminate))))
        #expect(leader.stopTrigger == .signal(SignalNumber.terminate))
        #expect(leader.nextDeadline == t0 + 3)
        #expect(leader.received(.position(round: 1, furthest: 41), from: 0, now: t0).isEmpty)
        #expect(leader.received(.position(round: 1, furthest: nil), from: 1, now: t0).isEmpty)
        // A second answer from a node, or one for another round, changes nothing.
        #expect(leader.received(.position(round: 1, furthest: 90), from: 0, now: t0).isEmpty)
        #expect(leader.received(.position(round: 2, furthest: 90), from: 2, now: t0).isEmpty)
        let step = leader.received(.position(round: 1, furthest: 43), from: 2, now: t0 + 0.5)
        #expect(reports(step) == [.stepChosen(round: 1, step: 44)])
        #expect(sends(step) == toEach([0, 1, 2], .step(round: 1, step: 44)))
        #expect(leader.nextDeadline == t0 + 31)

        #expect(leader.received(.confirmed(round: 1, step: 44, paths: paths(2)), from: 2, now: t0 + 1).isEmpty)
        #expect(leader.received(.confirmed(round: 1, step: 44, paths: [nil, "n0r1"]), from: 0, now: t0 + 1).isEmpty)
        // A confirmation of another round does not count.
        #expect(leader.received(.confirmed(round: 2, step: 44, paths: paths(1)), from: 1, now: t0 + 1).isEmpty)
        let last = leader.received(.confirmed(round: 1, step: 44, paths: paths(1)), from: 1, now: t0 + 2)
        #expect(last == [.commit(round: 1, step: 44, paths: [nil, "n0r1", "n1r0", "n1r1", "n2r0", "n2r1"], trigger: "SIGTERM")])
        #expect(leader.nextDeadline == nil)
        #expect(leader.received(.confirmed(round: 1, step: 44, paths: paths(1)), from: 1, now: t0 + 2).isEmpty)
        #expect(leader.commitWritten(round: 2, record: "R", now: t0 + 2).isEmpty)
        #expect(leader.commitWritten(round: 1, record: "R", now: t0 + 2) == (0..<3).map { .send(node: $0, .committed(round: 1, record: "R")) })
        #expect(leader.commitWritten(round: 1, record: "R", now: t0 + 2).isEmpty)
        #expect(leader.round == nil && leader.nextDeadline == nil)
        // The job is stopping: no checkpoint round.
        #expect(reports(leader.received(.checkpointRequest("SIGUSR2"), from: 0, now: t0 + 3)) == [.checkpointNotStarted(trigger: "SIGUSR2")])
        for node in 0..<3 {
            #expect(leader.received(.finished(exitCode: 0), from: node, now: t0 + 4) == [.report(.nodeFinished(node: node, exitCode: 0))])
        }
        #expect(leader.allEnded)
        #expect(leader.tick(now: t0 + 100).isEmpty)
    }

    @Test func noRankPastABoundaryAnywhereStopsEveryRankAtItsNextOne() {
        var leader = launched(nodes: 2)
        _ = leader.received(.trigger(.controlFile), from: 0, now: t0)
        _ = leader.received(.position(round: 1, furthest: nil), from: 0, now: t0)
        let step = leader.received(.position(round: 1, furthest: nil), from: 1, now: t0)
        #expect(sends(step) == toEach([0, 1], .step(round: 1, step: nil)))
        // Each node's ranks stop at their next boundary: the same one everywhere, or no commit.
        _ = leader.received(.confirmed(round: 1, step: 3, paths: paths(0)), from: 0, now: t0)
        let different = leader.received(.confirmed(round: 1, step: 4, paths: paths(1)), from: 1, now: t0)
        #expect(commits(different).isEmpty)
        let reason = "the nodes checkpointed different steps, from 3 to 4"
        #expect(sends(different) == toEach([0, 1], .roundFailed(round: 1, reason)))

        var same = launched(nodes: 2)
        _ = same.received(.trigger(.controlFile), from: 0, now: t0)
        _ = same.received(.position(round: 1, furthest: nil), from: 0, now: t0)
        _ = same.received(.position(round: 1, furthest: nil), from: 1, now: t0)
        _ = same.received(.confirmed(round: 1, step: 3, paths: paths(0)), from: 0, now: t0)
        #expect(commits(same.received(.confirmed(round: 1, step: 3, paths: paths(1)), from: 1, now: t0)).count == 1)
    }

    @Test func aPositionNoStepCanFollowFailsTheRound() {
        var leader = launched(nodes: 2)
        _ = leader.received(.trigger(.controlFile), from: 0, now: t0)
        _ = leader.received(.position(round: 1, furthest: 5), from: 0, now: t0)
        let actions = leader.received(.position(round: 1, furthest: maximumMessageInteger), from: 1, now: t0)
        #expect(!actions.contains { if case .send(_, .step) = $0 { true } else { false } })
        #expect(sends(actions)[0]?.first == .roundFailed(round: 1, "a rank answered position \(maximumMessageInteger), after which no step can follow"))
        #expect(commits(leader.received(.confirmed(round: 1, step: 6, paths: paths(0)), from: 0, now: t0)).isEmpty)
    }

    @Test func theAlignmentTimeoutChoosesTheStepWithoutTheSilentNode() {
        var leader = launched()
        _ = leader.received(.trigger(.signal(SignalNumber.interrupt)), from: 0, now: t0)
        _ = leader.received(.position(round: 1, furthest: 12), from: 0, now: t0)
        _ = leader.received(.position(round: 1, furthest: 17), from: 2, now: t0)
        #expect(leader.nextDeadline == t0 + 3)
        #expect(leader.tick(now: t0 + 2.9).isEmpty)
        let late = leader.tick(now: t0 + 3)
        #expect(sends(late) == toEach([0, 1, 2], .step(round: 1, step: 18)))
        // The silent node's late answer changes nothing; its confirmation of the step still counts.
        #expect(leader.received(.position(round: 1, furthest: 30), from: 1, now: t0 + 3.1).isEmpty)
        _ = leader.received(.confirmed(round: 1, step: 18, paths: paths(0)), from: 0, now: t0 + 4)
        _ = leader.received(.confirmed(round: 1, step: 18, paths: paths(1)), from: 1, now: t0 + 4)
        #expect(commits(leader.received(.confirmed(round: 1, step: 18, paths: paths(2)), from: 2, now: t0 + 4)).count == 1)
    }

    @Test func theGraceTimeoutFailsTheRoundAndLateConfirmationsDoNotCount() {
        var leader = stopWithStep()
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0 + 5)
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0 + 5)
        #expect(leader.nextDeadline == t0 + 31)
        #expect(leader.tick(now: t0 + 30.9).isEmpty)
        // Arriving at the deadline, before the tick: too late.
        #expect(leader.received(.confirmed(round: 1, step: 42, paths: paths(2)), from: 2, now: t0 + 31).isEmpty)
        let expired = leader.tick(now: t0 + 31)
        let reason = "node(s) 2 did not confirm within 30s"
        #expect(reports(expired) == [.roundFailed(round: 1, reason: reason)])
        #expect(sends(expired) == toEach([0, 1, 2], .roundFailed(round: 1, reason)))
        #expect(leader.nextDeadline == nil)
        #expect(leader.tick(now: t0 + 40).isEmpty)
        #expect(commits(leader.received(.confirmed(round: 1, step: 42, paths: paths(2)), from: 2, now: t0 + 40)).isEmpty)
        #expect("\(ClusterReport.roundFailed(round: 1, reason: reason))" == "error: leader: round 1 cannot commit: node(s) 2 did not confirm within 30s")
    }

    @Test func aWrongStepOrAWrongNumberOfPathsFailsTheRound() {
        var wrongStep = stopWithStep()
        let passed = wrongStep.received(.confirmed(round: 1, step: 43, paths: paths(2)), from: 2, now: t0)
        #expect(sends(passed) == toEach([0, 1, 2], .roundFailed(round: 1, "node 2 checkpointed step 43, not the round's step 42")))
        _ = wrongStep.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0)
        #expect(commits(wrongStep.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0)).isEmpty)

        var wrongPaths = stopWithStep()
        let short = wrongPaths.received(.confirmed(round: 1, step: 42, paths: ["only"]), from: 1, now: t0)
        #expect(sends(short) == toEach([0, 1, 2], .roundFailed(round: 1, "node 1 confirmed 1 path(s) for 2 rank(s)")))
    }

    @Test func aNodesRoundFailureReachesEveryOtherNodeAndNothingCommits() {
        var leader = stopWithStep()
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0)
        let failed = leader.received(.roundFailed(round: 1, "rank 3 ended before confirming"), from: 1, now: t0)
        #expect(reports(failed) == [.roundFailed(round: 1, reason: "node 1: rank 3 ended before confirming")])
        #expect(sends(failed) == toEach([0, 2], .roundFailed(round: 1, "node 1: rank 3 ended before confirming")))
        #expect(leader.received(.roundFailed(round: 1, "again"), from: 2, now: t0).isEmpty)
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0)
        #expect(commits(leader.received(.confirmed(round: 1, step: 42, paths: paths(2)), from: 2, now: t0)).isEmpty)
        // The stop stays the stop: no checkpoint round, and no deadline left to wait for.
        #expect(leader.stopTrigger != nil && leader.nextDeadline == nil)
        // A failure of another round is not this one's.
        var other = stopWithStep()
        #expect(other.received(.roundFailed(round: 7, "old"), from: 1, now: t0).isEmpty)
    }

    /// Every living node hears it, the failed rank's own too: without a restart, it waits for this verdict.
    @Test func aRankFailureFailsTheJobOnEveryNode() {
        var leader = stopWithStep()
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0)
        let failed = leader.received(.rankFailed("rank 5 failed (exited(1))"), from: 2, now: t0)
        let reason = "node 2: rank 5 failed (exited(1))"
        #expect(reports(failed) == [.jobFailed(reason)])
        #expect(sends(failed) == [
            0: [.roundFailed(round: 1, reason), .nodeFailed(reason)], 1: [.roundFailed(round: 1, reason), .nodeFailed(reason)], 2: [.nodeFailed(reason)],
        ])
        #expect(leader.failed)
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0)
        #expect(commits(leader.received(.confirmed(round: 1, step: 42, paths: paths(2)), from: 2, now: t0)).isEmpty)
        #expect("\(ClusterReport.jobFailed(reason))" == "error: leader: node 2: rank 5 failed (exited(1)); stopping every node")

        // Without a round: every node is told, and no round starts any more.
        var idle = launched()
        #expect(sends(idle.received(.rankFailed("rank 0 failed"), from: 0, now: t0)) == toEach([0, 1, 2], .nodeFailed("node 0: rank 0 failed")))
        #expect(reports(idle.received(.checkpointRequest("SIGUSR2"), from: 1, now: t0)) == [.checkpointNotStarted(trigger: "SIGUSR2")])
    }

    @Test func aLostNodeFailsTheJobAndNothingCommitsAfterIt() {
        var leader = stopWithStep()
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0)
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0)
        let lost = leader.lost(node: 1, reason: "sent nothing for 10s", now: t0 + 1)
        let reason = "node 1 (n1) is gone: sent nothing for 10s"
        #expect(sends(lost) == [0: [.roundFailed(round: 1, reason), .nodeFailed(reason)], 2: [.roundFailed(round: 1, reason), .nodeFailed(reason)]])
        #expect(leader.living == [0, 2])
        #expect(commits(leader.received(.confirmed(round: 1, step: 42, paths: paths(2)), from: 2, now: t0 + 1)).isEmpty)
        // Gone is gone: its messages and a second loss change nothing.
        #expect(leader.received(.trigger(.signal(SignalNumber.interrupt)), from: 1, now: t0 + 1).isEmpty)
        #expect(leader.lost(node: 1, reason: "again", now: t0 + 1).isEmpty)
        // A stop started after the failure cannot commit either.
        var idle = launched(nodes: 2)
        _ = idle.lost(node: 1, reason: "reset", now: t0)
        _ = idle.received(.trigger(.controlFile), from: 0, now: t0)
        _ = idle.received(.position(round: 1, furthest: 1), from: 0, now: t0)
        _ = idle.received(.confirmed(round: 1, step: 2, paths: paths(0)), from: 0, now: t0)
        #expect(commits(idle.received(.confirmed(round: 1, step: 2, paths: paths(1)), from: 1, now: t0)).isEmpty)
    }

    @Test func aNodeFinishingBeforeConfirmingFailsTheRound() {
        var leader = stopWithStep()
        _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0)
        let finished = leader.received(.finished(exitCode: 2), from: 2, now: t0)
        #expect(reports(finished) == [.nodeFinished(node: 2, exitCode: 2), .roundFailed(round: 1, reason: "node 2 ended before confirming")])
        #expect(sends(finished) == toEach([0, 1], .roundFailed(round: 1, "node 2 ended before confirming")))
        #expect(commits(leader.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0)).isEmpty)

        // One that confirmed first has had its say: the others' confirmations still commit.
        var confirmedFirst = stopWithStep()
        _ = confirmedFirst.received(.confirmed(round: 1, step: 42, paths: paths(2)), from: 2, now: t0)
        #expect(confirmedFirst.received(.finished(exitCode: 0), from: 2, now: t0) == [.report(.nodeFinished(node: 2, exitCode: 0))])
        _ = confirmedFirst.received(.confirmed(round: 1, step: 42, paths: paths(0)), from: 0, now: t0)
        #expect(commits(confirmedFirst.received(.confirmed(round: 1, step: 42, paths: paths(1)), from: 1, now: t0)).count == 1)
        #expect(confirmedFirst.commitWritten(round: 1, record: "R", now: t0) == [0, 1].map { .send(node: $0, .committed(round: 1, record: "R")) })
    }

    @Test func aFailedCommitFailsTheRoundEverywhere() {
        var leader = stopWithStep()
        for node in 0..<3 { _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(node)), from: node, now: t0) }
        let failed = leader.commitFailed(round: 1, reason: "disk full", now: t0)
        #expect(sends(failed) == toEach([0, 1, 2], .roundFailed(round: 1, "the leader's commit failed (disk full)")))
        #expect(leader.commitWritten(round: 1, record: "R", now: t0).isEmpty)
        #expect(leader.commitFailed(round: 1, reason: "again", now: t0).isEmpty)
    }

    /// Once the commit is asked for, the round's fate is its outcome: a node's later report cannot
    /// tell the others the round failed and then that it committed.
    @Test func aRoundFailureAfterTheCommitWasAskedForChangesNothing() {
        var leader = stopWithStep()
        for node in 0..<3 { _ = leader.received(.confirmed(round: 1, step: 42, paths: paths(node)), from: node, now: t0) }
        #expect(leader.received(.roundFailed(round: 1, "too late"), from: 1, now: t0).isEmpty)
        #expect(sends(leader.commitWritten(round: 1, record: "R", now: t0)) == toEach([0, 1, 2], .committed(round: 1, record: "R")))
    }

    // MARK: - Escalation

    @Test func aNodeRepeatingItsStopSignalEscalatesEverywhere() {
        var leader = launched()
        let term = Trigger.signal(SignalNumber.terminate)
        _ = leader.received(.trigger(term), from: 1, now: t0)
        // The scheduler's signal reaching the other nodes is the same request.
        #expect(leader.received(.trigger(term), from: 2, now: t0) == [.report(.alreadyStopping(node: 2, term))])
        #expect(leader.received(.trigger(term), from: 0, now: t0) == [.report(.alreadyStopping(node: 0, term))])
        let again = leader.received(.trigger(.signal(SignalNumber.interrupt)), from: 1, now: t0 + 1)
        #expect(reports(again) == [.escalating(node: 1, .signal(SignalNumber.interrupt))])
        #expect(sends(again) == toEach([0, 1, 2], .escalate(.signal(SignalNumber.interrupt))))
        #expect(sends(leader.received(.trigger(term), from: 2, now: t0 + 2)) == toEach([0, 1, 2], .escalate(term)))
        #expect("\(ClusterReport.alreadyStopping(node: 2, term))" == "leader: SIGTERM on node 2: the job is already stopping (send it again there to escalate)")
    }

    @Test func theControlFileNeverEscalates() {
        var leader = launched()
        _ = leader.received(.trigger(.controlFile), from: 0, now: t0)
        for node in [0, 1, 2, 0, 1] { #expect(leader.received(.trigger(.controlFile), from: node, now: t0).isEmpty) }
        // After a stop by the control file a node's first signal is the request again; its second insists.
        let term = Trigger.signal(SignalNumber.terminate)
        #expect(leader.received(.trigger(term), from: 1, now: t0) == [.report(.alreadyStopping(node: 1, term))])
        #expect(sends(leader.received(.trigger(term), from: 1, now: t0 + 1)) == toEach([0, 1, 2], .escalate(term)))
    }

    @Test func aQuitDuringAStopEscalatesAtOnce() {
        var leader = launched()
        _ = leader.received(.trigger(.signal(SignalNumber.terminate)), from: 1, now: t0)
        let quit = leader.received(.trigger(.quit(SignalNumber.quit)), from: 2, now: t0 + 1)
        #expect(sends(quit) == toEach([0, 1, 2], .escalate(.quit(SignalNumber.quit))))
    }

    /// A scheduler that quits a job sends SIGQUIT to every node: one request, as on one node, where
    /// a quit gets SIGTERM to every rank and only a repeated one SIGKILL.
    @Test func aQuitSentToEveryNodeIsOneRequest() {
        var leader = launched()
        let quit = Trigger.quit(SignalNumber.quit)
        let stop = leader.received(.trigger(quit), from: 0, now: t0)
        #expect(sends(stop) == toEach([0, 1, 2], .stop(round: 1, quit)))
        #expect(leader.received(.trigger(quit), from: 1, now: t0) == [.report(.alreadyStopping(node: 1, quit))])
        #expect(leader.received(.trigger(quit), from: 2, now: t0) == [.report(.alreadyStopping(node: 2, quit))])
        #expect(sends(leader.received(.trigger(quit), from: 1, now: t0 + 1)) == toEach([0, 1, 2], .escalate(quit)))
        #expect(sends(leader.received(.trigger(.signal(SignalNumber.interrupt)), from: 0, now: t0 + 1)) == toEach([0, 1, 2], .escalate(.signal(SignalNumber.interrupt))))
    }

    @Test func escalationReachesOnlyTheLivingNodes() {
        var leader = launched()
        _ = leader.received(.trigger(.signal(SignalNumber.terminate)), from: 1, now: t0)
        _ = leader.received(.finished(exitCode: 0), from: 2, now: t0)
        let again = leader.received(.trigger(.signal(SignalNumber.terminate)), from: 1, now: t0 + 1)
        #expect(sends(again) == toEach([0, 1], .escalate(.signal(SignalNumber.terminate))))
    }

    // MARK: - Checkpoint rounds

    @Test func aCheckpointRequestRunsOneRoundForTheWholeJob() {
        var leader = launched()
        let start = leader.received(.checkpointRequest("SIGUSR2"), from: 2, now: t0)
        #expect(reports(start) == [.checkpointing(trigger: "SIGUSR2", nodes: 3)])
        #expect(sends(start) == toEach([0, 1, 2], .checkpoint(round: 1, trigger: "SIGUSR2")))
        #expect(reports(leader.received(.checkpointRequest("SIGUSR2"), from: 0, now: t0)) == [.checkpointNotStarted(trigger: "SIGUSR2")])
        for node in 0..<3 { _ = leader.received(.position(round: 1, furthest: 9), from: node, now: t0) }
        _ = leader.received(.confirmed(round: 1, step: 10, paths: paths(0)), from: 0, now: t0)
        _ = leader.received(.confirmed(round: 1, step: 10, paths: paths(1)), from: 1, now: t0)
        let last = leader.received(.confirmed(round: 1, step: 10, paths: paths(2)), from: 2, now: t0)
        #expect(commits(last) == [.commit(round: 1, step: 10, paths: paths(0) + paths(1) + paths(2), trigger: "SIGUSR2")])
        _ = leader.commitWritten(round: 1, record: "R", now: t0)
        #expect(leader.round == nil && leader.stopTrigger == nil)
        // Training goes on: the next request is the next round.
        #expect(sends(leader.received(.checkpointRequest("SIGUSR2"), from: 1, now: t0 + 1)) == toEach([0, 1, 2], .checkpoint(round: 2, trigger: "SIGUSR2")))
    }

    @Test func aFailedCheckpointRoundEndsAndTheNextOneMayStart() {
        var leader = launched()
        _ = leader.received(.checkpointRequest("SIGUSR2"), from: 2, now: t0)
        _ = leader.received(.roundFailed(round: 1, "rank 0 has not said hello"), from: 2, now: t0)
        #expect(leader.round == nil)
        #expect(sends(leader.received(.checkpointRequest("SIGUSR2"), from: 1, now: t0)) == toEach([0, 1, 2], .checkpoint(round: 2, trigger: "SIGUSR2")))
    }

    @Test func periodicCheckpointsKeepComingWhetherARoundCommitsOrFails() {
        let periodic = ClusterLeader.Policy(grace: 5, alignTimeout: 1, checkpointEvery: 10, rendezvousTimeout: 60)
        var leader = launched(nodes: 2, policy: periodic)
        #expect(leader.nextDeadline == t0 + 10)
        #expect(leader.tick(now: t0 + 9.9).isEmpty)
        #expect(sends(leader.tick(now: t0 + 10)) == toEach([0, 1], .checkpoint(round: 1, trigger: "periodic")))
        for node in 0..<2 { _ = leader.received(.position(round: 1, furthest: 4), from: node, now: t0 + 10) }
        for node in 0..<2 { _ = leader.received(.confirmed(round: 1, step: 5, paths: paths(node)), from: node, now: t0 + 11) }
        _ = leader.commitWritten(round: 1, record: "R", now: t0 + 11)
        #expect(leader.nextDeadline == t0 + 21)
        #expect(sends(leader.tick(now: t0 + 21)) == toEach([0, 1], .checkpoint(round: 2, trigger: "periodic")))

        // A round that fails, by a node's report or by its deadline, does not end the schedule.
        _ = leader.received(.roundFailed(round: 2, "a rank ended"), from: 1, now: t0 + 22)
        #expect(leader.nextDeadline == t0 + 32)
        #expect(sends(leader.tick(now: t0 + 32)) == toEach([0, 1], .checkpoint(round: 3, trigger: "periodic")))
        for node in 0..<2 { _ = leader.received(.position(round: 3, furthest: 8), from: node, now: t0 + 32) }
        #expect(leader.nextDeadline == t0 + 38)
        _ = leader.tick(now: t0 + 38)
        #expect(leader.round == nil)
        #expect(leader.nextDeadline == t0 + 48)
        #expect(sends(leader.tick(now: t0 + 48)) == toEach([0, 1], .checkpoint(round: 4, trigger: "periodic")))

        // Once the job stops, or fails, no more.
        _ = leader.received(.trigger(.controlFile), from: 0, now: t0 + 49)
        #expect(leader.round?.kind == .stop)
    }

    @Test func aCheckpointRoundThatTimesOutTellsEveryNode() {
        var leader = launched(nodes: 2)
        _ = leader.received(.checkpointRequest("SIGUSR2"), from: 0, now: t0)
        for node in 0..<2 { _ = leader.received(.position(round: 1, furthest: 4), from: node, now: t0) }
        _ = leader.received(.confirmed(round: 1, step: 5, paths: paths(0)), from: 0, now: t0 + 1)
        let expired = leader.tick(now: t0 + 31)
        let reason = "node(s) 1 did not confirm within 30s"
        #expect(reports(expired) == [.roundFailed(round: 1, reason: reason)])
        #expect(sends(expired) == toEach([0, 1], .roundFailed(round: 1, reason)))
        #expect(leader.round == nil)
    }

    @Test func aRoundThatFailedAlreadyIsNotSaidToFailAgain() {
        var leader = launched()
        _ = leader.received(.trigger(.controlFile), from: 0, now: t0)
        _ = leader.received(.roundFailed(round: 1, "rank 2 ended"), from: 1, now: t0)
        _ = leader.received(.position(round: 1, furthest: 5), from: 0, now: t0)
        _ = leader.received(.position(round: 1, furthest: maximumMessageInteger), from: 1, now: t0)
        #expect(leader.received(.position(round: 1, furthest: 3), from: 2, now: t0).isEmpty)
    }

    @Test func aStopSupersedesACheckpointRound() {
        var leader = launched(nodes: 2)
        _ = leader.received(.checkpointRequest("SIGUSR2"), from: 0, now: t0)
        for node in 0..<2 { _ = leader.received(.position(round: 1, furthest: 4), from: node, now: t0) }
        _ = leader.received(.confirmed(round: 1, step: 5, paths: paths(0)), from: 0, now: t0)
        let stop = leader.received(.trigger(.signal(SignalNumber.user1)), from: 1, now: t0 + 1)
        #expect(reports(stop) == [.roundSuperseded(round: 1), .stopping(trigger: "SIGUSR1", nodes: 2)])
        #expect(sends(stop) == toEach([0, 1], .stop(round: 2, .signal(SignalNumber.user1))))
        // The checkpoint round's late answers count no more.
        #expect(leader.received(.confirmed(round: 1, step: 5, paths: paths(1)), from: 1, now: t0 + 1).isEmpty)
        #expect(leader.received(.position(round: 1, furthest: 4), from: 1, now: t0 + 1).isEmpty)
        _ = leader.received(.position(round: 2, furthest: 6), from: 0, now: t0 + 1)
        #expect(sends(leader.received(.position(round: 2, furthest: 5), from: 1, now: t0 + 1)) == toEach([0, 1], .step(round: 2, step: 7)))
    }

    @Test func pingsAndStrangersChangeNothing() {
        var leader = launched()
        #expect(leader.received(.ping, from: 1, now: t0).isEmpty)
        #expect(leader.received(.trigger(.controlFile), from: 7, now: t0).isEmpty)
        #expect(leader.received(.join(join(1)), from: 1, now: t0) == [.report(.lateJoin(node: 1, host: "n1"))])
        #expect(leader.lost(node: 9, reason: "?", now: t0).isEmpty)
        #expect(leader.round == nil && !leader.failed)
    }

    // MARK: - The messages' JSON

    static let nodeMessages: [ClusterNodeMessage] = [
        .join(ClusterJoin(node: 3, nodeCount: 4, localRanks: 8, command: ["python", "-c", "print(\"a b\")\n", "é✓"],
                          commit: .init(runID: "run \"x\"", step: maximumMessageInteger), host: "gpu-7.cluster")),
        .join(ClusterJoin(node: 0, nodeCount: 1, localRanks: 1, command: [], commit: nil, host: "")),
        .trigger(.controlFile), .trigger(.signal(SignalNumber.terminate)), .trigger(.quit(SignalNumber.abort)), .trigger(.signal(64)),
        .checkpointRequest("SIGUSR2"),
        .position(round: 1, furthest: nil), .position(round: maximumMessageInteger, furthest: 0),
        .confirmed(round: 2, step: 7, paths: ["/ckpt/step-7", nil, CheckpointPath(bytes: [0x2F, 0xFF, 0x80, 0x41])!, "ünï/ç"]),
        .confirmed(round: 2, step: 0, paths: []),
        .roundFailed(round: 3, "rank 2 \"ended\"\tbefore\nconfirming"), .rankFailed("rank 5 failed (signaled(9))"),
        .finished(exitCode: 0), .finished(exitCode: 143), .cleared(restart: 2), .ping,
    ]

    static let commands: [ClusterCommand] = [
        .launch(ClusterWorld(runID: "run-a", nodeCount: 2, localRanks: 4), record: "{\"step\": 5, \"paths\": [\"a\\\"b\"]}\n"),
        .launch(ClusterWorld(runID: "", nodeCount: 65536, localRanks: 1), record: nil),
        .launch(ClusterWorld(runID: "run-a", nodeCount: 2, localRanks: 4, restart: 3), record: nil),
        .restart(restart: 1, maxRestarts: 2, reason: "node 1 (h1) is gone: reset"),
        .refused("node rank 1 was claimed twice: by a and by b"),
        .stop(round: 1, .signal(SignalNumber.interrupt)), .stop(round: 9, .controlFile), .stop(round: 2, .quit(SignalNumber.quit)),
        .checkpoint(round: 4, trigger: "periodic"), .escalate(.signal(SignalNumber.hangup)), .escalate(.quit(SignalNumber.abort)),
        .step(round: 1, step: nil), .step(round: 1, step: maximumMessageInteger),
        .committed(round: 3, record: "{\n  \"step\": 5\n}\n"), .roundFailed(round: 3, "ünïcode ✓"), .nodeFailed("node 2 (h) is gone"), .ping,
    ]

    @Test(arguments: nodeMessages)
    func everyNodeMessageSurvivesItsJSON(_ message: ClusterNodeMessage) throws {
        let bytes = ClusterCoding.encode(message)
        let isObject = if case .object? = try? JSONParser.parse(bytes) { true } else { false }
        #expect(isObject, "one JSON object")
        #expect(try ClusterCoding.decodeNodeMessage(bytes) == message)
    }

    @Test(arguments: commands)
    func everyCommandSurvivesItsJSON(_ command: ClusterCommand) throws {
        #expect(try ClusterCoding.decodeCommand(ClusterCoding.encode(command)) == command)
    }

    static let malformedNodeMessages = [
        "", "not json", "[]", "{}", "{\"type\":7}", "{\"type\":\"launch\"}", "{\"type\":\"position\",\"round\":-1,\"furthest\":null}",
        "{\"type\":\"position\",\"round\":1,\"furthest\":9007199254740992}", "{\"type\":\"position\",\"round\":1.5,\"furthest\":null}",
        "{\"type\":\"position\",\"furthest\":3}", "{\"type\":\"trigger\",\"trigger\":\"signal\",\"signal\":0}",
        "{\"type\":\"trigger\",\"trigger\":\"signal\",\"signal\":65}", "{\"type\":\"trigger\",\"trigger\":\"signal\"}",
        "{\"type\":\"trigger\",\"trigger\":\"bell\"}", "{\"type\":\"confirmed\",\"round\":1,\"step\":2}",
        "{\"type\":\"confirmed\",\"round\":1,\"step\":2,\"paths\":[\"\"]}", "{\"type\":\"confirmed\",\"round\":1,\"step\":2,\"paths\":[3]}",
        "{\"type\":\"confirmed\",\"round\":1,\"step\":2,\"paths\":\"a\"}",
        "{\"type\":\"join\",\"node\":1,\"nodes\":2,\"ranks\":1,\"commit\":null,\"host\":\"h\"}",
        "{\"type\":\"join\",\"node\":1,\"nodes\":2,\"ranks\":1,\"command\":[1],\"commit\":null,\"host\":\"h\"}",
        "{\"type\":\"join\",\"node\":1,\"nodes\":2,\"ranks\":1,\"command\":[],\"commit\":{\"run\":\"r\"},\"host\":\"h\"}",
        "{\"type\":\"round-failed\",\"round\":1}", "{\"type\":\"finished\",\"code\":-1}", "{\"type\":\"ping\"} trailing",
    ]

    @Test(arguments: malformedNodeMessages)
    func aMalformedNodeMessageIsRefused(_ text: String) {
        #expect(throws: ClusterCoding.Malformed.self) { try ClusterCoding.decodeNodeMessage(Array(text.utf8)) }
    }

    static let malformedCommands = [
        "{", "{\"type\":\"join\"}", "{\"type\":\"launch\",\"nodes\":2,\"ranks\":1,\"record\":null}",
        "{\"type\":\"stop\",\"round\":1}", "{\"type\":\"stop\",\"round\":1,\"trigger\":\"quit\",\"signal\":99}",
        "{\"type\":\"step\",\"round\":\"1\",\"step\":null}", "{\"type\":\"committed\",\"round\":1,\"record\":null}",
        "{\"type\":\"node-failed\"}", "{\"type\":\"escalate\",\"trigger\":\"control\"}", "{\"type\":\"checkpoint\",\"round\":0.5,\"trigger\":\"x\"}",
    ]

    @Test(arguments: malformedCommands)
    func aMalformedCommandIsRefused(_ text: String) {
        #expect(throws: ClusterCoding.Malformed.self) { try ClusterCoding.decodeCommand(Array(text.utf8)) }
    }

    @Test func theJSONIsTheDocumentedShape() {
        #expect(String(decoding: ClusterCoding.encode(.position(round: 3, furthest: nil)), as: UTF8.self)
            == "{\"type\":\"position\",\"round\":3,\"furthest\":null}")
        #expect(String(decoding: ClusterCoding.encode(.stop(round: 1, .quit(3))), as: UTF8.self)
            == "{\"type\":\"stop\",\"round\":1,\"trigger\":\"quit\",\"signal\":3}")
        #expect(String(decoding: ClusterCoding.encode(.trigger(.controlFile)), as: UTF8.self)
            == "{\"type\":\"trigger\",\"trigger\":\"control-file\"}")
        #expect(String(decoding: ClusterCoding.encode(.restart(restart: 1, maxRestarts: 2, reason: "r")), as: UTF8.self)
            == "{\"type\":\"restart\",\"restart\":1,\"max_restarts\":2,\"reason\":\"r\"}")
        #expect(String(decoding: ClusterCoding.encode(.cleared(restart: 1)), as: UTF8.self) == "{\"type\":\"cleared\",\"restart\":1}")
    }

    // MARK: - Restarts

    var restartPolicy: ClusterLeader.Policy {
        ClusterLeader.Policy(grace: 30, alignTimeout: 2, checkpointEvery: nil, rendezvousTimeout: 60, maxRestarts: 1, restartBackoff: 2)
    }

    /// A rank failure restarts every node: each clears, and the relaunch (restart 1, with the job's
    /// last commit) goes to all of them at once, not before the backoff.
    @Test func aRankFailureRestartsEveryNodeOnceAllCleared() {
        var leader = launched(policy: restartPolicy)
        let checkpoint = leader.received(.checkpointRequest("SIGUSR2"), from: 0, now: t0)
        #expect(sends(checkpoint).count == 3)
        for node in 0..<3 { _ = leader.received(.position(round: 1, furthest: 9), from: node, now: t0) }
        for node in 0..<3 { _ = leader.received(.confirmed(round: 1, step: 10, paths: paths(node)), from: node, now: t0) }
        _ = leader.commitWritten(round: 1, record: "{\"step\":10}", now: t0)

        let reason = "node 2: rank 5 failed (exited(1))"
        let failed = leader.received(.rankFailed("rank 5 failed (exited(1))"), from: 2, now: t0 + 1)
        #expect(sends(failed) == toEach([0, 1, 2], .restart(restart: 1, maxRestarts: 1, reason: reason)))
        #expect(leader.phase == .restarting(restart: 1, deadline: t0 + 61))
        #expect("\(reports(failed)[0])" == "error: leader: \(reason); restarting every node from the last commit (restart 1 of 1)")
        #expect(leader.received(.cleared(restart: 2), from: 0, now: t0 + 1).isEmpty)
        _ = leader.received(.cleared(restart: 1), from: 0, now: t0 + 1)
        _ = leader.received(.cleared(restart: 1), from: 2, now: t0 + 1)
        #expect(leader.ready == [0, 2] && leader.nextDeadline == t0 + 61)
        // The last node clears before the backoff ends: the relaunch waits for it.
        #expect(sends(leader.received(.cleared(restart: 1), from: 1, now: t0 + 2)).isEmpty)
        #expect(leader.nextDeadline == t0 + 3)
        let relaunch = leader.tick(now: t0 + 3)
        let again = ClusterWorld(runID: "run-a", nodeCount: 3, localRanks: 2, restart: 1)
        #expect(sends(relaunch) == toEach([0, 1, 2], .launch(again, record: "{\"step\":10}")))
        #expect(leader.phase == .running && leader.living == [0, 1, 2] && !leader.failed)
        // The restart is spent: the next failure ends the job.
        #expect(sends(leader.received(.rankFailed("rank 0 failed"), from: 0, now: t0 + 4)) == toEach([0, 1, 2], .nodeFailed("node 0: rank 0 failed")))
    }

    /// A lost node must join again (a consistent join, not ahead of the job's commit); a join for a
    /// rank still held is refused on its own connection, and the restart goes on.
    @Test func aLostNodeJoinsTheRestartAgain() {
        var leader = launched(policy: restartPolicy)
        #expect(sends(leader.lost(node: 1, reason: "reset", now: t0)) == toEach([0, 2], .restart(restart: 1, maxRestarts: 1, reason: "node 1 (n1) is gone: reset")))
        _ = leader.received(.cleared(restart: 1), from: 0, now: t0)
        _ = leader.received(.cleared(restart: 1), from: 2, now: t0)
        let held = "node rank 2 is held by n2, which is still in the job: impostor cannot take it"
        #expect(leader.joined(join(2, host: "impostor"), now: t0) == [.report(.rejoinRefused(held)), .refuseJoin(held)])
        let ahead = leader.joined(join(1, commit: .init(runID: "run-a", step: 3)), now: t0)
        #expect(ahead.contains { if case .refuseJoin = $0 { true } else { false } })
        let back = leader.joined(join(1, host: "n1b"), now: t0 + 5)
        #expect(reports(back).first == .rejoined(node: 1, host: "n1b", restart: 1, waiting: 0))
        #expect(sends(back) == toEach([0, 1, 2], .launch(ClusterWorld(runID: "run-a", nodeCount: 3, localRanks: 2, restart: 1), record: nil)))
    }

    /// A stop during the restart, a node that ends, or a node that never comes back within
    /// --rdzv-timeout: the restart is abandoned, every living node fails, rejoined ones are refused.
    @Test func aRestartEndsOnAStopAnEndOrTheDeadline() {
        var stopped = launched(policy: restartPolicy)
        _ = stopped.lost(node: 1, reason: "reset", now: t0)
        _ = stopped.joined(join(1), now: t0)
        let stop = stopped.received(.trigger(.signal(SignalNumber.interrupt)), from: 2, now: t0)
        let line = "stop requested (SIGINT) on node 2 during restart 1; not restarting"
        #expect(sends(stop) == [0: [.nodeFailed(line)], 2: [.nodeFailed(line)], 1: [.refused(line)]])
        #expect(stopped.phase == .running && stopped.failed && stopped.stopTrigger == .signal(SignalNumber.interrupt))

        var ended = launched(policy: restartPolicy)
        _ = ended.received(.rankFailed("rank 0 failed"), from: 0, now: t0)
        #expect(sends(ended.received(.finished(exitCode: 1), from: 2, now: t0)) == toEach([0, 1], .nodeFailed("node 2 ended (exit 1) during restart 1")))

        var late = launched(policy: restartPolicy)
        _ = late.lost(node: 2, reason: "reset", now: t0)
        _ = late.received(.cleared(restart: 1), from: 0, now: t0)
        #expect(late.tick(now: t0 + 59).isEmpty)
        let line2 = "node(s) 1, 2 were not ready for restart 1 within 60s (--rdzv-timeout)"
        #expect(sends(late.tick(now: t0 + 60)) == toEach([0, 1], .nodeFailed(line2)))
    }

    /// A stop after a node finished cannot commit: it fails at once instead of waiting out the grace.
    @Test func aStopAfterANodeFinishedFailsAtOnce() {
        var leader = launched()
        _ = leader.received(.finished(exitCode: 0), from: 2, now: t0)
        let stop = leader.received(.trigger(.controlFile), from: 1, now: t0)
        let line = "node(s) 2 finished before the stop: their ranks confirm nothing"
        #expect(sends(stop) == [0: [.stop(round: 1, .controlFile), .roundFailed(round: 1, line)], 1: [.stop(round: 1, .controlFile), .roundFailed(round: 1, line)]])
        #expect(reports(leader.received(.checkpointRequest("SIGUSR2"), from: 0, now: t0)) == [.checkpointNotStarted(trigger: "SIGUSR2")])
    }
}
