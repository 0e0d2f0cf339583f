"""push under faults: SIGKILLed pushes beside a live `kfx serve` under client load; racing pushes.

Every push is a real process running `kfx component push` (forked from a pre-warmed kfx, see
pusher.py, so that 30 pushes fit the time budget) and is killed with SIGKILL at a step of the
copy, the version claim or the models.config rewrite: exactly at the step, or a random few
milliseconds after it. Every other push keeps its artifact root on another filesystem than the
serving base (/dev/shm, when it is one), so push takes its fallback path and stages beside the
versions, inside the very directory the server watches.
"""
from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.components.deploy.test_push import snapshot
from tests.serving.conftest import REPO, ServerProcess, build_keras, write_config

KILLS = 22  # the issue asks for >= 20
X = np.array([[1.0, 2.0, 3.0]], np.float32)
EXPECTED = 6.0  # y = x0 + x1 + x2 for the model built below
MODEL = "m"


class Pushers:
    """The pusher.py process: starts pushes, reports their steps, reaps them."""

    def __init__(self, log_path: Path):
        read, write = os.pipe()
        self._log = open(log_path, "w")
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.components.deploy.pusher", str(write)],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     pass_fds=(write,), text=True)
        os.close(write)
        self.events = collections.defaultdict(list)  # tag -> [step name, ...]
        self._ready = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read_events, args=(read,), daemon=True).start()

    def _read_events(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                tag, index, name = line.decode().rstrip("\n").split(" ", 2)
                with self._cond:
                    assert int(index) == len(self.events[tag]), line
                    self.events[tag].append(name)
                    self._cond.notify_all()

    def _ask(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"pusher exited with {self.proc.wait()}:\n{self.log_path.read_text()[-3000:]}")
        return json.loads(line)

    def ready(self) -> "Pushers":
        """Waits until TensorFlow and kfx are imported (started early, it overlaps other setup)."""
        if not self._ready:
            line = self.proc.stdout.readline()
            assert json.loads(line or "{}").get("ready"), self.log_path.read_text()[-3000:]
            self._ready = True
        return self

    def start(self, tag: str, argv: list[str], hold: int | None = None) -> int:
        return self._ask({"run": argv, "tag": tag, "hold": hold})["pid"]

    def wait(self, pid: int) -> int | str:
        return self._ask({"wait": pid})["status"]

    def step(self, tag: str, index: int, timeout: float = 60.0) -> str | None:
        """The name of step `index` of push `tag` once it is reached; None if not within timeout."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.events[tag]) > index, timeout)
            return self.events[tag][index] if len(self.events[tag]) > index else None

    def first(self, tags, index: int, timeout: float = 60.0) -> str | None:
        """The first of pushes `tags` to reach step `index`; None if none does within timeout."""
        with self._cond:
            self._cond.wait_for(lambda: any(len(self.events[tag]) > index for tag in tags), timeout)
            return next((tag for tag in tags if len(self.events[tag]) > index), None)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def pushers(tmp_path_factory):
    pushers = Pushers(tmp_path_factory.mktemp("pusher") / "pusher.log")
    try:
        yield pushers
    finally:
        pushers.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny SavedModel with a few extra files (more copy steps to land in), blessed."""
    d = tmp_path_factory.mktemp("source")
    model = build_keras(str(d / "model"))
    rng = np.random.default_rng(0)
    os.makedirs(f"{model}/assets.extra")
    for i in range(3):  # files a model ships beside its graph (vocabularies, ...)
        Path(f"{model}/assets.extra/blob-{i}.bin").write_bytes(rng.bytes(64 * 1024))
    for name, record in (("blessing", "blessing.json"), ("infra", "infra_blessing.json")):
        (d / name).mkdir()
        (d / name / record).write_text(json.dumps({"blessed": True, "model": model, "reasons": []}))
    config = d / "pk.yaml"
    config.write_text(json.dumps({"name": "pk", "root": str(d / "runs"), "ingest": {"format": "builtin", "name": "adult"}}))
    return {"model": model, "files": snapshot(Path(model)), "config": str(config),
            "blessing": str(d / "blessing"), "infra": str(d / "infra")}


def push_argv(source, serving: Path, root: Path, model_name: str = MODEL, summary: Path | None = None) -> list[str]:
    argv = ["component", "push", "-c", source["config"], "--no-cache", "--root", str(root),
            "--input", f"model={source['model']}", "--input", f"blessing={source['blessing']}",
            "--input", f"infra_blessing={source['infra']}",
            "--set", f"push.serving_base={serving}", "--set", f"push.model_name={model_name}"]
    return argv + (["--summary-json", str(summary)] if summary else [])


def version_dirs(model_dir: Path) -> list[str]:
    return sorted((p.name for p in model_dir.iterdir() if p.name.isdigit()), key=int)


def assert_serving_consistent(source, serving: Path, names: set[str], checked: set | None = None) -> None:
    """models.config parses and lists exactly `names`; every version directory is complete.

    Versions in `checked` (a version appears by one rename and is never written again) are
    skipped; the ones checked now are added to it.
    """
    checked = set() if checked is None else checked
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    text = (serving / "models.config").read_text()
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    entries = {c.name: c.base_path for c in config.model_config_list.config}
    assert entries == {n: str(serving / n) for n in names}, text
    for name in names:
        for version in set(version_dirs(serving / name)) - {v for n, v in checked if n == name}:
            assert snapshot(serving / name / version) == source["files"], f"{name}/{version} is not complete"
            checked.add((name, version))


def other_filesystem_dir(near: Path) -> Path | None:
    """A temporary directory on another filesystem than `near` (/dev/shm), or None."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != near.stat().st_dev:
        return Path(tempfile.mkdtemp(prefix="kfx-push-", dir=shm))
    return None


class Clients:
    """Threads predicting continuously, plus one polling GetModelStatus; they record everything."""

    def __init__(self, target: str, clients: int = 3):
        from kfx.serving.client import ServingClient

        self.stop = threading.Event()
        self.ok, self.failed, self.answers = 0, [], set()
        self.available, self.load_errors = set(), set()
        self._lock = threading.Lock()
        self._client = ServingClient
        self.threads = [threading.Thread(target=self._predict, args=(target,)) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._watch, args=(target,)))
        for thread in self.threads:
            thread.start()

    def _predict(self, target: str) -> None:
        with self._client(target, retries=0, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    y = client.predict(MODEL, {"x": X})["y"].item()
                    with self._lock:
                        self.ok += 1
                        self.answers.add(y)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    with self._lock:
                        self.failed.append(repr(exc))

    def _watch(self, target: str) -> None:
        with self._client(target, retries=0, timeout=30) as client:
            while not self.stop.wait(0.1):
                for version, state, code, message in client.status(MODEL):
                    if state == "AVAILABLE":
                        self.available.add(version)
                    if code:
                        self.load_errors.add((version, code, message))

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def test_sigkilled_pushes_never_expose_a_partial_version_to_a_live_server(pushers, source, tmp_path):
    from kfx.serving.client import ServingClient

    serving = tmp_path / "serving"
    model_dir = serving / MODEL
    model_dir.mkdir(parents=True)
    config = write_config(str(serving / "models.config"), [(MODEL, str(model_dir), "")])
    server = ServerProcess(tmp_path, f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                           "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0")
    shm = other_filesystem_dir(tmp_path)
    roots = [tmp_path / "runs"] + ([shm / "runs"] if shm else [])
    rng = random.Random(12)
    clients = None
    try:
        pushers.ready()
        # One undisturbed push per root: version 1 (the server waits for it) and the steps to aim at.
        steps = []
        for i, root in enumerate(roots):
            pid = pushers.start(f"calibrate{i}", push_argv(source, serving, root))
            assert pushers.wait(pid) == 0, pushers.log_path.read_text()[-3000:]
            steps.append(pushers.events[f"calibrate{i}"])
        assert steps[0][-2:] == ["config", "config-replace"] and steps[0][-3].startswith("claim")
        server.wait_serving()
        clients = Clients(server.target)

        kills, completed, missed, attempt, checked, partial_left = [], 0, 0, 0, set(), 0
        # Where to kill: exactly at a step, or a random 0-3 ms after letting it run.
        plan = [("copy", "exact"), ("config", "random"), ("copy", "random"), ("config", "exact"), ("copy", "exact"),
                ("claim", "random")]
        while len(kills) < KILLS and attempt < 2 * KILLS:  # bounded: a kill can miss a finished push
            attempt += 1
            root_index = attempt % len(roots)
            tag, argv = f"push{attempt}", push_argv(source, serving, roots[root_index])
            if attempt % 6 == 0:  # pushes keep working between the kills
                before = version_dirs(model_dir)
                assert pushers.wait(pushers.start(tag, argv)) == 0, pushers.log_path.read_text()[-3000:]
                assert len(version_dirs(model_dir)) == len(before) + 1
                completed += 1
                assert_serving_consistent(source, serving, {MODEL}, checked)
                continue
            phase, mode = plan[(attempt - attempt // 6) % len(plan)]
            target = rng.choice([i for i, s in enumerate(steps[root_index]) if s.split(" ")[0].startswith(phase)])
            pid = pushers.start(tag, argv, hold=target)
            assert pushers.step(tag, target) is not None, f"{tag} never reached step {target}"
            if mode == "random":
                os.kill(pid, signal.SIGUSR1)
                time.sleep(rng.uniform(0, 0.003))
            os.kill(pid, signal.SIGKILL)
            status = pushers.wait(pid)
            if status == 0:  # it finished before the kill arrived
                missed += 1
            else:
                assert status == -signal.SIGKILL, status
                kills.append((tag, mode, root_index))
                partial_left += any(model_dir.glob(".staging-*"))  # inside the directory the server watches
            assert_serving_consistent(source, serving, {MODEL}, checked)  # after every kill

        # After all that, a push still lands (staging beside the versions, clearing what killed
        # pushes left there) and the server moves to it.
        pid = pushers.start("final", push_argv(source, serving, roots[-1]))
        assert pushers.wait(pid) == 0
        final = int(version_dirs(model_dir)[-1])
        with ServingClient(server.target, retries=0) as client:
            client.wait_until_available(MODEL, version=final, timeout=90)
        time.sleep(0.5)  # a few more requests on the final version
    finally:
        if clients:
            clients.finish()
        server.stop()
        if shm:
            shutil.rmtree(shm, ignore_errors=True)

    assert_serving_consistent(source, serving, {MODEL})
    landed = collections.Counter(pushers.events[tag][-1].split(" ")[0] for tag, _, _ in kills)
    print(f"\npush kills: {len(kills)} (landed in copy {landed['copy']}, claim {landed['claim']}, config "
          f"{landed['config'] + landed['config-replace']}; exact {sum(m == 'exact' for _, m, _ in kills)}, "
          f"random {sum(m == 'random' for _, m, _ in kills)}; cross-filesystem {sum(r == 1 for _, _, r in kills)}); "
          f"kills that came after the push finished: {missed}; completed pushes: {completed + len(roots) + 1}; "
          f"versions on disk: {len(version_dirs(model_dir))}, seen AVAILABLE: {len(clients.available)}; "
          f"requests: {clients.ok} ok, {len(clients.failed)} failed; "
          f"kills that left a partial staging dir beside the versions: {partial_left}")
    assert len(kills) >= 20
    assert landed["copy"] >= 5 and landed["config"] + landed["config-replace"] >= 5, landed
    assert clients.failed == [], clients.failed[:5]
    assert clients.ok > 0 and clients.answers == {EXPECTED}
    assert clients.load_errors == set(), clients.load_errors  # no version failed to load: none was partial
    assert clients.available <= {int(v) for v in version_dirs(model_dir)}  # all complete (checked above)
    assert final in clients.available
    log = server.log()
    assert "failed" not in log.lower().replace("failed call to cuinit", ""), log[-3000:]
    assert not list(serving.glob(".models.config.tmp-*"))  # the next push clears a killed push's temp file
    assert not list(model_dir.glob(".staging-*"))


def test_two_pushes_racing_for_the_next_version_both_land(pushers, source, tmp_path):
    serving, root = tmp_path / "serving", tmp_path / "runs"
    pushers.ready()
    assert pushers.wait(pushers.start("race-first", push_argv(source, serving, root))) == 0
    claim = pushers.events["race-first"].index(f"claim {serving / MODEL / '1'}")
    # Both copy, then stop just before renaming their staging directory to the next version.
    pids = {tag: pushers.start(tag, push_argv(source, serving, root, summary=tmp_path / f"{tag}.json"), hold=claim)
            for tag in ("race-a", "race-b")}
    assert {pushers.step(tag, claim) for tag in pids} == {f"claim {serving / MODEL / '2'}"}  # the same number
    for pid in pids.values():
        os.kill(pid, signal.SIGUSR1)
    assert {tag: pushers.wait(pid) for tag, pid in pids.items()} == {"race-a": 0, "race-b": 0}
    versions = {tag: json.loads((tmp_path / f"{tag}.json").read_text())["components"]["push"]["metrics"]["pushed"]["version"]
                for tag in pids}
    assert sorted(versions.values()) == [2, 3], versions
    assert version_dirs(serving / MODEL) == ["1", "2", "3"]
    assert_serving_consistent(source, serving, {MODEL})


def test_two_models_pushed_at_once_both_stay_in_models_config(pushers, source, tmp_path):
    serving, root = tmp_path / "serving", tmp_path / "runs"
    pushers.ready()
    assert pushers.wait(pushers.start("config-first", push_argv(source, serving, root, model_name="a"))) == 0
    replace = pushers.events["config-first"].index("config-replace")
    # Both read models.config; stop each just before it renames its new models.config into place.
    pids = {tag: pushers.start(tag, push_argv(source, serving, root, model_name=tag), hold=replace)
            for tag in ("b", "c")}
    for tag in pids:
        assert pushers.step(tag, replace - 1) == "config"
    first = pushers.first(list(pids), replace)  # however long the lock holder's read + write takes
    assert first is not None, dict(pushers.events)
    # Both (unsafe: each would drop the other's entry) or one (the other waits for the lock).
    held = [tag for tag in pids if tag == first or pushers.step(tag, replace, timeout=3) is not None]
    for tag in held:
        os.kill(pids[tag], signal.SIGUSR1)
    for tag in set(pids) - set(held):
        assert pushers.step(tag, replace) == "config-replace"
        os.kill(pids[tag], signal.SIGUSR1)
    assert {tag: pushers.wait(pid) for tag, pid in pids.items()} == {"b": 0, "c": 0}
    assert_serving_consistent(source, serving, {"a", "b", "c"})
