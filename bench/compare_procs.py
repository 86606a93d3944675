"""Process trees and machine load, read from /proc, for bench/compare.py.

A `TreeSampler` thread follows the process trees of the products under test every 0.2 s: the
sum of VmRSS (and of Pss, which counts pages shared between forked processes once) over each
tree, its peak, and the CPU time each process used. `MachineLoad` marks the load average and
the CPU busy share of the whole machine at the start and end of each phase, so that a number
measured on a busy machine says so.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def descendants(roots: list[int]) -> list[int]:
    """The roots and every process below them (children of any of their threads)."""
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        try:
            tasks = list((PROC / str(pid) / "task").iterdir())
        except OSError:
            continue  # exited
        seen.append(pid)
        for task in tasks:
            with contextlib.suppress(OSError):  # a thread that just ended
                todo.extend(int(child) for child in (task / "children").read_text().split())
    return seen


def cpu_ticks(pid: int) -> int | None:
    """User plus system clock ticks of one process, or None if it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    return int(fields[11]) + int(fields[12])


def memory_kb(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in kB of one process; zeros if it is gone."""
    try:
        statm = (PROC / str(pid) / "statm").read_text().split()
        rss = int(statm[1]) * PAGE_KB
    except OSError:
        return 0, 0
    pss = 0
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
                break
    except OSError:
        pss = rss
    return rss, pss


@dataclass
class Tree:
    """One product's processes as sampled: the peak of the sums, the CPU ticks last seen per process."""

    name: str
    roots: Callable[[], list[int]]
    extra_cpu: Callable[[], list[int]] | None = None  # processes counted for CPU only (database backends)
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_processes: int = 0
    ticks: dict[int, int] = field(default_factory=dict)
    extra_pids: list[int] = field(default_factory=list)
    extra_seen: set[int] = field(default_factory=set)

    def cpu_seconds(self) -> float:
        return sum(self.ticks.values()) / TICKS


class TreeSampler(threading.Thread):
    """Samples registered trees every `interval` seconds until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(name="tree-sampler", daemon=True)
        self.interval = interval
        self.lock = threading.Lock()
        self.trees: dict[str, Tree] = {}
        self.halt = threading.Event()
        self.samples = 0
        # (time, machine busy jiffies, machine jiffies, this process's CPU seconds,
        #  per tree: (CPU ticks of its processes, of its database backends))
        self.timeline: list[tuple[float, int, int, float, dict[str, tuple[int, int]]]] = []

    def watch(self, tree: Tree) -> Tree:
        with self.lock:
            self.trees[tree.name] = tree
        return tree

    def forget(self, name: str) -> None:
        with self.lock:
            self.trees.pop(name, None)

    def sample(self, *, refresh_extra: bool) -> None:
        with self.lock:
            trees = list(self.trees.values())
        for tree in trees:
            try:
                pids = descendants(tree.roots())
            except Exception:  # noqa: BLE001, S112 (a root that just exited: next sample)
                continue
            rss = pss = 0
            for pid in pids:
                one_rss, one_pss = memory_kb(pid)
                rss, pss = rss + one_rss, pss + one_pss
            if tree.extra_cpu is not None and refresh_extra:
                # The database may be going away at the end: keep the last list.
                with contextlib.suppress(Exception):
                    tree.extra_pids = tree.extra_cpu()
                    tree.extra_seen.update(tree.extra_pids)
            with self.lock:
                tree.peak_rss_kb = max(tree.peak_rss_kb, rss)
                tree.peak_pss_kb = max(tree.peak_pss_kb, pss)
                tree.peak_processes = max(tree.peak_processes, len(pids))
                for pid in [*pids, *tree.extra_pids]:
                    ticks = cpu_ticks(pid)
                    if ticks is not None:
                        tree.ticks[pid] = ticks
        self.samples += 1
        busy, total = machine_cpu()
        with self.lock:
            sums = {name: (sum(t for pid, t in tree.ticks.items() if pid not in tree.extra_seen),
                           sum(t for pid, t in tree.ticks.items() if pid in tree.extra_seen))
                    for name, tree in self.trees.items()}
            self.timeline.append((time.time(), busy, total, sum(os.times()[:2]), sums))

    def run(self) -> None:
        count = 0
        while not self.halt.is_set():
            self.sample(refresh_extra=count % 5 == 0)  # database backends: once a second
            count += 1
            self.halt.wait(self.interval)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)

    def window(self, start: float, end: float, name: str) -> dict[str, float]:
        """Cores used between two wall-clock times: by the whole machine, by tree `name`, by this process,
        and by everything else (other users of the machine), from the samples nearest inside the window."""
        with self.lock:
            inside = [s for s in self.timeline if start <= s[0] <= end and name in s[4]]
        if len(inside) < 2:
            return {}
        (t0, busy0, total0, own0, trees0), (t1, busy1, total1, own1, trees1) = inside[0], inside[-1]
        cpus = os.cpu_count() or 1
        machine = cpus * (busy1 - busy0) / max(1, total1 - total0)
        processes = (trees1[name][0] - trees0[name][0]) / TICKS / (t1 - t0)
        database = (trees1[name][1] - trees0[name][1]) / TICKS / (t1 - t0)
        product = processes + database
        bench = (own1 - own0) / (t1 - t0)
        return {"seconds": t1 - t0, "machine_cores": machine, "product_cores": product,
                "product_process_cores": processes, "product_database_cores": database,
                "benchmark_process_cores": bench, "other_cores": max(0.0, machine - product - bench)}

    def cpu_mark(self, name: str) -> dict[int, int]:
        """The CPU ticks per process of one tree now (after a fresh sample), to diff later."""
        self.sample(refresh_extra=False)
        with self.lock:
            return dict(self.trees[name].ticks)

    def cpu_since(self, name: str, mark: dict[int, int]) -> tuple[float, float]:
        """CPU seconds one tree used since `mark` (processes born since count from zero): its own
        processes', and those counted for CPU only (database backends)."""
        self.sample(refresh_extra=False)
        with self.lock:
            tree = self.trees[name]
            own = extra = 0
            for pid, ticks in tree.ticks.items():
                used = ticks - mark.get(pid, 0)
                if pid in tree.extra_seen:
                    extra += used
                else:
                    own += used
            return own / TICKS, extra / TICKS


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total


@dataclass
class Phase:
    name: str
    started: float
    load_start: tuple[float, float, float]
    cpu_start: tuple[int, int]
    seconds: float = 0.0
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    busy_share: float = 0.0  # of all cores, over the phase

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.name, "seconds": round(self.seconds, 2),
                "loadavg_1min_start": round(self.load_start[0], 2), "loadavg_1min_end": round(self.load_end[0], 2),
                "machine_cpu_busy_percent": round(100 * self.busy_share, 1)}


class MachineLoad:
    """Load average and CPU busy share of the machine per phase of the benchmark."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []

    def start(self, name: str) -> Phase:
        phase = Phase(name=name, started=time.monotonic(), load_start=os.getloadavg(), cpu_start=machine_cpu())
        self.phases.append(phase)
        return phase

    @staticmethod
    def end(phase: Phase) -> Phase:
        busy, total = machine_cpu()
        phase.seconds = time.monotonic() - phase.started
        phase.load_end = os.getloadavg()
        phase.busy_share = (busy - phase.cpu_start[0]) / max(1, total - phase.cpu_start[1])
        return phase
