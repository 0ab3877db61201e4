"""Lists and runs the Python tests (Tests/python/test_*.py) one by one, for `swift test`
(Tests/GracefulTests/Integration/PythonClientTests.swift): each test is a test case there, and a
skipped one is reported with its reason instead of passing silently.

    python3 Tests/python/runner.py list         # one test id a line
    python3 Tests/python/runner.py run ID...    # runs them; one result line each, on stdout

A result line is RESULT_PREFIX followed by a JSON object: "id", "outcome" ("passed", "skipped",
"failed", "expected failure", "unexpected success", or "missing" for an id discovery does not
find) and "reason" (a skip's reason). The tests' own output goes to stderr, as unittest prints it.
A test module that cannot be imported is discovered as a test that fails with the import error."""

import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_PREFIX = "graceful-python-test-result: "


def discover():
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    tests = []

    def flatten(item):
        if isinstance(item, unittest.TestSuite):
            for child in item:
                flatten(child)
        else:
            tests.append(item)

    flatten(suite)
    return tests


def outcome(result):
    """What happened to the one test run into `result`, with the reason of a skip (which may also
    come from its class or module: setUpClass raising SkipTest)."""
    if result.errors or result.failures or result.unexpectedSuccesses:
        return ("unexpected success" if result.unexpectedSuccesses and not result.errors
                and not result.failures else "failed"), ""
    if result.skipped:
        return "skipped", "; ".join(sorted({reason for _, reason in result.skipped}))
    if result.expectedFailures:
        return "expected failure", ""
    if result.testsRun == 1:
        return "passed", ""
    return "failed", "the test did not run"


def run(ids):
    tests = {test.id(): test for test in discover()}
    failed = False
    for test_id in ids:
        test = tests.get(test_id)
        if test is None:
            kind, reason = "missing", "no such test in Tests/python/test_*.py"
        else:
            runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2)
            # In a suite, so that its class's and module's fixtures run as under unittest.
            kind, reason = outcome(runner.run(unittest.TestSuite([test])))
        failed = failed or kind not in ("passed", "skipped", "expected failure")
        print(RESULT_PREFIX + json.dumps({"id": test_id, "outcome": kind, "reason": reason}),
              flush=True)
    return 1 if failed else 0


def main(argv):
    if argv[:1] == ["list"] and len(argv) == 1:
        for test in discover():
            print(test.id())
        return 0
    if argv[:1] == ["run"] and len(argv) > 1:
        return run(argv[1:])
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
