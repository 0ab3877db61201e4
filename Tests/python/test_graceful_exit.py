"""Tests of examples/python/graceful_exit.py. Each test runs a real rank process (fake_rank.py) and
plays the coordinator on a real socketpair, or sends real signals and writes a real control file."""

import json
import os
import queue
import signal
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import support  # noqa: E402


class RankTestCase(unittest.TestCase):
    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.cwd = directory.name

    def start(self, *args, channel=True, env=None, doorbell=None):
        rank = support.Child(support.python(support.FAKE_RANK, *args), self, channel=channel,
                             env=env, cwd=self.cwd, doorbell=doorbell)
        rank.ready = self.event(rank)["ready"]
        return rank

    def event(self, rank, timeout=support.GUARD):
        try:
            line = rank.stdout.next(timeout)
        except queue.Empty:
            self.fail(f"no report from the rank within {timeout} s")
        if line is None:
            self.fail(f"the rank exited ({rank.process.wait(support.GUARD)}): {rank.stderr.text()}")
        return json.loads(line)

    def expect(self, rank, **fields):
        event = self.event(rank)
        self.assertEqual({key: event.get(key) for key in fields}, fields, event)
        return event

    def expect_boundaries(self, rank, first, last, stop_at=None, checkpoint_at=None):
        """Awaits the reports of boundaries first..last; should_stop is True only at `stop_at`
        and should_checkpoint only at `checkpoint_at` (if any). A checkpoint, if any, is last."""
        for step in range(first, last + 1):
            self.expect(rank, at=step)
            self.expect(rank, boundary=step, stop=step == stop_at,
                        checkpoint=step == checkpoint_at)

    def run_steps(self, rank, first, count):
        rank.write(str(count))
        self.expect_boundaries(rank, first, first + count - 1)

    def expect_no_event(self, rank, seconds):
        try:
            line = rank.stdout.next(seconds)
        except queue.Empty:
            return
        self.fail(f"the rank reported {line!r} while it should be waiting")

    def expect_exit(self, rank, status=0):
        self.assertEqual(rank.wait(), status, rank.stderr.text())

    def doorbell(self, size=4096):
        """A doorbell as the coordinator makes it (a sealed memory file), closed at the end."""
        bell = support.Doorbell(size)
        self.addCleanup(bell.close)
        return bell

    def write_control_file(self, content, name="graceful_exit.json"):
        """Replaces the file in one rename, so the rank never reads half of it."""
        path = os.path.join(self.cwd, name)
        with open(path + ".tmp", "w") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
        return path


