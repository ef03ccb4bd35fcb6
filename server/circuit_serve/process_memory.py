"""Memory of a process, or of a process and all its descendants, from Linux's /proc.

    status_kib(pid, "VmRSS")                       # {"VmRSS": 626688}
    tree_status_kib(pid, "VmRSS", "RssAnon")       # summed over pid and every descendant

Fields are those of /proc/PID/status, in KiB: VmRSS (resident), RssAnon (the heap: what a leak
grows), VmHWM (peak resident). A served model's tree matters because vLLM may run its engine core
(and the worker) in child processes. Processes that end while being read are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

PROC = Path("/proc")


def status_kib(pid: int | str, *fields: str) -> dict[str, int]:
    """The named /proc/PID/status fields of one process, in KiB (a field it lacks is left out)."""
    out = {}
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[name] = int(value.split()[0])
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children, their children, ...), parents first."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            children[int(fields[1])].append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        tree.append(p)
        todo.extend(c for c in children.get(p, []) if c not in tree)
    return tree


def tree_status_kib(pid: int, *fields: str) -> dict[str, int]:
    """The named status fields summed over `pid` and its descendants, in KiB (0 when none has it)."""
    total = dict.fromkeys(fields, 0)
    for p in descendants(pid):
        try:
            for name, kib in status_kib(p, *fields).items():
                total[name] += kib
        except OSError:
            continue
    return total
