"""The client conformance suite of docs/PROTOCOL.md ("Conformance"): every scenario a client of the
rank protocol must pass, run against every client through its driver.

A driver is a program whose training loop the test steps through stdin and which reports, one JSON
object per line, what the client decided (fake_rank.py documents the commands). The test plays the
coordinator on a real socketpair (and a real doorbell). Drivers:

- Python: Tests/python/fake_rank.py, over examples/python/graceful_exit.py;
- Swift: the executable `graceful-conformance-rank` (Sources/graceful-conformance-rank), over the
  library GracefulRank. Found at $GRACEFUL_SWIFT_RANK, else the newest of .build/debug and
  .build/release; built by `swift build` (and before `swift test`). Skipped when not built.

Each scenario runs once per driver: `PythonClient.test_x` and `SwiftClient.test_x`.
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import support  # noqa: E402

SWIFT_DRIVER_NAME = "graceful-conformance-rank"


def swift_driver():
    """The Swift driver's path, or None when it is not built."""
    configured = os.environ.get("GRACEFUL_SWIFT_RANK")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    candidates = [os.path.join(support.ROOT, ".build", configuration, SWIFT_DRIVER_NAME)
                  for configuration in ("debug", "release")]
    built = [path for path in candidates if os.access(path, os.X_OK)]
    return max(built, key=os.path.getmtime) if built else None


