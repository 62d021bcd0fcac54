"""Commands and processes in the lab's network namespaces: one definition of each helper.

`topology.py` builds the namespaces and starts the services and censors in
them; `vpn_servers.py` starts real servers and clients there. Both run
commands with `ip netns exec`, spawn long-lived processes in a process group
of their own with a log, wait for them to be ready, show the log's tail when
they fail, and stop the whole group. Those helpers live here, and this module
imports no other lab module, so neither of the two needs the other's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

# The services namespace's "lab internet" link, holding every 198.19.x.y
# service address: a dummy, or loopback where the kernel has no dummy driver
# (topology.Lab._internet_device).
INTERNET_IF = "internet"

COMMAND_TIMEOUT = 15.0  # seconds: ip, ss, wg and sysctl answer in milliseconds
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 20

T = TypeVar("T")


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its text output; never raises on its exit code."""
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)


def run_in(namespace: str, argv: Sequence[str], *, input: str | None = None,
           timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`run` inside a namespace."""
    return run(["ip", "netns", "exec", namespace, *argv], input=input, timeout=timeout)


def must(argv: Sequence[str], what: str, error: type[Exception], *, input: str | None = None) -> str:
    """`run`, raising `error` (naming `what`, the command and its complaint) unless it exits 0; its stdout."""
    result = run(argv, input=input)
    if result.returncode != 0:
        raise error(f"{what} failed ({' '.join(argv)}): {(result.stderr or result.stdout).strip()}")
    return result.stdout


def internet_device(namespace: str) -> str:
    """The link that holds the lab-internet addresses in the services namespace `namespace`."""
    return INTERNET_IF if run(["ip", "-n", namespace, "link", "show", INTERNET_IF]).returncode == 0 else "lo"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a process's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(namespace: str, argv: Sequence[str], log_path: Path, *, cwd: Path,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in `namespace`, output appended to `log_path`, in a session (process
    group) of its own, so that `stop_group` ends it and every child it starts together."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=None if env is None else {**os.environ, **env},
        )


def wait_for(ready: Callable[[], T], process: subprocess.Popen[bytes], *, name: str, what: str, timeout: float,
             log_path: Path, error: type[Exception]) -> T:
    """Poll `ready()` until it returns something truthy, and return that. Raise `error`
    with the log's tail if the process exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        if process.poll() is not None:
            raise error(f"{name} exited with {process.returncode} before {what}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise error(f"{name}: no {what} after {timeout:.0f} s:\n{log_tail(log_path)}")
        time.sleep(POLL_INTERVAL)


def process_is_ours(pid: int, marker: str) -> bool:
    """Alive, not a zombie, and its command line names `marker` (our workdir: guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and marker.encode() in cmdline


def stop_group(leader: int, *, grace: float, child: subprocess.Popen[bytes] | None = None,
               marker: str | None = None) -> None:
    """SIGTERM the process group `leader` leads, wait up to `grace` seconds, then SIGKILL it;
    children that outlive the leader go with the group.

    `child` is the leader's Popen when this process started it (it is then
    reaped); without one, `marker` is what its command line must name for it to
    be ours (a pid read from a state file may have been reused), and nothing is
    signalled otherwise, nor after the leader has gone (its pid is then free).
    """
    def gone() -> bool:
        if child is not None:
            return child.poll() is not None
        return marker is None or not process_is_ours(leader, marker)

    if child is None and gone():
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if gone():
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signum)  # started with start_new_session: the leader's pid is the group id
        deadline = time.monotonic() + grace
        while not gone() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
    if child is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signal.SIGKILL)  # what is left of the group once its leader has gone
