"""NVIDIA's Multi-Process Service (MPS) for worker processes that share a GPU.

Processes on one GPU are time-sliced: one runs while the others wait. Under MPS their kernels run side by
side on one shared context (BENCHMARKS.md, "Trials per GPU-hour", has what that gives). ``gpu_sharing`` wraps a
run whose workers share GPUs:

- a control daemon already running (the system's, at /tmp/nvidia-mps or at ``CUDA_MPS_PIPE_DIRECTORY``) is used
  as it is, and left running;
- else one is started for the run (``nvidia-cuda-mps-control -d``) with its pipe and log folders private to
  this tool, ``/tmp/search-mps-<uid>/`` (short: the pipes are UNIX sockets, whose paths are limited to 107
  bytes, too short for a study folder deep in a home directory), exported to the workers through
  ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``, and stopped (``echo quit |
  nvidia-cuda-mps-control``) when the run ends: normally, on Ctrl-C or on a failure;
- runs started at the same time on one machine share that daemon: each registers its process id there, and
  the last one to end stops it. A daemon whose runs are all gone (a run killed with SIGKILL cannot stop it)
  is replaced by the next run, and a folder whose daemon is gone is cleaned, so a killed run never breaks the
  next one;
- a tiny CUDA client (``PROBE``) then runs through the daemon on each GPU of the run: MPS can start without
  error and still fail at its first client (a GPU held by another process in exclusive-process mode, a
  server that is not permitted). Where the daemon cannot start or the probe fails, the run goes on without
  MPS and the status line says why; workers are pointed away from a daemon that failed the probe, since a
  client that does reach a broken daemon fails rather than running without it.

``--no-mps`` (``enabled=False``): no daemon is started, and the workers are kept off any running one by an
empty private pipe folder (a CUDA program that finds no daemon there runs without MPS, per NVIDIA's manual).

The status is one line for the run's start-up output: "MPS: on (started for this run)", "MPS: on (already
running)", "MPS: off (nvidia-cuda-mps-control not found)", ...
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import psutil
from filelock import FileLock

from data.environment import restore_environment
from data.processes import alive, started

CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE = Path("/tmp/nvidia-mps")  # where the CUDA driver looks without CUDA_MPS_PIPE_DIRECTORY
ENV_PIPE, ENV_LOG = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
START_TIMEOUT = 10.0  # seconds for `nvidia-cuda-mps-control -d` to return and its daemon to appear
STOP_TIMEOUT = 10.0  # seconds for a daemon to end after `quit`, before it is sent SIGTERM (then SIGKILL)
# One CUDA context on each GPU given as arguments: through MPS when a daemon serves the pipe folder in the
# environment. Exits non-zero, with the driver's message, where MPS cannot serve the client.
PROBE = ("import sys, torch\n"
         "for i in map(int, sys.argv[1:]):\n"
         "    torch.ones(1, device=f'cuda:{i}').add_(1).item()\n")
PROBE_TIMEOUT = 120.0

Probe = Callable[[Sequence[int], dict], "str | None"]  # (GPU indices, environment) -> None, or why it failed


def shared_gpus(devices: Sequence[str]) -> list[int]:
    """The GPU indices that more than one worker of ``devices`` ("cuda:0", "cuda:0", "cpu", ...) uses."""
    uses = Counter(d if ":" in d else f"{d}:0" for d in devices if d.startswith("cuda"))
    return sorted(int(d.split(":")[1]) for d, n in uses.items() if n > 1)


@contextmanager
def gpu_sharing(devices: Sequence[str], enabled: bool = True, root: Path | None = None,
                probe: Probe | None = None) -> Iterator[str | None]:
    """MPS for a run whose workers run on ``devices``: a context manager that yields the status line, or None
    where no GPU has more than one worker (MPS would change nothing). Inside it, ``os.environ`` holds what the
    workers need (started after entering, they inherit it); it is restored on exit."""
    gpus = shared_gpus(devices)
    if not gpus:
        yield None
        return
    if not enabled:
        with bypassed(root) as note:
            yield "MPS: off (--no-mps)" + note
        return
    with mps_session(gpus, root=root, probe=probe) as status:
        yield status


@contextmanager
def mps_session(gpus: Sequence[int], root: Path | None = None, probe: Probe | None = None) -> Iterator[str]:
    """A running MPS control daemon for the duration (see the module's docstring): yields the status line."""
    probe = probe or run_probe
    root = Path(root) if root is not None else default_root()
    saved = {k: os.environ.get(k) for k in (ENV_PIPE, ENV_LOG)}
    session: _Session | None = None
    try:
        existing = running_daemon()
        if existing is not None:
            failure = probe(gpus, _env(existing))
            if failure is None:
                _export(pipe=existing)
                yield "MPS: on (already running)"
            else:
                with bypassed(root) as note:
                    yield f"MPS: off (the running MPS daemon at {existing} failed a test client: {failure})" + note
            return
        if shutil.which(CONTROL) is None:
            yield f"MPS: off ({CONTROL} not found)"
            return
        session = _Session(root)
        how = session.open()
        if how.startswith("off"):  # nothing started, nothing registered
            session = None
            yield f"MPS: {how}"
            return
        failure = probe(gpus, _env(session.pipe, session.log))
        if failure is not None:
            session.close()
            session = None
            with bypassed(root) as note:
                yield f"MPS: off (the MPS server failed a test client: {failure})" + note
            return
        _export(pipe=session.pipe, log=session.log)
        yield f"MPS: on ({how})"
    finally:
        if session is not None:
            session.close()
        restore_environment(saved)


def default_root() -> Path:
    """This user's MPS folder: short, fixed (the next run must find what a killed one left), per user."""
    base = Path("/tmp") if os.access("/tmp", os.W_OK) else Path(tempfile.gettempdir())
    return base / f"search-mps-{os.getuid()}"


def running_daemon() -> Path | None:
    """The pipe folder of an MPS control daemon this tool did not start that this process's CUDA clients would
    reach: at ``CUDA_MPS_PIPE_DIRECTORY`` if set, else the default /tmp/nvidia-mps, with a live daemon behind it
    (a pipe folder left by a daemon that is gone does not count). None when there is none."""
    pipe = Path(os.environ.get(ENV_PIPE) or DEFAULT_PIPE)
    if not (pipe / "control").exists():
        return None
    for daemon_pipe in daemons().values():
        # a daemon of another user (root's, usually) hides its environment: with a control pipe there, take it
        if daemon_pipe == pipe or daemon_pipe is None:
            return pipe
    return None


def daemons() -> dict[int, Path | None]:
    """Live MPS control daemons: process id -> the pipe folder it serves (None where its environment cannot be
    read: another user's process). Found by command line (``pgrep`` would match the server too: the kernel keeps
    only 15 characters of a process name, "nvidia-cuda-mps" for both)."""
    found: dict[int, Path | None] = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        argv = process.info["cmdline"] or []
        if not any(os.path.basename(a) == CONTROL for a in argv[:2]):  # the binary, or a script's interpreter
            continue
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            found[process.pid] = Path(process.environ().get(ENV_PIPE, str(DEFAULT_PIPE)))
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
        except psutil.Error:
            found[process.pid] = None
    return found


def run_probe(gpus: Sequence[int], env: dict) -> str | None:
    """Run ``PROBE`` on ``gpus`` with ``env``: None if it worked, else the last line of its error output."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, *map(str, gpus)], env=env, capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"no answer in {PROBE_TIMEOUT:g} s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit status {done.returncode}")[:200]


def _env(pipe: Path, log: Path | None = None) -> dict:
    env = {**os.environ, ENV_PIPE: str(pipe)}
    if log is not None:
        env[ENV_LOG] = str(log)
    return env


def _export(pipe: Path, log: Path | None = None) -> None:
    os.environ[ENV_PIPE] = str(pipe)
    if log is not None:
        os.environ[ENV_LOG] = str(log)


@contextmanager
def bypassed(root: Path | None = None) -> Iterator[str]:
    """Keep this run's workers off any MPS daemon: while one is running, point them at an empty pipe folder.
    Yields a note for the status line ("" when no daemon is running)."""
    if running_daemon() is None:
        yield ""
        return
    root = Path(root) if root is not None else default_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    empty = Path(tempfile.mkdtemp(prefix="none-", dir=root))
    saved = {k: os.environ.get(k) for k in (ENV_PIPE, ENV_LOG)}
    try:
        _export(pipe=empty)
        yield "; the running MPS daemon is not used"
    finally:
        restore_environment(saved)
        shutil.rmtree(empty, ignore_errors=True)


class _Session:
    """This tool's daemon in ``root`` (pipe/, log/, runs/<pid> for each run using it, a lock file): started
    or joined by ``open``, left (and stopped by the last run) by ``close``."""

    def __init__(self, root: Path) -> None:
        self.root, self.pipe, self.log = root, root / "pipe", root / "log"
        self.runs, self.me = root / "runs", root / "runs" / str(os.getpid())

    @contextmanager
    def _locked(self):
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with FileLock(self.root / "lock"):  # released by the OS if this process dies
            yield

    def _daemon(self) -> int | None:
        return next((pid for pid, pipe in daemons().items() if pipe == self.pipe), None)

    def _live_runs(self) -> list[int]:
        """Other runs using the daemon; the files of runs that are gone (killed) are removed."""
        alive = []
        for entry in self.runs.iterdir() if self.runs.is_dir() else ():
            if entry == self.me:
                continue
            try:  # the process's start time too: a process id can be reused after a run is killed
                same = entry.name.isdigit() and entry.read_text() == started(int(entry.name))
            except OSError:
                same = False
            if same:
                alive.append(int(entry.name))
            else:
                entry.unlink(missing_ok=True)
        return alive

    def open(self) -> str:
        """Start or join the daemon; "started for this run", "shared with another run", or "off (why)"."""
        with self._locked():
            daemon, others = self._daemon(), self._live_runs()
            if daemon is not None and others:
                self._register()
                return "shared with another run"
            replaced = ""
            if daemon is not None:  # left by a run that was killed: replace it, it may be in any state
                self._stop(daemon)
                replaced = "; replaced the one a killed run left"
            for leftover in (self.pipe, self.log):  # a folder whose daemon is gone: clean it
                shutil.rmtree(leftover, ignore_errors=True)
            self.pipe.mkdir(mode=0o700)
            self.log.mkdir(mode=0o700)
            why = self._start()
            if why is not None:
                shutil.rmtree(self.pipe, ignore_errors=True)
                return f"off ({why})"
            self._register()
            return "started for this run" + replaced

    def _register(self) -> None:
        self.runs.mkdir(exist_ok=True)
        self.me.write_text(started(os.getpid()))

    def _start(self) -> str | None:
        output = self.log / "start.out"  # a file, not a pipe: a daemon that keeps its parent's stdout open
        try:                               # would make a captured run wait for it to end
            with open(output, "w") as out:
                done = subprocess.run([CONTROL, "-d"], env=_env(self.pipe, self.log), stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=START_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{CONTROL} -d: {err}"
        if done.returncode != 0:
            message = output.read_text(errors="replace").strip().splitlines()
            return f"{CONTROL} -d failed: {message[-1][:200] if message else f'exit status {done.returncode}'}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:  # -d returns once it has forked; the daemon then makes its pipes
            if self._daemon() is not None and (self.pipe / "control").exists():
                time.sleep(0.2)
                if self._daemon() is not None:  # still there: it did not die at once
                    return None
            time.sleep(0.1)
        log = self.log / "control.log"
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        return "the MPS daemon ended at once" + (f": {last[0][:200]}" if last else "")

    def _stop(self, pid: int) -> None:
        """``quit`` through its pipe; SIGTERM, then SIGKILL, if it is still there after STOP_TIMEOUT."""
        try:
            # its own session: a second Ctrl-C to the terminal's process group cannot cut the stop short
            subprocess.run([CONTROL], input="quit\n", env=_env(self.pipe, self.log), capture_output=True, text=True,
                           timeout=STOP_TIMEOUT, start_new_session=True)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for sig in (15, 9):
            deadline = time.monotonic() + STOP_TIMEOUT
            while alive(pid) and pid in daemons() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not alive(pid) or pid not in daemons():
                return
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return

    def close(self) -> None:
        """Leave; the last run using the daemon stops it and removes its pipe folder."""
        with self._locked():
            self.me.unlink(missing_ok=True)
            if self._live_runs():
                return
            daemon = self._daemon()
            if daemon is not None:
                self._stop(daemon)
            shutil.rmtree(self.pipe, ignore_errors=True)
