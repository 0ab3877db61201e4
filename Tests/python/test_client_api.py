"""Tests of the client's public API beyond the rank protocol: graceful_exit.atomic_write on real
files, the accessor graceful_exit.rank() and its alias Rank(), the control file judged as the
coordinator judges it (on real files, directories and fifos), and the installable distribution."""

import importlib.util
import io
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import unittest
import unittest.mock
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import support  # noqa: E402

sys.path.insert(0, support.EXAMPLES)

import graceful_exit  # noqa: E402

MIB = 1 << 20


class TemporaryDirectoryTestCase(unittest.TestCase):
    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.dir = directory.name

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, content):
        data = content.encode("utf-8") if isinstance(content, str) else content
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()


class AtomicWriteTests(TemporaryDirectoryTestCase):
    def test_exported(self):
        self.assertEqual(sorted(graceful_exit.__all__), ["Rank", "atomic_write", "rank"])

    def test_writes_a_new_binary_file(self):
        path = self.path("state.bin")
        with graceful_exit.atomic_write(path) as f:
            self.assertIsInstance(f, io.BufferedWriter)
            f.write(b"\x00\x01binary")
            self.assertFalse(os.path.exists(path))  # nothing at `path` before the block ends
        self.assertEqual(self.read("state.bin"), b"\x00\x01binary")
        self.assertEqual(os.listdir(self.dir), ["state.bin"])
        mode = stat.S_IMODE(os.stat(path).st_mode)
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(mode, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0o600

    def test_replaces_an_existing_file_and_accepts_path_objects(self):
        self.write("state.bin", b"old")
        with graceful_exit.atomic_write(pathlib.Path(self.path("state.bin"))) as f:
            f.write(b"new")
            self.assertEqual(self.read("state.bin"), b"old")
        self.assertEqual(self.read("state.bin"), b"new")
        self.assertEqual(os.listdir(self.dir), ["state.bin"])

    def test_an_exception_leaves_the_old_file_and_no_temporary(self):
        self.write("state.bin", b"old")
        with self.assertRaisesRegex(RuntimeError, "torch.save failed"):
            with graceful_exit.atomic_write(self.path("state.bin")) as f:
                f.write(b"half of the new")
                raise RuntimeError("torch.save failed")
        self.assertEqual(self.read("state.bin"), b"old")
        self.assertEqual(os.listdir(self.dir), ["state.bin"])

    def test_an_exception_without_an_old_file_leaves_nothing(self):
        with self.assertRaises(KeyboardInterrupt):
            with graceful_exit.atomic_write(self.path("state.bin")) as f:
                f.write(b"x")
                raise KeyboardInterrupt
        self.assertEqual(os.listdir(self.dir), [])

    def test_text_mode(self):
        with graceful_exit.atomic_write(self.path("state.json"), "w") as f:
            self.assertIsInstance(f, io.TextIOWrapper)
            f.write('{"name": "Grüße"}\n')
        self.assertEqual(self.read("state.json"), '{"name": "Grüße"}\n'.encode("utf-8"))
        with graceful_exit.atomic_write(self.path("latin.txt"), "w", encoding="latin-1") as f:
            f.write("é")
        self.assertEqual(self.read("latin.txt"), b"\xe9")
        with self.assertRaises(TypeError):
            with graceful_exit.atomic_write(self.path("binary.bin")) as f:
                f.write("text in a binary file")
        self.assertEqual(sorted(os.listdir(self.dir)), ["latin.txt", "state.json"])

    def test_other_modes_are_refused(self):
        for mode in ("a", "r+", "x", "ab", "w+"):
            with self.subTest(mode=mode), self.assertRaises(ValueError):
                graceful_exit.atomic_write(self.path("f"), mode)
        with self.assertRaisesRegex(ValueError, "binary mode takes no encoding"):
            graceful_exit.atomic_write(self.path("f"), encoding="utf-8")
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_missing_directory_fails_as_open_does(self):
        with self.assertRaises(FileNotFoundError):
            with graceful_exit.atomic_write(self.path("absent/state.bin")) as f:
                f.write(b"x")
        self.assertEqual(os.listdir(self.dir), [])

    def test_file_fsynced_before_the_rename_and_directory_after(self):
        self.write("state.bin", b"old")
        directory = os.stat(self.dir)
        synced = []
        real_fsync = os.fsync

        def fsync(fd):
            info = os.fstat(fd)
            synced.append((stat.S_ISDIR(info.st_mode), (info.st_dev, info.st_ino),
                           self.read("state.bin")))
            real_fsync(fd)

        with unittest.mock.patch.object(graceful_exit.os, "fsync", fsync):
            with graceful_exit.atomic_write(self.path("state.bin")) as f:
                f.write(b"new")
                temporary = os.fstat(f.fileno())
        self.assertEqual(synced, [
            (False, (temporary.st_dev, temporary.st_ino), b"old"),  # the data, before the rename
            (True, (directory.st_dev, directory.st_ino), b"new"),   # the directory, after it
        ])
        self.assertEqual(os.listdir(self.dir), ["state.bin"])


class ControlFileTests(TemporaryDirectoryTestCase):
    """graceful_exit._ControlFile on real files: what Sources/GracefulProtocol/ControlFile.swift and
    Sources/Graceful/Process/ControlFileWatcher.swift decide for the same bytes."""

    def judge(self, content, name="graceful_exit.json"):
        """(requests an exit, warnings) of a fresh watcher reading `content` (None: no file)."""
        if content is not None:
            self.write(name, content)
        watcher = graceful_exit._ControlFile(self.path(name))
        warnings = []
        return watcher.evaluate(warnings.append), warnings

    def assert_judged(self, cases, exit, warning=None):
        for content in cases:
            with self.subTest(content=content[:80]):
                requested, warnings = self.judge(content)
                self.assertEqual(requested, exit)
                if warning is None:
                    self.assertEqual(warnings, [])
                else:
                    self.assertEqual(len(warnings), 1, warnings)
                    self.assertIn(warning, warnings[0])
                    self.assertTrue(warnings[0].startswith(self.path("graceful_exit.json")))

    def test_an_exit_is_requested_by_what_equals_1_in_python(self):
        self.assert_judged([
            '{"GracefulExit": 1}', '{"GracefulExit": 1.0}', '{"GracefulExit": true}',
            '{"GracefulExit": 1e0}', '{"GracefulExit": 10e-1}', ' \n{"GracefulExit":1}\r\n\t',
            '{"other": [null, {"x": "y"}], "GracefulExit": 1}', '{"Graceful\\u0045xit": 1}',
            '{"GracefulExit": 0, "GracefulExit": 1}',  # the last of repeated keys counts
            '{"GracefulExit": 1.00000000000000000001}',  # a double that is exactly 1
        ], exit=True)

    def test_no_exit_and_no_warning(self):
        self.assertEqual(self.judge(None), (False, []))  # no file
        self.assert_judged([
            "{}", '{"GracefulExit": 0}', '{"GracefulExit": 2}', '{"GracefulExit": false}',
            '{"GracefulExit": -1}', '{"GracefulExit": 0.5}', '{"GracefulExit": 1e400}',
            '{"GracefulExit": -0}', '{"gracefulexit": 1}', '{"other": 1}',
            '{"nested": {"GracefulExit": 1}}', '{"GracefulExit": 1, "GracefulExit": 0}',
            '{"GracefulExit": %s}' % ("1" * 5000),  # beyond int()'s digit limit: still not 1
        ], exit=False)

    def test_invalid_json_warns(self):
        deep = '{"a": ' * 64 + "1" + "}" * 64
        self.assertEqual(self.judge(deep), (False, []))  # 64 levels: as deep as the coordinator reads
        self.assert_judged([
            "", " \n", "{", '{"GracefulExit": 1', '{"GracefulExit": 1} x', "{'GracefulExit': 1}",
            '{"GracefulExit": NaN}', '{"GracefulExit": Infinity}', '{"GracefulExit": -Infinity}',
            '{"GracefulExit": 01}', '{"GracefulExit": 1,}', '{"GracefulExit": "\x01"}',
            "\ufeff" + '{"GracefulExit": 1}',  # a UTF-8 byte order mark
            '{"GracefulExit": 1}'.encode("utf-16"),  # json.loads(bytes) would guess UTF-16
            b'{"GracefulExit": 1, "x": "\xff"}',  # not UTF-8
            '{"a": ' * 65 + "1" + "}" * 65, "[" * 100000 + "]" * 100000,
        ], exit=False, warning="is not valid JSON")

    def test_a_top_level_other_than_an_object_warns(self):
        self.assert_judged(["[1]", '[{"GracefulExit": 1}]', "1", '"GracefulExit"', "null", "true"],
                           exit=False, warning="does not hold a JSON object")

    def test_a_flag_of_another_type_warns(self):
        for content, shown in (('{"GracefulExit": "1"}', '"1" (a string)'),
                               ('{"GracefulExit": null}', "null (null)"),
                               ('{"GracefulExit": [1]}', "[1] (a list)"),
                               ('{"GracefulExit": {"value": 1}}', '{"value": 1} (an object)'),
                               ('{"GracefulExit": "\\ud800"}', '"\\ud800" (a string)')):
            with self.subTest(content=content):
                self.assert_judged([content], exit=False, warning=f'"GracefulExit" is {shown}')

    def test_a_file_that_cannot_be_used_warns(self):
        path = self.path("graceful_exit.json")
        os.mkdir(path)
        self.assertEqual(self.judge(None)[1], [f"{path} is a directory, not a regular file; "
                                               "ignoring it"])
        os.rmdir(path)
        os.mkfifo(path)  # refused without blocking, though nobody writes to it
        self.assertEqual(self.judge(None)[1], [f"{path} is a fifo, not a regular file; ignoring it"])
        os.unlink(path)
        big = '{"GracefulExit": 1}'.ljust(MIB + 1)
        self.assertEqual(self.judge(big)[1], [f"{path} is larger than {MIB} bytes; ignoring it"])
        self.assertEqual(self.judge(big[:MIB]), (True, []))  # exactly 1 MiB is read
        if os.geteuid() != 0:  # root reads a file of mode 000
            os.chmod(path, 0)
            requested, warnings = self.judge(None)
            self.assertFalse(requested)
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn("cannot be opened", warnings[0])
        # A regular file whose read fails: offset 0 of this process's memory is never mapped.
        watcher = graceful_exit._ControlFile("/proc/self/mem")
        warnings = []
        self.assertFalse(watcher.evaluate(warnings.append))
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("cannot be read", warnings[0])

    def test_one_warning_per_kind_until_the_file_is_valid_or_missing_again(self):
        path = self.path("graceful_exit.json")
        watcher = graceful_exit._ControlFile(path)
        warnings = []

        def step(content):
            if content is None:
                if os.path.isdir(path):
                    os.rmdir(path)
                elif os.path.exists(path):
                    os.unlink(path)
            elif content == "directory":
                os.unlink(path)
                os.mkdir(path)
            else:
                self.write("graceful_exit.json", content)
            before = len(warnings)
            self.assertFalse(watcher.evaluate(warnings.append))
            return len(warnings) - before

        self.assertEqual([step(c) for c in (
            "{", "", "{{{",                                      # invalid JSON (empty too): once
            "[1]", "1",                                          # not an object: once
            '{"GracefulExit": "1"}', '{"GracefulExit": null}',   # a flag of another type: once
            " " * (MIB + 1), "directory", None,                  # unusable: once; then missing
            "{", "[1]", '{"GracefulExit": 0}',                   # missing reset them; then valid
            "{", "{}", "{", '{"GracefulExit": 2}', "{",          # valid (a clear flag) resets
        )], [1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 1])
        self.write("graceful_exit.json", '{"GracefulExit": true}')
        self.assertTrue(watcher.evaluate(warnings.append))
        self.write("graceful_exit.json", "{")
        self.assertFalse(watcher.evaluate(warnings.append))
        self.assertEqual(len(warnings), 10)  # 9 above, and 1 again: the exit request reset them

    def test_changed_follows_the_files_identity(self):
        path = self.path("graceful_exit.json")
        watcher = graceful_exit._ControlFile(path)
        self.assertTrue(watcher.changed())  # the first look always counts
        self.assertFalse(watcher.changed())
        self.write("graceful_exit.json", "{}")
        self.assertTrue(watcher.changed())
        self.assertFalse(watcher.changed())
        self.write("graceful_exit.json", '{"GracefulExit": 1}')
        self.assertTrue(watcher.changed())
        os.chmod(path, 0o600)
        self.assertTrue(watcher.changed())
        os.unlink(path)
        self.assertTrue(watcher.changed())
        self.assertFalse(watcher.changed())


def run_script(test, code, env=None, cwd=None, stderr=None):
    """Runs `code` in a fresh Python with the client importable; returns its stdout, one JSON object
    per line, after checking that it exited 0. `stderr`, a list, receives its lines of stderr."""
    prelude = f"import json, os, sys\nsys.path.insert(0, {support.EXAMPLES!r})\n"
    process = subprocess.run(support.python("-c", prelude + textwrap.dedent(code)),
                             capture_output=True, text=True, env=support.clean_env(**(env or {})),
                             cwd=cwd, timeout=support.GUARD)
    test.assertEqual(process.returncode, 0, process.stderr)
    if stderr is not None:
        stderr.extend(process.stderr.splitlines())
    return [json.loads(line) for line in process.stdout.splitlines()]


class AccessorTests(TemporaryDirectoryTestCase):
    def test_one_rank_per_process(self):
        self.assertEqual(run_script(self, """
            import graceful_exit
            from graceful_exit import Rank, rank
            first = rank()
            print(json.dumps({"same": [rank() is first, Rank() is first, rank(None) is first,
                                       Rank(control_file=None) is first],
                              "control_file": first.control_file}))
        """, cwd=self.dir), [{"same": [True, True, True, True],
                              "control_file": os.path.join(os.path.realpath(self.dir),
                                                           "graceful_exit.json")}])

    def test_a_different_control_file_raises_instead_of_being_ignored(self):
        self.assertEqual(run_script(self, """
            import pathlib
            import graceful_exit
            first = graceful_exit.Rank(control_file="stop.json")
            same = [graceful_exit.rank() is first, graceful_exit.rank("stop.json") is first,
                    graceful_exit.rank(os.path.abspath("stop.json")) is first,
                    graceful_exit.Rank(pathlib.Path("stop.json")) is first]
            errors = []
            for call in (lambda: graceful_exit.rank("other.json"),
                         lambda: graceful_exit.Rank(control_file="other.json"),
                         lambda: graceful_exit.rank("graceful_exit.json")):
                try:
                    call()
                    errors.append(None)
                except ValueError as error:
                    errors.append(str(error))
            print(json.dumps({"same": same, "errors": errors,
                              "still": graceful_exit.rank() is first}))
        """, cwd=self.dir), [{
            "same": [True, True, True, True],
            "errors": [
                f"graceful_exit.rank(control_file={name!r}): this process's Rank already exists "
                f"and watches {os.path.join(os.path.realpath(self.dir), 'stop.json')}; there is "
                "one Rank per process, so call rank() without arguments to get it"
                for name in ("other.json", "other.json", "graceful_exit.json")],
            "still": True}])

    def test_the_default_control_file_matches_itself_and_the_environment(self):
        self.assertEqual(run_script(self, """
            import graceful_exit
            first = graceful_exit.rank()
            try:
                graceful_exit.rank("graceful_exit.json")
                error = None
            except ValueError as e:
                error = str(e)
            print(json.dumps({"same": graceful_exit.rank("from-env.json") is first,
                              "error": error}))
        """, env={"GRACEFUL_CONTROL_FILE": "from-env.json"}, cwd=self.dir), [{
            "same": True,
            "error": "graceful_exit.rank(control_file='graceful_exit.json'): this process's "
                     "Rank already exists and watches "
                     f"{os.path.join(os.path.realpath(self.dir), 'from-env.json')}; there is one "
                     "Rank per process, so call rank() without arguments to get it"}])

    def test_a_control_file_that_cannot_be_used_warns_once_and_never_stops_the_rank(self):
        # End to end through the watcher thread: a file too large to read, replaced by a fifo (one
        # kind of problem: one warning), then by a valid request.
        with open(os.path.join(self.dir, "graceful_exit.json"), "w") as f:
            f.write('{"GracefulExit": 1}'.ljust(MIB + 1))
        stderr = []
        self.assertEqual(run_script(self, """
            import time
            import graceful_exit
            graceful_exit.CONTROL_FILE_POLL = 0.01
            rank = graceful_exit.rank()
            path = rank.control_file
            def boundaries(seconds):
                deadline = time.monotonic() + seconds
                stops = 0
                while time.monotonic() < deadline:
                    stops += rank.should_stop(1)
                    time.sleep(0.005)
                return stops
            results = [boundaries(0.2)]
            os.mkfifo(path + ".tmp")
            os.replace(path + ".tmp", path)
            results.append(boundaries(0.2))
            with open(path + ".tmp", "w") as f:
                f.write('{"GracefulExit": true}')
            os.replace(path + ".tmp", path)
            deadline = time.monotonic() + 10
            while not rank.should_stop(2) and time.monotonic() < deadline:
                time.sleep(0.005)
            results.append(rank.trigger)
            print(json.dumps(results))
        """, cwd=self.dir, stderr=stderr), [[0, 0, "control-file"]])
        path = os.path.join(os.path.realpath(self.dir), "graceful_exit.json")
        self.assertEqual(stderr, [
            f"graceful_exit: {path} is larger than {MIB} bytes; ignoring it",
            f"graceful_exit: {path} requests an exit: stopping at the next step boundary"])


def _can_build_wheels_offline():
    """pip, and setuptools with its own bdist_wheel (70.1 and later) or the wheel package; found
    without importing setuptools, which would patch distutils in this process."""
    find = importlib.util.find_spec
    setuptools = find("setuptools")
    if find("pip") is None or setuptools is None:
        return False
    return find("wheel") is not None or any(
        os.path.exists(os.path.join(folder, "command", "bdist_wheel.py"))
        for folder in setuptools.submodule_search_locations or ())


CAN_BUILD_WHEELS_OFFLINE = _can_build_wheels_offline()


class DistributionTests(TemporaryDirectoryTestCase):
    @unittest.skipUnless(CAN_BUILD_WHEELS_OFFLINE,
                         "building a wheel offline needs pip, and setuptools >= 70.1 or wheel")
    def test_the_wheel_holds_the_client_module_and_not_the_examples(self):
        source = self.path("source")
        shutil.copytree(support.EXAMPLES, source,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        self.assertTrue(os.path.exists(os.path.join(source, "pyproject.toml")))
        process = subprocess.run(
            support.python("-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--no-cache-dir", "-w",
                           self.path("wheels"), source),
            capture_output=True, text=True, timeout=300, cwd=self.dir)
        self.assertEqual(process.returncode, 0, process.stdout + process.stderr)
        (wheel,) = os.listdir(self.path("wheels"))
        self.assertTrue(wheel.startswith("graceful_exit-1.0.0-py3-none-any"), wheel)
        with zipfile.ZipFile(self.path(os.path.join("wheels", wheel))) as archive:
            names = archive.namelist()
            metadata = archive.read("graceful_exit-1.0.0.dist-info/METADATA").decode()
        modules = sorted(name for name in names if not name.startswith("graceful_exit-1.0.0."))
        self.assertEqual(modules, ["graceful_exit.py"])
        self.assertIn("Name: graceful-exit\n", metadata)
        self.assertIn("Version: 1.0.0\n", metadata)
        self.assertIn("Requires-Python: >=3.9\n", metadata)
        self.assertNotIn("Requires-Dist:", metadata)


if __name__ == "__main__":
    unittest.main()
