"""Peak resident memory of this process and of its whole process tree, read from /proc (Linux).

A locally started Ray (ray.init) is a child of the driver: GCS, raylet, Ray Data and Train worker
processes all sit in the driver's tree, so the tree's peak is the job's peak. Ray worker
processes are told apart by their title (``ray::...``).

Sums over processes use PSS (proportional set size, /proc/<pid>/smaps_rollup): every Ray process
that touches an object in the shared-memory object store has those pages in its RSS, so an RSS sum
counts the store once per reader (a 5M-row streaming epoch: each Packer and Train worker showed
1-3 GB of RssShmem). PSS splits each shared page among its users, so the sum is the memory used."""
from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages divided among their users); RSS where the kernel has no
    smaps_rollup (before Linux 4.14)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return rss_bytes(pid)


def is_ray_worker(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


def peak_rss_self() -> int:
    """VmHWM of this process (its peak since start), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def niceness(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


class TreeRssSampler:
    """Samples the memory of a process tree (``root``, default this process) every ``interval`` s on
    a thread; ``peaks()`` gives the largest values seen, bytes: "root" (RSS of the root process
    alone), "tree" (PSS summed over the tree) and "workers" (PSS summed over its Ray worker
    processes); plus the Ray workers' niceness. Sampled, so a spike shorter than ``interval`` can
    be missed."""

    def __init__(self, interval: float = 0.5, root: int | None = None):
        self.interval, self.root, self.tree, self.workers, self.root_rss = interval, root or os.getpid(), 0, 0, 0
        self.worker_nice: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        pids = process_tree(self.root)
        pss = {p: pss_bytes(p) for p in pids}
        workers = [p for p in pids if is_ray_worker(p)]
        self.tree = max(self.tree, sum(pss.values()))
        self.root_rss = max(self.root_rss, rss_bytes(self.root))
        self.workers = max(self.workers, sum(pss[p] for p in workers))
        self.worker_nice |= {n for n in map(niceness, workers) if n is not None}

    def peaks_mb(self) -> dict[str, float]:
        """{"root", "tree", "workers"} peaks in MiB (root: VmHWM when the root is this process)."""
        root = peak_rss_self() if self.root == os.getpid() else self.root_rss
        return {"root": root / 2**20, "tree": self.tree / 2**20, "workers": self.workers / 2**20}
