import Foundation
import Glibc
import Testing

/// A rank that is itself a launcher (msrun starts its workers with `setsid`): the workers get the same
/// stop sequence as the rank, SIGTERM at the stop and the grace to save, not a SIGKILL the moment
/// their launcher ends.
@Suite(.serialized) struct WrappedLauncherTests {
    /// The launcher: starts a worker in a session of its own and waits for it, dying at once on
    /// SIGTERM (as msrun does). The worker saves for half a second when it gets SIGTERM.
    static let launcher = #"""
        setsid python3 -c '
        import signal, sys, time
        def save(*_):
            time.sleep(0.5)
            open("saved", "w").write("yes")
            sys.exit(0)
        signal.signal(signal.SIGTERM, save)
        print("worker ready", flush=True)
        while True:
            time.sleep(1)
        ' &
        wait
        """#

    @Test func aWorkerThatLeftItsLaunchersGroupGetsTheGraceToSave() throws {
        let directory = try TemporaryDirectory()
        let run = try Launched(
            [Launched.graceful, "run", "-n", "1", "--grace", "10", "--", "sh", "-c", Self.launcher], in: directory.path)
        try run.waitFor("[rank0]: worker ready")
        run.signal(SIGTERM)
        #expect(try run.waitForExit() == 0, "\(run.output)")
        #expect(directory.read("saved") == "yes", "the worker was killed before it saved:\n\(run.stderr)")
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }

    @Test func aWorkerThatDoesNotExitIsKilledWhenTheGraceEnds() throws {
        let directory = try TemporaryDirectory()
        let stubborn = Self.launcher.replacingOccurrences(of: "signal.signal(signal.SIGTERM, save)", with: "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
        let run = try Launched(
            [Launched.graceful, "run", "-n", "1", "--grace", "1", "--", "sh", "-c", stubborn], in: directory.path)
        try run.waitFor("[rank0]: worker ready")
        run.signal(SIGTERM)
        // Nothing was committed and a worker had to be killed: not a clean stop.
        #expect(try run.waitForExit() == 2, "\(run.output)")
        #expect(run.stderr.contains("did not exit within the grace"))
        #expect(directory.read("saved") == nil)
        #expect(waitUntilNoProcess(workingIn: directory.path).isEmpty)
    }
}
