"""MPS for workers sharing a GPU (search/processes/mps.py).

This machine has no GPU and no NVIDIA driver, so the MPS control daemon cannot run here. The tests run the
real code against a stand-in ``nvidia-cuda-mps-control`` (a shell script put first on PATH) that behaves
like the real one where search/processes/mps.py depends on it: ``-d`` returns at once and leaves a background daemon
process (with the binary's name in its command line and the pipe folder in its environment) that makes a
``control`` pipe in ``CUDA_MPS_PIPE_DIRECTORY``; ``echo quit | nvidia-cuda-mps-control`` ends it. It records
every call, so the tests see what was started and stopped, with which folders. The no-binary path runs for
real, and one test (skipped here) starts the real daemon on a CUDA machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from search.processes import mps

ROOT = Path(__file__).resolve().parent.parent

FAKE = r"""#!/bin/sh
# stand-in for nvidia-cuda-mps-control (tests/test_mps.py)
echo "$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >> "$FAKE_MPS_CALLS"
case "$1" in
  -d)
    case "$FAKE_MPS_MODE" in
      refuse) echo "Error: not permitted to start the MPS control daemon" >&2; exit 1;;
      die) exit 0;;
    esac
    sh "$0" --serve </dev/null >/dev/null 2>&1 &
    exit 0;;
  --serve)
    echo $$ > "$CUDA_MPS_PIPE_DIRECTORY/fake.pid"
    mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"
    while :; do
      if read line < "$CUDA_MPS_PIPE_DIRECTORY/control" && [ "$line" = quit ]; then break; fi
    done
    rm -f "$CUDA_MPS_PIPE_DIRECTORY/control" "$CUDA_MPS_PIPE_DIRECTORY/fake.pid"
    exit 0;;
  *)
    pid=$(cat "$CUDA_MPS_PIPE_DIRECTORY/fake.pid" 2>/dev/null)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "Cannot find MPS control daemon process" >&2; exit 1
    fi
    read line
    echo "$line" > "$CUDA_MPS_PIPE_DIRECTORY/control";;
esac
"""

SHARED = ["cuda:0", "cuda:0"]  # two workers on GPU 0


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system MPS daemon in sight: this test's pipe folder for the driver's default lookup."""
    monkeypatch.setenv(mps.ENV_PIPE, str(tmp_path / "no-system-daemon"))
    monkeypatch.delenv(mps.ENV_LOG, raising=False)
    monkeypatch.setattr(mps, "START_TIMEOUT", 2.0)
    monkeypatch.setattr(mps, "STOP_TIMEOUT", 2.0)
    return tmp_path


@pytest.fixture
def fake(isolated, monkeypatch):
    """The stand-in binary first on PATH; returns the file its calls are recorded in."""
    bin_dir = isolated / "bin"
    bin_dir.mkdir()
    script = bin_dir / mps.CONTROL
    script.write_text(FAKE)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    calls = isolated / "calls.txt"
    calls.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_CALLS", str(calls))
    yield calls
    for pid, pipe in mps.daemons().items():  # never leave a stand-in daemon behind
        if pipe is not None and str(pipe).startswith(str(isolated)):
            os.kill(pid, signal.SIGKILL)


def _calls(calls: Path) -> list[str]:
    return [line.split(" pipe=")[0] for line in calls.read_text().splitlines()]


def _ours(root: Path) -> list[int]:
    return [pid for pid, pipe in mps.daemons().items() if pipe == root / "pipe"]


def _no_probe(gpus, env):
    return None


def test_without_the_binary_the_run_goes_on_without_mps(isolated, monkeypatch):
    monkeypatch.setenv("PATH", str(isolated / "empty"))  # nvidia-cuda-mps-control is nowhere
    before = dict(os.environ)
    with mps.gpu_sharing(SHARED, root=isolated / "mps", probe=_no_probe) as status:
        assert status == "MPS: off (nvidia-cuda-mps-control not found)"
        assert dict(os.environ) == before  # nothing exported to the workers
    assert dict(os.environ) == before


