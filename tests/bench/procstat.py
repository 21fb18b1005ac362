"""CPU time and memory of process trees, from /proc (Linux only)."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def tree(roots: list[int]) -> list[int]:
    """The roots and all their live descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children[int(fields[1])].append(int(entry))  # fields[1] is ppid
    seen: list[int] = []
    todo = [pid for pid in roots if _stat(pid) is not None]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(children.get(pid, ()))
    return seen


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of the trees, including children they have already reaped
    (a PostgreSQL backend that exited is counted in its postmaster's cutime)."""
    total = 0
    for pid in tree(roots):
        fields = _stat(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of stat; 12-15 after pid and comm.
            total += sum(int(v) for v in fields[11:15])
    return total / TICK


@dataclass
class Memory:
    rss_mb: float  # resident now, summed over the tree
    peak_rss_mb: float  # each process's high-water mark (VmHWM), summed
    processes: int


def memory(roots: list[int]) -> Memory:
    rss = peak = 0
    pids = tree(roots)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1])
        except OSError:
            continue
    return Memory(rss / 1024, peak / 1024, len(pids))
