"""data/processes.py: whether a process is alive (a zombie is not), and its start time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from data.processes import alive, started


def test_this_process_is_alive_and_has_a_fixed_start_time():
    assert alive(os.getpid())
    assert started(os.getpid()) == started(os.getpid()) != ""


def test_an_ended_process_is_not_alive_even_before_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while alive(child.pid) and time.monotonic() < deadline:  # a zombie until wait() below
        time.sleep(0.05)
    assert not alive(child.pid)
    child.wait()
    assert not alive(child.pid) and started(child.pid) == ""


def test_a_number_that_is_no_process_id_is_left_alone():
    assert alive(2**80)  # not a process id: whatever names it is not removed
