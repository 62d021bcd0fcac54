"""lab.netns: the process helpers topology and vpn_servers share (no namespace needed)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from wallwatch.lab import netns


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_for_file(path: Path) -> str:
    for _ in range(200):
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def test_stop_group_ends_the_leader_and_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    # The child ignores SIGTERM (an ignored signal stays ignored across exec) and outlives its leader.
    leader = subprocess.Popen(["sh", "-c", f"(trap '' TERM; exec sleep 60) & echo $! > {child_pid}; wait"],
                              start_new_session=True)
    child = int(_wait_for_file(child_pid))
    try:
        netns.stop_group(leader.pid, grace=2.0, child=leader)
        assert leader.poll() is not None
        for _ in range(100):
            if not _alive(child):
                break
            time.sleep(0.02)
        assert not _alive(child)
    finally:
        subprocess.run(["kill", "-9", str(child)], capture_output=True, check=False)
        leader.kill()
        leader.wait()


def test_a_pid_whose_command_line_lacks_the_marker_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # Popen returns after fork; the child's command line is `sleep 60` only once it has exec'd.
        deadline = time.monotonic() + 5
        while b"sleep" not in Path(f"/proc/{other.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not netns.process_is_ours(other.pid, str(tmp_path))
        netns.stop_group(other.pid, grace=0.2, marker=str(tmp_path))
        assert other.poll() is None  # not ours: untouched
        assert netns.process_is_ours(other.pid, "sleep")
        netns.stop_group(other.pid, grace=2.0, marker="sleep")
        assert other.wait(timeout=5) is not None
    finally:
        other.kill()
        other.wait()


def test_wait_for_says_the_process_exited_with_its_log_tail(tmp_path: Path) -> None:
    log_path = tmp_path / "x.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(["sh", "-c", "for i in $(seq 1 30); do echo line$i; done; exit 3"],
                                   stdout=log, stderr=subprocess.STDOUT)
    with pytest.raises(RuntimeError, match=r"(?s)x exited with 3 before ready.*line30") as caught:
        netns.wait_for(lambda: False, process, name="x", what="ready", timeout=10, log_path=log_path, error=RuntimeError)
    assert "line10\n" not in str(caught.value)  # only the tail
    assert netns.wait_for(lambda: "yes", process, name="x", what="ready", timeout=1, log_path=log_path,
                          error=RuntimeError) == "yes"


def test_wait_for_times_out_while_the_process_lives(tmp_path: Path) -> None:
    process = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(ValueError, match="sleeper: no socket after 0 s"):
            netns.wait_for(lambda: None, process, name="sleeper", what="socket", timeout=0.2,
                           log_path=tmp_path / "missing.log", error=ValueError)
    finally:
        process.kill()
        process.wait()
    assert netns.log_tail(tmp_path / "missing.log") == "(no log)"


def test_must_names_the_command_and_its_complaint() -> None:
    assert netns.must(["sh", "-c", "echo fine"], "saying fine", RuntimeError) == "fine\n"
    with pytest.raises(KeyError, match=r"failing failed \(sh -c echo nope >&2; exit 1\): nope"):
        netns.must(["sh", "-c", "echo nope >&2; exit 1"], "failing", KeyError)