class CoordinatedTests(RankTestCase):
    def stop(self, rank, position, stop_id=1, trigger="SIGINT"):
        rank.channel.send({"type": "stop", "id": stop_id, "trigger": trigger})
        self.assertEqual(rank.channel.receive(),
                         {"type": "position", "id": stop_id, "step": position})

    def stop_at(self, rank, step, stop_id=1):
        rank.channel.send({"type": "stop_at", "id": stop_id, "step": step})

    def expect_confirmation(self, rank, step, stop_step, trigger="SIGINT"):
        self.expect(rank, checkpointed=step, stop_step=stop_step, trigger=trigger)
        self.assertEqual(rank.channel.receive(),
                         {"type": "checkpointed", "step": step, "path": f"ckpt/step_{step}"})

    def checkpoint(self, rank, position, request_id=1, trigger="periodic"):
        rank.channel.send({"type": "checkpoint", "id": request_id, "trigger": trigger})
        self.assertEqual(rank.channel.receive(),
                         {"type": "position", "id": request_id, "step": position})

    def checkpoint_at(self, rank, step, request_id=1):
        rank.channel.send({"type": "checkpoint_at", "id": request_id, "step": step})

    def expect_checkpoint(self, rank, step, trigger="periodic"):
        """Awaits the checkpoint of `step` that the rank reports right after its boundary."""
        self.expect(rank, checkpointed=step, checkpoint_trigger=trigger)
        self.assertEqual(rank.channel.receive(),
                         {"type": "checkpointed", "step": step, "path": f"ckpt/step_{step}"})

    def expect_info(self, rank, **fields):
        rank.write("info")
        info = self.event(rank)["info"]
        self.assertEqual({key: info[key] for key in fields}, fields, info)

    def test_hello_comes_first_and_the_channel_is_taken_over(self):
        env = {"RANK": 2, "WORLD_SIZE": 4, "LOCAL_RANK": 1, "GRACEFUL_RESUME_STEP": 41,
               "GRACEFUL_RESUME_PATH": "ckpt/step_41"}
        rank = self.start(env=env)
        self.assertEqual(rank.channel.receive(),
                         {"type": "hello", "protocol": 1, "pid": rank.process.pid})
        expected = {"fd_in_environ": False, "fd_inheritable": False, "coordinated": True,
                    "rank": 2, "world_size": 4, "local_rank": 1, "resume_step": 41,
                    "resume_path": "ckpt/step_41", "stop_step": None, "trigger": None,
                    "committed_step": None, "same_instance": True}
        self.assertEqual({key: rank.ready[key] for key in expected}, expected)

    def test_a_ring_holds_the_next_boundary_until_its_request_arrives(self):
        bell = self.doorbell()
        rank = self.start(doorbell=bell)
        rank.channel.receive()
        self.assertEqual({key: rank.ready[key] for key in ("doorbell_fd_in_environ", "doorbell_fd_open")},
                         {"doorbell_fd_in_environ": False, "doorbell_fd_open": False})
        self.run_steps(rank, 1, 3)
        bell.ring(1)
        rank.write("2")
        self.expect(rank, at=4)
        # Boundary 4 saw the ring: it waits for the message instead of training on.
        self.expect_no_event(rank, 0.3)
        self.stop(rank, 4)
        self.expect(rank, boundary=4, stop=False, checkpoint=False)
        self.stop_at(rank, 5)
        self.expect_boundaries(rank, 5, 5, stop_at=5)
        self.expect_confirmation(rank, 5, stop_step=5)
        self.expect_exit(rank)

    def test_a_ring_without_its_message_is_let_go(self):
        bell = self.doorbell()
        rank = self.start(doorbell=bell)
        rank.channel.receive()
        bell.ring(7)
        rank.write("2")
        self.expect(rank, at=1)
        self.expect(rank, boundary=1, stop=False, checkpoint=False)
        self.expect_boundaries(rank, 2, 2)
        self.expect_info(rank, stop_step=None, trigger=None)

    def test_a_doorbell_smaller_than_a_page_is_refused_and_the_channel_still_works(self):
        bell = self.doorbell(size=16)
        rank = self.start(doorbell=bell)
        rank.channel.receive()
        self.assertEqual({key: rank.ready[key] for key in ("doorbell_fd_in_environ", "doorbell_fd_open")},
                         {"doorbell_fd_in_environ": False, "doorbell_fd_open": False})
        self.run_steps(rank, 1, 2)
        self.stop(rank, 2)
        self.stop_at(rank, 3)
        rank.write("5")
        self.expect_boundaries(rank, 3, 3, stop_at=3)
        self.expect_confirmation(rank, 3, stop_step=3)
        self.expect_exit(rank)

    def test_paths_travel_as_bytes_with_surrogate_escapes(self):
        rank = self.start()
        rank.channel.receive()
        rank.write("checkpointed-path 4 636b2fffc3a9")
        self.expect(rank, checkpointed_returned=True)
        line = rank.channel.sock.recv(65536)
        self.assertIn(b'"path":"ck/\\udcff\\u00e9"', line)
        for bad in ("", "61006200"):
            rank.write(f"checkpointed-path 4 {bad}")
            self.assertIn("not a path", self.event(rank)["value_error"])

    def test_requests_with_ids_or_steps_out_of_range_are_ignored(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 2)
        for request_id in (0, -1, 2**53, 1.0, True):
            rank.channel.send({"type": "stop", "id": request_id, "trigger": "SIGINT"})
        self.stop(rank, 2)
        self.stop_at(rank, -1)
        self.stop_at(rank, 2**53)
        rank.write("1")
        self.expect(rank, at=3)
        self.expect_no_event(rank, 0.3)
        self.stop_at(rank, 4)
        self.expect(rank, boundary=3, stop=False)
        rank.write("1")
        self.expect_boundaries(rank, 4, 4, stop_at=4)
        self.expect_confirmation(rank, 4, stop_step=4)
        self.expect_exit(rank)

    def test_position_is_answered_while_the_training_loop_is_blocked(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        # The loop now blocks reading stdin, as it would inside an all-reduce.
        self.stop(rank, 5)
        self.stop_at(rank, 6)
        rank.write("10")
        self.expect_boundaries(rank, 6, 6, stop_at=6)
        self.expect_confirmation(rank, 6, stop_step=6)
        self.expect_exit(rank)

    def test_position_is_null_before_the_first_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.stop(rank, None, trigger="SIGTERM")
        self.stop_at(rank, None)
        rank.write("10")
        self.expect_boundaries(rank, 1, 1, stop_at=1)
        self.expect_confirmation(rank, 1, stop_step=1, trigger="SIGTERM")
        self.expect_exit(rank)

    def test_waits_at_the_next_boundary_for_the_stop_step_then_stops_exactly_there(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        rank.write("10")
        self.expect(rank, at=6)
        self.expect_no_event(rank, 0.3)
        self.stop_at(rank, 8)
        self.expect(rank, boundary=6, stop=False)
        self.expect_boundaries(rank, 7, 8, stop_at=8)
        self.expect_confirmation(rank, 8, stop_step=8)
        self.expect_exit(rank)

    def test_a_rank_past_the_stop_step_stops_at_its_next_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        # As if this answer had come too late and the others had chosen T = 4.
        self.stop_at(rank, 4)
        rank.write("10")
        self.expect_boundaries(rank, 6, 6, stop_at=6)
        self.expect_confirmation(rank, 6, stop_step=4)
        self.expect_exit(rank)

    def test_a_rank_waiting_at_a_boundary_past_the_stop_step_stops_there(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        rank.write("10")
        self.expect(rank, at=6)
        self.stop_at(rank, 5)
        self.expect(rank, boundary=6, stop=True)
        self.expect_confirmation(rank, 6, stop_step=5)
        self.expect_exit(rank)

    def test_stop_at_null_stops_at_the_next_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        self.stop_at(rank, None)
        rank.write("10")
        self.expect_boundaries(rank, 6, 6, stop_at=6)
        self.expect_confirmation(rank, 6, stop_step=6)
        self.expect_exit(rank)

    def test_end_of_file_while_waiting_stops_there_and_checkpointed_does_not_raise(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 3)
        self.stop(rank, 3)
        rank.write("10")
        self.expect(rank, at=4)
        rank.channel.close()
        self.expect(rank, boundary=4, stop=True)
        self.expect(rank, checkpointed=4, stop_step=4, trigger="SIGINT")
        self.expect_exit(rank)

    def test_end_of_file_stops_at_the_next_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 2)
        rank.channel.close()
        rank.write("run 20")
        self.expect(rank, stopped=True, trigger="channel-closed")
        self.expect_exit(rank)

    def test_checkpointed_after_the_coordinator_closed_the_channel_does_not_raise(self):
        rank = self.start("--keep-going")
        rank.channel.receive()
        rank.channel.close()
        for _ in range(3):
            rank.write("checkpointed 7")
            self.expect(rank, checkpointed_returned=True)
        self.expect_exit(rank)

    def test_committed_is_recorded(self):
        rank = self.start("--keep-going")
        rank.channel.receive()
        self.run_steps(rank, 1, 3)
        self.stop(rank, 3)
        self.stop_at(rank, 4)
        rank.write("1")
        self.expect_boundaries(rank, 4, 4, stop_at=4)
        self.expect_confirmation(rank, 4, stop_step=4)
        rank.channel.send({"type": "committed", "step": 4})
        # The reader handles messages in order: once this stop is answered, committed was seen.
        self.stop(rank, 4, stop_id=2)
        rank.write("info")
        self.assertEqual(self.event(rank)["info"]["committed_step"], 4)
        self.expect_exit(rank)

    def test_malformed_unknown_and_overlong_lines_are_ignored(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 2)
        overlong = {"type": "stop", "id": 98, "trigger": "SIGINT", "pad": "x" * 70000}
        for data in (b"not json\n", b"[1, 2]\n", b'{"type": 7}\n', b'{"no_type": 1}\n',
                     b'{"type": "future", "id": 1}\n', b"\xff\xfe\n",
                     b'{"type": "stop_at", "id": 99, "step": "3"}\n',
                     json.dumps(overlong).encode() + b"\n"):
            rank.channel.send_raw(data)
        self.stop(rank, 2, stop_id=3)
        rank.write("1")
        self.expect(rank, at=3)
        self.expect_no_event(rank, 0.3)
        self.stop_at(rank, 3, stop_id=3)
        self.expect(rank, boundary=3, stop=True)
        self.expect_confirmation(rank, 3, stop_step=3)
        self.expect_exit(rank)

    def test_a_checkpoint_round_saves_at_its_step_and_training_goes_on(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        # Answered while the loop blocks reading stdin, as it would inside an all-reduce.
        self.checkpoint(rank, 5)
        rank.write("5")
        self.expect(rank, at=6)
        self.expect_no_event(rank, 0.3)
        self.checkpoint_at(rank, 8)
        self.expect(rank, boundary=6, stop=False, checkpoint=False)
        self.expect_boundaries(rank, 7, 8, checkpoint_at=8)
        self.expect_checkpoint(rank, 8)
        self.expect_boundaries(rank, 9, 10)
        # A second round works the same way; neither touched the stop's state.
        self.checkpoint(rank, 10, request_id=2, trigger="SIGUSR2")
        self.checkpoint_at(rank, 11, request_id=2)
        rank.write("2")
        self.expect_boundaries(rank, 11, 11, checkpoint_at=11)
        self.expect_checkpoint(rank, 11, trigger="SIGUSR2")
        self.expect_boundaries(rank, 12, 12)
        self.expect_info(rank, stop_step=None, trigger=None, checkpoint_trigger="SIGUSR2")
        self.expect_exit(rank)

    def test_a_target_of_another_request_or_kind_is_ignored(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.checkpoint(rank, 5, request_id=2)
        self.checkpoint_at(rank, 6, request_id=1)
        self.stop_at(rank, 6, stop_id=2)
        rank.write("5")
        self.expect(rank, at=6)
        self.expect_no_event(rank, 0.3)
        self.checkpoint_at(rank, 8, request_id=2)
        self.expect(rank, boundary=6, stop=False, checkpoint=False)
        self.expect_boundaries(rank, 7, 8, checkpoint_at=8)
        self.expect_checkpoint(rank, 8)
        self.expect_boundaries(rank, 9, 10)
        self.expect_exit(rank)

    def test_a_stop_replaces_a_pending_checkpoint_round(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.checkpoint(rank, 5)
        self.checkpoint_at(rank, 7)
        self.run_steps(rank, 6, 1)
        self.stop(rank, 6, stop_id=2)
        self.checkpoint_at(rank, 7)  # late, for the replaced round
        self.stop_at(rank, 8, stop_id=2)
        rank.write("10")
        self.expect_boundaries(rank, 7, 8, stop_at=8)
        self.expect_confirmation(rank, 8, stop_step=8)
        self.expect_exit(rank)

    def test_a_stop_replaces_a_checkpoint_round_the_rank_waits_for(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.checkpoint(rank, 5)
        rank.write("10")
        self.expect(rank, at=6)
        # Nothing tells when the rank waits inside should_stop(6); this gives it the time to.
        self.expect_no_event(rank, 0.3)
        rank.channel.send({"type": "stop", "id": 2, "trigger": "SIGTERM"})
        answer = rank.channel.receive()
        position = answer["step"]
        self.assertEqual(answer, {"type": "position", "id": 2, "step": position})
        self.assertIn(position, (5, 6))
        if position == 6:
            # The stop's T is at least 7: the waiting boundary passes at once, and 7 waits.
            self.expect(rank, boundary=6, stop=False, checkpoint=False)
            self.expect(rank, at=7)
        self.stop_at(rank, position + 1, stop_id=2)
        self.expect(rank, boundary=position + 1, stop=True, checkpoint=False)
        self.expect_confirmation(rank, position + 1, stop_step=position + 1, trigger="SIGTERM")
        self.expect_exit(rank)

    def test_a_checkpoint_request_while_a_stop_is_pending_is_ignored(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        rank.channel.send({"type": "checkpoint", "id": 2, "trigger": "periodic"})
        self.checkpoint_at(rank, 6, request_id=2)
        self.stop_at(rank, 7)
        rank.write("10")
        self.expect_boundaries(rank, 6, 7, stop_at=7)
        # The next message on the channel is the confirmation: the checkpoint got no answer.
        self.expect_confirmation(rank, 7, stop_step=7)
        self.expect_exit(rank)

    def test_a_rank_past_the_checkpoint_step_checkpoints_at_its_next_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 5)
        self.checkpoint(rank, 5)
        # As if this answer had come too late and the others had chosen T = 4.
        self.checkpoint_at(rank, 4)
        rank.write("2")
        self.expect_boundaries(rank, 6, 6, checkpoint_at=6)
        self.expect_checkpoint(rank, 6)
        self.expect_boundaries(rank, 7, 7)
        # The same when T arrives while the rank waits at a boundary past it.
        self.checkpoint(rank, 7, request_id=2)
        rank.write("2")
        self.expect(rank, at=8)
        self.checkpoint_at(rank, 7, request_id=2)
        self.expect(rank, boundary=8, stop=False, checkpoint=True)
        self.expect_checkpoint(rank, 8)
        self.expect_boundaries(rank, 9, 9)
        self.expect_exit(rank)

    def test_checkpoint_at_null_checkpoints_at_the_first_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.checkpoint(rank, None)
        self.checkpoint_at(rank, None)
        rank.write("2")
        self.expect_boundaries(rank, 1, 1, checkpoint_at=1)
        self.expect_checkpoint(rank, 1)
        self.expect_boundaries(rank, 2, 2)
        self.expect_exit(rank)

    def test_end_of_file_during_a_checkpoint_round_stops_at_the_waiting_boundary(self):
        rank = self.start()
        rank.channel.receive()
        self.run_steps(rank, 1, 3)
        self.checkpoint(rank, 3)
        rank.write("10")
        self.expect(rank, at=4)
        rank.channel.close()
        self.expect(rank, boundary=4, stop=True, checkpoint=False)
        self.expect(rank, checkpointed=4, stop_step=4, trigger="channel-closed")
        self.expect_exit(rank)

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


class StandaloneTests(RankTestCase):
    def test_an_unusable_channel_descriptor_means_standalone(self):
        rank = self.start(channel=False, env={"GRACEFUL_CHANNEL_FD": 1000})
        self.assertFalse(rank.ready["coordinated"])
        self.assertFalse(rank.ready["fd_in_environ"])
        self.expect_exit(rank)
        self.assertIn("GRACEFUL_CHANNEL_FD='1000' is not a usable socket", rank.stderr.text())

    def test_a_doorbell_without_a_channel_is_stripped_and_left_alone(self):
        bell = self.doorbell()
        rank = self.start(channel=False, doorbell=bell)
        self.assertFalse(rank.ready["coordinated"])
        self.assertFalse(rank.ready["doorbell_fd_in_environ"])
        # Not ours to close: without a channel the number may name anything.
        self.assertTrue(rank.ready["doorbell_fd_open"])
        self.expect_exit(rank)

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
