"""Tests of examples/python/graceful_exit.py's own API and standalone mode. Each test runs a real
rank process (fake_rank.py) and plays the coordinator on a real socketpair, or sends real signals and
writes a real control file. The protocol scenarios every client must pass are in
test_conformance.py."""

import os
import signal
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import support  # noqa: E402


class CoordinatedTests(support.RankTestCase):
    def test_checkpointed_refuses_what_is_no_path(self):
        rank = self.start()
        rank.channel.receive()
        for bad in ("", "61006200"):
            rank.write(f"checkpointed-path 4 {bad}")
            self.assertIn("not a path", self.event(rank)["value_error"])
        # Nothing was sent: the next message on the channel answers this stop.
        rank.channel.send({"type": "stop", "id": 1, "trigger": "SIGINT"})
        self.assertEqual(rank.channel.receive(), {"type": "position", "id": 1, "step": None})

    def test_fast_path_cost(self):
        rank = self.start()
        rank.channel.receive()
        rank.write("time 1000000")
        costs = self.event(rank)
        print(f"\nshould_stop, coordinated, nothing pending: {costs['ns_per_call']:.1f} ns/call "
              "(1,000,000 calls, loop included)", file=sys.stderr)
        print(f"should_stop + should_checkpoint, coordinated, nothing pending: "
              f"{costs['ns_per_boundary']:.1f} ns/call (1,000,000 boundaries, loop included)",
              file=sys.stderr)
        self.expect_exit(rank)


class StandaloneTests(support.RankTestCase):
    def test_sigterm_stops_at_the_next_boundary(self):
        rank = self.start(channel=False)
        self.assertFalse(rank.ready["coordinated"])
        self.run_steps(rank, 1, 2)
        rank.process.send_signal(signal.SIGTERM)
        rank.write("10")
        self.expect_boundaries(rank, 3, 3, stop_at=3)
        self.expect(rank, checkpointed=3, stop_step=3, trigger="SIGTERM")
        self.expect_exit(rank)
        self.assertIn("SIGTERM received", rank.stderr.text())

    def test_a_second_sigint_raises_keyboard_interrupt(self):
        rank = self.start("--keep-going", channel=False)
        self.run_steps(rank, 1, 1)
        rank.process.send_signal(signal.SIGINT)
        rank.write("1")
        self.expect_boundaries(rank, 2, 2, stop_at=2)
        self.expect(rank, checkpointed=2, trigger="SIGINT")
        rank.process.send_signal(signal.SIGINT)
        self.expect(rank, keyboard_interrupt=True)
        self.expect_exit(rank, 3)

    def test_control_file_present_at_start_stops_at_the_first_boundary(self):
        for content in ('{"GracefulExit": 1}', '{"GracefulExit": 1.0}', '{"GracefulExit": true}',
                        '{"GracefulExit": 1, "other": [null]}'):
            with self.subTest(content=content):
                self.write_control_file(content)
                rank = self.start(channel=False)
                rank.write("3")
                self.expect_boundaries(rank, 1, 1, stop_at=1)
                self.expect(rank, checkpointed=1, stop_step=1, trigger="control-file")
                self.expect_exit(rank)

    def test_control_file_written_while_running_stops_the_rank(self):
        cases = (({}, "graceful_exit.json", ()),
                 ({"GRACEFUL_CONTROL_FILE": "from-env.json"}, "from-env.json", ()),
                 ({}, "from-argument.json", ("--control-file", "from-argument.json")))
        for env, name, args in cases:
            with self.subTest(name=name):
                self.write_control_file('{"GracefulExit": 0}', name)
                rank = self.start("--poll", "0.02", *args, channel=False, env=env)
                self.run_steps(rank, 1, 1)
                self.write_control_file('{"GracefulExit": 1}', name)
                rank.write(f"run {support.GUARD}")
                self.expect(rank, stopped=True, trigger="control-file")
                self.expect_exit(rank)
                self.assertNotIn("Traceback", rank.stderr.text())

    def test_control_file_values_that_do_not_request_an_exit(self):
        contents = {
            '{"GracefulExit": 0}': 0, '{"GracefulExit": false}': 0,
            '{"GracefulExit": "1"}': 1, '{"GracefulExit": null}': 1, '{"GracefulExit": [1]}': 1,
            '{"GracefulExit": 2}': 0, '{"GracefulExit": {"value": 1}}': 1, "{}": 0,
            '{"gracefulexit": 1}': 0, '{"GracefulExit": ': 1, "": 1, "[1]": 1,
            '[{"GracefulExit": 1}]': 1, '"GracefulExit"': 1, "1": 1,
        }
        ranks = {}
        for index, content in enumerate(contents):
            name = f"control-{index}.json"
            self.write_control_file(content, name)
            ranks[content] = self.start("--poll", "0.02", "--control-file", name, channel=False)
        for rank in ranks.values():
            rank.write("run 0.5")
        for content, warnings in contents.items():
            with self.subTest(content=content):
                rank = ranks[content]
                self.expect(rank, stopped=False, trigger=None)
                self.expect_exit(rank)
                stderr = rank.stderr.text()
                self.assertNotIn("Traceback", stderr)
                self.assertEqual(stderr.count("graceful_exit:"), warnings, stderr)

    def test_one_warning_per_distinct_problem(self):
        self.write_control_file("{")
        rank = self.start("--poll", "0.02", channel=False)
        for content in ("{", "{{{", "[1]", "[1, 2]", '{"GracefulExit": "1"}',
                        '{"GracefulExit": "1"} ', "{"):
            self.write_control_file(content)
            rank.write("run 0.3")
            self.expect(rank, stopped=False)
        self.expect_exit(rank)
        lines = rank.stderr.text().splitlines()
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(sum("not valid JSON" in line for line in lines), 1, lines)
        self.assertEqual(sum("does not hold a JSON object" in line for line in lines), 1, lines)
        self.assertEqual(sum('"GracefulExit" is "1"' in line for line in lines), 1, lines)

    def test_fast_path_cost(self):
        rank = self.start(channel=False)
        rank.write("time 1000000")
        cost = self.event(rank)["ns_per_call"]
        print(f"\nshould_stop, standalone, nothing pending: {cost:.1f} ns/call "
              "(1,000,000 calls, loop included)", file=sys.stderr)
        self.expect_exit(rank)


if __name__ == "__main__":
    unittest.main()
