"""Helpers shared by the venvfs benchmarks.

Why a loop file system: the root ext4 of the machines these benchmarks were
written on has no journal, and its inode allocator (recently_deleted())
slows file creation down 50-fold for a while after many files were deleted
(700 us per create instead of 13 us, seen with perf). Every benchmark that
creates files would measure that instead of venvfs, so they run on a fresh
ext4 image on the same disk, mounted with -o loop (default mkfs options,
journal on).

Timing rules (the machines are noisy): every competitor is measured in the
same run, rounds interleave the competitors, and tables report medians.
"""
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("VENVFS_BENCH_CACHE", Path.home() / ".cache" / "venvfs-bench"))
VENVFS = os.environ.get("VENVFS_BIN") or shutil.which("venvfs") or str(REPO / "build" / "tools" / "venvfs")
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))

# The "large venv" of the issues: numpy, pandas, scipy, matplotlib, django
# and friends, about 25k files and 600 MB once installed.
BIG_SET = ["numpy", "pandas", "scipy", "matplotlib", "django", "flask", "requests",
           "sympy", "scikit-learn", "pillow"]


def run(args, check=True, env=None, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run([str(a) for a in args], env=env, **kw)
    if check and p.returncode:
        raise SystemExit(f"{' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def timed(args, **kw):
    t = time.perf_counter()
    run(args, **kw)
    return time.perf_counter() - t


def median(xs):
    return statistics.median(xs)


def sync():
    os.sync()


def drop_caches():
    sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def wheelhouse(packages):
    """Download real wheels from PyPI once; later runs are offline."""
    wh = CACHE / "wheels"
    wh.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", wh]
    if run(base + ["--no-index", "--find-links", wh] + packages, check=False).returncode:
        run(base + packages)
    return wh


def make_venv(path, packages, wh):
    run([BASE_PYTHON, "-m", "venv", path])
    if packages:
        run([Path(path) / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wh, *packages])
    return Path(path)


class LoopFs:
    """A fresh ext4 image on the same disk, mounted for the benchmark."""

    def __init__(self, size_gb=24, where=None):
        self.img = Path(where or CACHE) / "bench-ext4.img"
        self.mnt = Path("/mnt/venvfs-bench")

    def __enter__(self):
        if os.geteuid() != 0:
            raise SystemExit("benchmarks need root (loop mount, drop_caches)")
        self.mnt.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mnt):
            run(["umount", "-l", self.mnt])
        self.img.parent.mkdir(parents=True, exist_ok=True)
        if self.img.exists():
            self.img.unlink()
        run(["truncate", "-s", "24G", self.img])
        run(["mkfs.ext4", "-q", "-F", self.img])
        run(["mount", "-o", "loop", self.img, self.mnt])
        return self.mnt

    def __exit__(self, *exc):
        sync()
        run(["umount", self.mnt], check=False)
        self.img.unlink(missing_ok=True)


# A KVM guest's idle driver (cpuidle-haltpoll) polls this long before it
# halts an idle virtual CPU; 0 means it halts at once, so waking that CPU
# again costs an exit to the host. Through /dev/fuse every request a FUSE
# client waits for wakes the daemon's CPU and then its own: the round trip
# is mostly those two wake-ups (over io_uring it stays on the caller's CPU).
# The benchmarks report the setting, and time the round-trip bound cases
# (imports, pip) once more with the kernel's default, 200 us.
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
HALT_POLL_DEFAULT_NS = 200000


def halt_poll_ns():
    """The guest's idle polling in ns, or None if idle is not cpuidle-haltpoll."""
    try:
        if Path("/sys/devices/system/cpu/cpuidle/current_driver").read_text().strip() != "haltpoll":
            return None
        return int(HALT_POLL.read_text())
    except (OSError, ValueError):
        return None


def halt_poll_ab():
    """The extra polling setting to time against, if there is one to try here."""
    ns = halt_poll_ns()
    return HALT_POLL_DEFAULT_NS if ns is not None and ns < HALT_POLL_DEFAULT_NS and os.access(HALT_POLL, os.W_OK) \
        else None


@contextlib.contextmanager
def halt_polling(ns):
    """Run the block with the guest's idle polling at ns (None: as it is)."""
    old = halt_poll_ns()
    if ns is None or old is None:
        yield
        return
    HALT_POLL.write_text(f"{ns}\n")
    try:
        yield
    finally:
        HALT_POLL.write_text(f"{old}\n")


def halt_poll_note(waiter, pair, result):
    """The paragraph under a table with halt-polling rows: who waits for the
    requests, which runs were repeated, and what they measured."""
    return f"""

The machine's virtual CPUs halt as soon as they are idle (guest_halt_poll_ns={halt_poll_ns()}): through /dev/fuse
each request {waiter} waits for costs two wake-ups of halted CPUs (docs/design.md, "Request loop and round
trips"; over io_uring it stays on the caller's CPU). The rows
marked "halt-polling" time {pair} again with the idle driver polling up to the kernel's default 200 us
before it halts (set for those runs only, then restored): {result} under that setting. The targets
below are judged on the machine as it is configured."""


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    hp = halt_poll_ns()
    idle = "" if hp is None else f", idle: cpuidle-haltpoll, guest_halt_poll_ns={hp}"
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, kernel {os.uname().release}{idle}"


def update_doc(section, body):
    """Replace one section of docs/benchmarks.md (between markers)."""
    doc = REPO / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def tree_stats(path):
    files = size = 0
    for dp, dn, fn in os.walk(path):
        for f in fn:
            p = os.path.join(dp, f)
            if not os.path.islink(p):
                files += 1
                size += os.lstat(p).st_size
    return files, size