class Scenarios:
    """The scenarios, mixed into one TestCase per driver."""

    # -- the coordinator's side ------------------------------------------------------------------

    def hello(self, rank):
        message = rank.channel.receive()
        self.assertEqual(message, {"type": "hello", "protocol": 1, "pid": rank.process.pid})

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

    # -- starting: hello, the channel, the doorbell ----------------------------------------------

    def test_hello_comes_first_and_the_channel_is_taken_over(self):
        env = {"RANK": 2, "WORLD_SIZE": 4, "LOCAL_RANK": 1, "GRACEFUL_RESUME_STEP": 41,
               "GRACEFUL_RESUME_PATH": "ckpt/step_41"}
        rank = self.start(env=env)
        self.hello(rank)
        expected = {"fd_in_environ": False, "fd_inheritable": False, "coordinated": True,
                    "rank": 2, "world_size": 4, "local_rank": 1, "resume_step": 41,
                    "resume_path": "ckpt/step_41", "stop_step": None, "trigger": None,
                    "committed_step": None, "same_instance": True}
        self.assertEqual({key: rank.ready[key] for key in expected}, expected)

    def test_a_child_process_neither_inherits_the_channel_nor_says_hello(self):
        bell = self.doorbell()
        rank = self.start(doorbell=bell)
        self.hello(rank)
        self.run_steps(rank, 1, 2)
        rank.write("child")
        child = self.event(rank)["child"]
        self.assertEqual(child, {"coordinated": False, "fd_in_environ": False,
                                 "doorbell_fd_in_environ": False, "channel_fd_open": False,
                                 "doorbell_fd_open": False})
        self.expect(rank, child_exit=0)
        # Nothing came from the child: the next message on the channel answers this stop.
        self.stop(rank, 2)
        self.stop_at(rank, 3)
        rank.write("1")
        self.expect_boundaries(rank, 3, 3, stop_at=3)
        self.expect_confirmation(rank, 3, stop_step=3)
        self.expect_exit(rank)

    def test_a_channel_descriptor_that_is_no_socket_means_standalone(self):
        # 1000: not open; 0: open, but the stdin pipe, which must not be read as a channel.
        for fd in (1000, 0):
            with self.subTest(fd=fd):
                rank = self.start(channel=False, env={"GRACEFUL_CHANNEL_FD": fd})
                self.assertEqual({key: rank.ready[key] for key in ("coordinated", "fd_in_environ")},
                                 {"coordinated": False, "fd_in_environ": False})
                self.run_steps(rank, 1, 3)
                self.expect_exit(rank)
                self.assertIn("GRACEFUL_CHANNEL_FD", rank.stderr.text())

    def test_a_doorbell_without_a_channel_is_stripped_and_left_alone(self):
        bell = self.doorbell()
        rank = self.start(channel=False, doorbell=bell)
        self.assertFalse(rank.ready["coordinated"])
        self.assertFalse(rank.ready["doorbell_fd_in_environ"])
        # Not ours to close: without a channel the number may name anything.
        self.assertTrue(rank.ready["doorbell_fd_open"])
        self.expect_exit(rank)

    def test_a_ring_holds_the_next_boundary_until_its_request_arrives(self):
        bell = self.doorbell()
        rank = self.start(doorbell=bell)
        self.hello(rank)
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
        self.hello(rank)
        bell.ring(7)
        rank.write("2")
        self.expect(rank, at=1)
        self.expect(rank, boundary=1, stop=False, checkpoint=False)
        self.expect_boundaries(rank, 2, 2)
        self.expect_info(rank, stop_step=None, trigger=None)

    def test_a_doorbell_smaller_than_a_page_is_refused_and_the_channel_still_works(self):
        bell = self.doorbell(size=16)
        rank = self.start(doorbell=bell)
        self.hello(rank)
        self.assertEqual({key: rank.ready[key] for key in ("doorbell_fd_in_environ", "doorbell_fd_open")},
                         {"doorbell_fd_in_environ": False, "doorbell_fd_open": False})
        self.run_steps(rank, 1, 2)
        self.stop(rank, 2)
        self.stop_at(rank, 3)
        rank.write("5")
        self.expect_boundaries(rank, 3, 3, stop_at=3)
        self.expect_confirmation(rank, 3, stop_step=3)
        self.expect_exit(rank)

    # -- messages --------------------------------------------------------------------------------

    def test_paths_travel_as_bytes_with_surrogate_escapes(self):
        rank = self.start()
        self.hello(rank)
        rank.write("checkpointed-path 4 636b2fffc3a9")  # b"ck/\xff\xc3\xa9": \xff is not UTF-8
        self.expect(rank, checkpointed_returned=True)
        self.assertEqual(rank.channel.receive(),
                         {"type": "checkpointed", "step": 4, "path": "ck/\udcff\u00e9"})
        rank.write("checkpointed 5")  # no path: null
        self.expect(rank, checkpointed_returned=True)
        self.assertEqual(rank.channel.receive(), {"type": "checkpointed", "step": 5, "path": None})

    def test_fields_in_any_order_with_unknown_ones_are_read(self):
        rank = self.start("--keep-going")
        self.hello(rank)
        self.run_steps(rank, 1, 2)
        # The coordinator's formatting is not part of the contract: any order, any spacing.
        rank.channel.send_raw(b' { "trigger" : "SIGINT" ,\t"later": {"x": [1, null]}, "id" : 1,'
                              b' "type" : "stop" } \n')
        self.assertEqual(rank.channel.receive(), {"type": "position", "id": 1, "step": 2})
        rank.channel.send({"step": 3, "id": 1, "type": "stop_at", "later": "x"})
        rank.write("1")
        self.expect_boundaries(rank, 3, 3, stop_at=3)
        self.expect_confirmation(rank, 3, stop_step=3)
        rank.channel.send({"step": 3, "type": "committed", "later": 1.5})
        # The reader handles messages in order: once this stop is answered, committed was seen.
        self.stop(rank, 3, stop_id=2)
        rank.write("info")
        self.assertEqual(self.event(rank)["info"]["committed_step"], 3)
        self.expect_exit(rank)

    def test_malformed_unknown_and_overlong_lines_are_ignored(self):
        rank = self.start()
        self.hello(rank)
        self.run_steps(rank, 1, 2)
        overlong = {"type": "stop", "id": 98, "trigger": "SIGINT", "pad": "x" * 70000}
        for data in (b"not json\n", b"[1, 2]\n", b'{"type": 7}\n', b'{"no_type": 1}\n',
                     b'{"type": "future", "id": 1}\n', b"\xff\xfe\n", b"\n", b"null\n",
                     b'{"type": "stop_at", "id": 99, "step": "3"}\n',
                     b'{"type": "stop", "id": 97}\n', b'{"type": "stop", "id": 96, "trigger": 7}\n',
                     b'{"type": "stop", "id": 95, "trigger": null}\n',
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

    def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not(self):
        rank = self.start()
        self.hello(rank)
        self.run_steps(rank, 1, 2)

        def padded(request_id, length):
            message = {"type": "stop", "id": request_id, "trigger": "SIGINT", "pad": ""}
            message["pad"] = "x" * (length - len(json.dumps(message).encode()))
            line = json.dumps(message).encode()
            self.assertEqual(len(line), length)
            return line + b"\n"

        rank.channel.send_raw(padded(1, 65537))  # one byte too long (the newline not counted)
        rank.channel.send_raw(padded(2, 65536))
        self.assertEqual(rank.channel.receive(), {"type": "position", "id": 2, "step": 2})
        self.stop_at(rank, 3, stop_id=2)
        rank.write("1")
        self.expect_boundaries(rank, 3, 3, stop_at=3)
        self.expect_confirmation(rank, 3, stop_step=3)
        self.expect_exit(rank)

    def test_requests_with_ids_or_steps_out_of_range_are_ignored(self):
        rank = self.start()
        self.hello(rank)
        self.run_steps(rank, 1, 2)
        for request_id in (0, -1, 2**53, 1.0, True, "1", None):
            rank.channel.send({"type": "stop", "id": request_id, "trigger": "SIGINT"})
        self.stop(rank, 2)
        for request_id in (1.0, True, "1"):
            self.stop_at(rank, 3, stop_id=request_id)
        for step in (-1, 2**53, 3.0, 3e0, True, "3"):
            self.stop_at(rank, step)
        rank.channel.send({"type": "stop_at", "id": 1})  # no step: not the same as null
        rank.write("1")
        self.expect(rank, at=3)
        self.expect_no_event(rank, 0.3)
        self.stop_at(rank, 4)
        self.expect(rank, boundary=3, stop=False)
        rank.write("1")
        self.expect_boundaries(rank, 4, 4, stop_at=4)
        self.expect_confirmation(rank, 4, stop_step=4)
        self.expect_exit(rank)

    # -- a stop ----------------------------------------------------------------------------------

    def test_position_is_answered_while_the_training_loop_is_blocked(self):
        rank = self.start()
        self.hello(rank)
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
        self.hello(rank)
        self.stop(rank, None, trigger="SIGTERM")
        self.stop_at(rank, None)
        rank.write("10")
        self.expect_boundaries(rank, 1, 1, stop_at=1)
        self.expect_confirmation(rank, 1, stop_step=1, trigger="SIGTERM")
        self.expect_exit(rank)

    def test_a_rank_that_answered_null_waits_at_its_first_boundary(self):
        rank = self.start()
        self.hello(rank)
        self.stop(rank, None)
        rank.write("10")
        self.expect(rank, at=1)
        self.expect_no_event(rank, 0.3)
        self.stop_at(rank, None)
        self.expect(rank, boundary=1, stop=True, checkpoint=False)
        self.expect_confirmation(rank, 1, stop_step=1)
        self.expect_exit(rank)

    def test_waits_at_the_next_boundary_for_the_stop_step_then_stops_exactly_there(self):
        rank = self.start()
        self.hello(rank)
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

    def test_without_a_doorbell_no_boundary_waits_for_a_ring(self):
        rank = self.start()
        self.hello(rank)
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        self.stop_at(rank, 8)
        # Nothing tells when the reader has handled stop_at; this gives it the time to.
        time.sleep(0.2)
        began = time.monotonic()
        rank.write("3")
        self.expect_boundaries(rank, 6, 8, stop_at=8)
        # A client that takes the request's id for a ring waits a second (its patience) here.
        self.assertLess(time.monotonic() - began, 0.9)
        self.expect_confirmation(rank, 8, stop_step=8)
        self.expect_exit(rank)

    def test_a_rank_past_the_stop_step_stops_at_its_next_boundary(self):
        rank = self.start()
        self.hello(rank)
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
        self.hello(rank)
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
        self.hello(rank)
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        self.stop_at(rank, None)
        rank.write("10")
        self.expect_boundaries(rank, 6, 6, stop_at=6)
        self.expect_confirmation(rank, 6, stop_step=6)
        self.expect_exit(rank)

    def test_committed_is_recorded(self):
        rank = self.start("--keep-going")
        self.hello(rank)
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

    # -- end of file -----------------------------------------------------------------------------

    def test_end_of_file_while_waiting_stops_there_and_checkpointed_does_not_raise(self):
        rank = self.start()
        self.hello(rank)
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
        self.hello(rank)
        self.run_steps(rank, 1, 2)
        rank.channel.close()
        rank.write("run 20")
        self.expect(rank, stopped=True, trigger="channel-closed")
        self.expect_exit(rank)

    def test_end_of_file_before_the_stop_step_stops_at_the_next_boundary(self):
        rank = self.start()
        self.hello(rank)
        self.run_steps(rank, 1, 5)
        self.stop(rank, 5)
        self.stop_at(rank, 8)
        rank.channel.close()
        # Nothing tells when the reader has seen the end of file; this gives it the time to.
        time.sleep(0.3)
        rank.write("10")
        self.expect_boundaries(rank, 6, 6, stop_at=6)
        self.expect(rank, checkpointed=6, stop_step=6, trigger="SIGINT")
        self.expect_exit(rank)

    def test_checkpointed_after_the_coordinator_closed_the_channel_does_not_raise(self):
        rank = self.start("--keep-going")
        self.hello(rank)
        rank.channel.close()
        for _ in range(3):
            rank.write("checkpointed 7")
            self.expect(rank, checkpointed_returned=True)
        self.expect_exit(rank)

    # -- checkpoints without stopping ------------------------------------------------------------

    def test_a_checkpoint_round_saves_at_its_step_and_training_goes_on(self):
        rank = self.start()
        self.hello(rank)
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
        self.hello(rank)
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
        self.hello(rank)
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
        self.hello(rank)
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
        self.hello(rank)
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
        self.hello(rank)
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
        self.hello(rank)
        self.checkpoint(rank, None)
        self.checkpoint_at(rank, None)
        rank.write("2")
        self.expect_boundaries(rank, 1, 1, checkpoint_at=1)
        self.expect_checkpoint(rank, 1)
        self.expect_boundaries(rank, 2, 2)
        self.expect_exit(rank)

    def test_end_of_file_during_a_checkpoint_round_stops_at_the_waiting_boundary(self):
        rank = self.start()
        self.hello(rank)
        self.run_steps(rank, 1, 3)
        self.checkpoint(rank, 3)
        rank.write("10")
        self.expect(rank, at=4)
        rank.channel.close()
        self.expect(rank, boundary=4, stop=True, checkpoint=False)
        self.expect(rank, checkpointed=4, stop_step=4, trigger="channel-closed")
        self.expect_exit(rank)


class PythonClient(Scenarios, support.RankTestCase):
    """examples/python/graceful_exit.py, through Tests/python/fake_rank.py."""


class SwiftClient(Scenarios, support.RankTestCase):
    """The library GracefulRank, through the executable graceful-conformance-rank."""

    def setUp(self):
        self.driver = swift_driver()
        if self.driver is None:
            self.skipTest(f"the Swift driver is not built (`swift build --product {SWIFT_DRIVER_NAME}`, "
                          "or set GRACEFUL_SWIFT_RANK to its path)")
        super().setUp()

    def driver_argv(self, *args):
        return [self.driver, *args]


if __name__ == "__main__":
    unittest.main()
