import Testing

/// The Python client's own tests (Tests/python, standard-library unittest), run as part of `swift test`
/// so one command runs everything.
@Suite struct PythonClientTests {
    @Test func pythonClientSuitePasses() throws {
        let run = try Launched(
            ["python3", "-m", "unittest", "discover", "-s", "Tests/python", "-v"], in: Launched.packageRoot)
        #expect(try run.waitForExit(timeout: 300) == 0, "\(run.output)")
        #expect(run.stderr.contains("\nOK"), "\(run.output)")
        for line in run.output.split(separator: "\n") where line.contains("ns/call") {
            print("python client: \(line)")
        }
    }
}