def test_no_status_where_no_gpu_is_shared(isolated):
    for devices in (["cuda:0", "cuda:1"], ["cpu", "cpu"], ["cuda:0"]):
        with mps.gpu_sharing(devices, root=isolated / "mps", probe=_no_probe) as status:
            assert status is None
    assert mps.shared_gpus(["cuda:1", "cuda:0", "cuda:1", "cuda", "cuda:0"]) == [0, 1]
    # the default folder is short: the daemon's sockets there must fit a UNIX socket path (107 bytes)
    assert len(str(mps.default_root() / "pipe" / "control")) < 60


def test_a_daemon_is_started_for_the_run_exported_to_workers_and_stopped(fake, isolated):
    root = isolated / "mps"
    probed = []
    with mps.gpu_sharing(SHARED, root=root, probe=lambda gpus, env: probed.append((gpus, env[mps.ENV_PIPE]))) as status:
        assert status == "MPS: on (started for this run)"
        assert os.environ[mps.ENV_PIPE] == str(root / "pipe") and os.environ[mps.ENV_LOG] == str(root / "log")
        assert len(_ours(root)) == 1
        # a worker started now (spawned, like search/running/workers.py's) sees the folders
        seen = subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{mps.ENV_PIPE}'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert seen == str(root / "pipe")
        assert probed == [([0], str(root / "pipe"))]  # the test client ran through the new daemon
    assert _ours(root) == []
    assert _calls(fake) == ["-d", "--serve", ""]  # started, ran, told to quit
    assert os.environ[mps.ENV_PIPE] == str(isolated / "no-system-daemon") and mps.ENV_LOG not in os.environ
    assert not (root / "pipe").exists()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_the_daemon_is_stopped_on_ctrl_c_or_a_failure(fake, isolated, error):
    root = isolated / "mps"
    with pytest.raises(error):
        with mps.gpu_sharing(SHARED, root=root, probe=_no_probe) as status:
            assert status.startswith("MPS: on") and _ours(root)
            raise error()
    assert _ours(root) == []
    assert _calls(fake)[-1] == ""  # the quit


