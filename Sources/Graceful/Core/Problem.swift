/// Why a round cannot commit; `Report.swift` words it.
public enum Problem: Equatable, Sendable {
    /// How one rank ended, for problems that name several.
    public struct Ended: Equatable, Sendable {
        public let rank: Int
        public let status: ExitStatus
    }

    /// The rank confirmed `confirmed` instead of the round's step `expected`.
    case wrongStep(rank: Int, kind: Coordinator.Round.Kind, expected: Int, confirmed: Int)
    /// The round had no step ("each rank's next boundary") and the ranks confirmed different ones.
    case differentSteps(lowest: Int, highest: Int)
    /// The rank answered the largest `Int` as its position: no step can follow it.
    case unusablePosition(rank: Int, step: Int)
    case endedBeforeConfirming(rank: Int, ExitStatus)
    /// These ranks had ended before the stop was requested: they cannot save the stop step.
    case endedBeforeStop([Ended])
    /// A rank that does not speak the protocol ended otherwise than with 0 or on SIGTERM.
    case didNotStopCleanly(rank: Int, ExitStatus)
    case stoppedBeforeStarting(rank: Int)
    /// These living ranks had not confirmed when the grace expired.
    case notConfirmedInTime(ranks: [Int], grace: Double)
    case commitFailed(String)
    /// These living ranks never said hello: they save nothing the record could name.
    case neverSaidHello(ranks: [Int])
    /// Another node of a multi-node job could not complete the round (the leader's words).
    case failedElsewhere(String)
}
