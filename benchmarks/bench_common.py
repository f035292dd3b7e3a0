"""What the harness benchmarks share: a fake server's port, CPU clocks and synthetic dialogues.

Imported by `harness_throughput.py` and `judge_throughput.py`, which run as scripts from this
folder (so it is on `sys.path`), in their child processes too.
"""

from __future__ import annotations

import resource
import socket
import time

from safeturn.schema import Dialogue, Message, Sample


def free_port() -> int:
    """A local TCP port nothing listens on, for the fake chat server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(port: int, timeout_s: float = 20.0) -> None:
    """Block until the fake server accepts connections on `port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("fake server did not start")


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Wall and CPU seconds (all threads of this process) of the timed part only."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def bench_samples(n: int, turns: int) -> list[Sample]:
    """`n` harmful dialogues of `turns` short user messages each."""
    return [
        Sample(
            id=f"d{i}",
            source="bench",
            harmful=True,
            dialogue=Dialogue(
                messages=[Message.user(f"dialogue {i}, turn {t}") for t in range(1, turns + 1)]
            ),
        )
        for i in range(n)
    ]