def _hold(root: Path, ready: Path) -> subprocess.Popen:
    """Another `search run` (a process) inside an MPS session until killed or told to end (stdin closed)."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from search.processes import mps
        with mps.gpu_sharing(["cuda:0", "cuda:0"], root=Path({str(root)!r}), probe=lambda g, e: None) as status:
            Path({str(ready)!r}).write_text(status)
            sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert ready.exists(), "the holding process did not start its session"
    return process


def test_a_daemon_left_by_a_killed_run_is_replaced(fake, isolated):
    root = isolated / "mps"
    killed = _hold(root, isolated / "ready")
    assert (isolated / "ready").read_text() == "MPS: on (started for this run)"
    left = _ours(root)
    assert len(left) == 1
    killed.send_signal(signal.SIGKILL)  # no chance to stop its daemon
    killed.wait(10)
    assert _ours(root) == left  # still running, its run gone
    with mps.gpu_sharing(SHARED, root=root, probe=_no_probe) as status:
        assert status == "MPS: on (started for this run; replaced the one a killed run left)"
        fresh = _ours(root)
        assert len(fresh) == 1 and fresh != left
    assert _ours(root) == []
    assert [p.name for p in (root / "runs").iterdir()] == []  # the killed run's entry is gone too


def test_a_stale_folder_without_a_daemon_does_not_break_the_next_run(fake, isolated):
    root = isolated / "mps"
    (root / "pipe").mkdir(parents=True)
    (root / "pipe" / "control").write_text("")  # what a daemon killed with SIGKILL leaves
    (root / "pipe" / "fake.pid").write_text("999999")
    (root / "runs").mkdir()
    (root / "runs" / "999999").write_text("1")  # a run that is gone
    with mps.gpu_sharing(SHARED, root=root, probe=_no_probe) as status:
        assert status == "MPS: on (started for this run)"
        assert len(_ours(root)) == 1
    assert _ours(root) == [] and not (root / "runs" / "999999").exists()


def test_runs_at_the_same_time_share_the_daemon_and_the_last_one_stops_it(fake, isolated):
    root = isolated / "mps"
    first = _hold(root, isolated / "ready")
    daemon = _ours(root)
    with mps.gpu_sharing(SHARED, root=root, probe=_no_probe) as status:
        assert status == "MPS: on (shared with another run)"
        assert _ours(root) == daemon
    assert _ours(root) == daemon  # the first run still uses it
    first.communicate(b"", timeout=60)  # ends normally: the last one out
    assert first.returncode == 0
    assert _ours(root) == []
    assert _calls(fake).count("-d") == 1


@pytest.mark.parametrize("mode, reason", [
    ("refuse", "MPS: off (nvidia-cuda-mps-control -d failed: Error: not permitted to start the MPS control daemon)"),
    ("die", "MPS: off (the MPS daemon ended at once)")])
def test_where_the_daemon_cannot_start_one_line_says_so(fake, isolated, monkeypatch, mode, reason):
    monkeypatch.setenv("FAKE_MPS_MODE", mode)
    before = dict(os.environ)
    with mps.gpu_sharing(SHARED, root=isolated / "mps", probe=_no_probe) as status:
        assert status == reason
        assert dict(os.environ) == before


def test_a_daemon_whose_server_fails_a_test_client_is_stopped_and_not_used(fake, isolated):
    root = isolated / "mps"
    with mps.gpu_sharing(SHARED, root=root, probe=lambda gpus, env: "all CUDA-capable devices are busy") as status:
        assert status == "MPS: off (the MPS server failed a test client: all CUDA-capable devices are busy)"
        assert _ours(root) == []
        assert os.environ[mps.ENV_PIPE] == str(isolated / "no-system-daemon")


def _start_other_daemon(pipe: Path) -> None:
    """A daemon someone else started (the system's), at ``pipe``."""
    pipe.mkdir()
    subprocess.run([mps.CONTROL, "-d"], env={**os.environ, mps.ENV_PIPE: str(pipe)}, check=True)
    deadline = time.monotonic() + 10
    while not (pipe / "control").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_running_daemon_is_used_and_left_running(fake, isolated, monkeypatch):
    system = isolated / "system-mps"
    _start_other_daemon(system)
    monkeypatch.setenv(mps.ENV_PIPE, str(system))
    with mps.gpu_sharing(SHARED, root=isolated / "mps", probe=_no_probe) as status:
        assert status == "MPS: on (already running)"
        assert os.environ[mps.ENV_PIPE] == str(system)
    assert [p for p in mps.daemons().values() if p == system]  # not ours to stop
    assert _calls(fake).count("-d") == 1 and "" not in _calls(fake)


def test_no_mps_keeps_the_workers_off_a_running_daemon(fake, isolated, monkeypatch):
    system = isolated / "system-mps"
    _start_other_daemon(system)
    monkeypatch.setenv(mps.ENV_PIPE, str(system))
    with mps.gpu_sharing(SHARED, enabled=False, root=isolated / "mps", probe=_no_probe) as status:
        assert status == "MPS: off (--no-mps); the running MPS daemon is not used"
        empty = Path(os.environ[mps.ENV_PIPE])
        assert empty != system and empty.is_dir() and not any(empty.iterdir())  # CUDA finds no daemon there
    assert os.environ[mps.ENV_PIPE] == str(system) and not empty.exists()
    monkeypatch.setenv(mps.ENV_PIPE, str(isolated / "nothing-here"))
    with mps.gpu_sharing(SHARED, enabled=False, root=isolated / "mps", probe=_no_probe) as status:
        assert status == "MPS: off (--no-mps)"
    assert _calls(fake).count("-d") == 1  # only the system's


@pytest.mark.skipif(shutil.which(mps.CONTROL) is None or not Path("/dev/nvidiactl").exists(),
                    reason="needs an NVIDIA GPU and nvidia-cuda-mps-control: run on the GPU machine")
def test_a_real_daemon_serves_the_workers_and_is_stopped(tmp_path, monkeypatch):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.delenv(mps.ENV_PIPE, raising=False)
    if mps.running_daemon() is not None:
        pytest.skip("an MPS daemon already runs on this machine")
    root = Path(f"/tmp/search-mps-test-{os.getpid()}")
    try:
        with mps.gpu_sharing(SHARED, root=root) as status:  # the real probe: a CUDA client through the daemon
            assert status == "MPS: on (started for this run)", status
            servers = subprocess.run([mps.CONTROL], input="get_server_list\n", capture_output=True, text=True,
                                     env=dict(os.environ), timeout=30).stdout.split()
            assert servers, "the probe's client started no MPS server"
        assert _ours(root) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)
