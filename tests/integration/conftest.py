"""Shared fixtures for the venvfs integration tests.

Everything here uses real things: the venvfs binary from the build, real
venvs made by the real interpreter, real wheels from PyPI (downloaded once
into the build directory's cache, reused offline afterwards).

Environment (set by tests/meson.build):
  VENVFS_BIN         the venvfs binary
  VENVFS_TEST_CACHE  a cache directory for wheels
  VENVFS_TEST_MOUNT_ARGS  extra `venvfs mount` options for every mount
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# The POSIX suite's fixtures and helpers (test_posix_*.py import them): their
# asserts explained on failure as a test file's are (registered before the
# first import of the module)
pytest.register_assert_rewrite("posix_common")

BIN = os.environ.get("VENVFS_BIN") or str(Path(__file__).resolve().parents[2] / "build" / "tools" / "venvfs")
CACHE = Path(os.environ.get("VENVFS_TEST_CACHE") or Path(tempfile.gettempdir()) / "venvfs-test-cache")

# The interpreter venvs are made with: the real one behind this pytest.
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))

# Packages the tests install. Pinned loosely; whatever pip picks is cached.
WHEELS = ["requests", "numpy", "flask", "six"]


def run(args, check=True, **kw):
    """Run a command, capturing text output; fail with its output shown."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    p = subprocess.run([str(a) for a in args], **kw)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


@pytest.fixture
def home(tmp_path):
    """An empty store."""
    h = tmp_path / "store"
    return h


class Venvfs:
    def __init__(self, home):
        self.home = home

    def __call__(self, *args, check=True, **kw):
        env = dict(os.environ)
        env["VENVFS_HOME"] = str(self.home)
        return run([BIN, *args], check=check, env=env, **kw)

    def du(self):
        import json

        return json.loads(self("store", "du", "--json").stdout)


@pytest.fixture
def venvfs(home):
    return Venvfs(home)


@pytest.fixture(scope="session")
def wheelhouse():
    """A directory of real wheels from PyPI (downloaded once, then offline)."""
    wh = CACHE / "wheels"
    wh.mkdir(parents=True, exist_ok=True)
    stamp = wh / ".complete"
    if not stamp.exists():
        base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", wh]
        p = run(base + ["--no-index", "--find-links", wh] + WHEELS, check=False)
        if p.returncode != 0:
            run(base + WHEELS)
        stamp.write_text("ok\n")
    return wh


def make_venv(path, packages=(), wheelhouse=None, with_pip=True):
    """python -m venv, then pip install packages from the local wheelhouse."""
    args = [BASE_PYTHON, "-m", "venv"]
    if not with_pip:
        args.append("--without-pip")
    run(args + [path])
    if packages:
        run([Path(path) / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
             "--find-links", wheelhouse, *packages])
    return Path(path)


def kernel_has_passthrough():
    """FUSE passthrough: Linux 6.9+, as root (fs/passthrough.c)."""
    rel = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    return rel >= (6, 9) and os.geteuid() == 0


def tree_listing(root):
    """Every entry under root: (relative path, type, mode, size, link target, content hash)."""
    import hashlib

    out = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            kind = oct(st.st_mode)[:-4]
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", oct(st.st_mode & 0o7777))
            elif p.is_fifo():
                out[rel] = ("fifo", oct(st.st_mode & 0o7777))
            elif p.is_socket():
                out[rel] = ("socket", oct(st.st_mode & 0o7777))
            elif p.is_file():
                out[rel] = ("file", oct(st.st_mode & 0o7777), st.st_size,
                            hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = (kind,)
    return out


def assert_same_tree(a, b):
    ta, tb = tree_listing(a), tree_listing(b)
    missing = sorted(set(ta) - set(tb))
    extra = sorted(set(tb) - set(ta))
    differ = sorted(k for k in set(ta) & set(tb) if ta[k] != tb[k])
    assert not missing and not extra and not differ, (
        f"trees differ: missing {missing[:10]}, extra {extra[:10]}, "
        f"differ {[(k, ta[k], tb[k]) for k in differ[:5]]}"
    )


def store_counts(home):
    """Objects, packages, envs, temp files actually on disk."""
    def count(d, pred=lambda p: p.is_file()):
        d = Path(d)
        return sum(1 for p in d.rglob("*") if pred(p)) if d.exists() else 0

    return {
        "objects": count(home / "objects"),
        "packages": count(home / "packages"),
        "envs": len([p for p in (home / "envs").iterdir() if not p.name.startswith(".")])
        if (home / "envs").exists() else 0,
        "tmp": count(home / "tmp"),
    }


# FUSE over io_uring (Linux 6.14+): the daemon takes it by default, where
# the kernel has it (it sets the fuse module's enable_uring for its own mount
# and puts it back). The *-devfuse and *-mt suites mount with --no-uring or
# --libfuse-mt: /dev/fuse. Every other mount must then be on io_uring, so a
# silent fall-back fails the run. The switch starts off, as on a fresh machine.
URING_PARAM = Path("/sys/module/fuse/parameters/enable_uring")


def expect_uring(args):
    return URING_PARAM.exists() and os.geteuid() == 0 and "--no-uring" not in args and "--libfuse-mt" not in args


@pytest.fixture(scope="session", autouse=True)
def fuse_uring_switch():
    if not URING_PARAM.exists() or os.geteuid() != 0:  # (only root may set it)
        yield
        return
    before = URING_PARAM.read_text().strip()
    URING_PARAM.write_text("N")
    try:
        yield
    finally:
        URING_PARAM.write_text(before)


class Mount:
    """A store, a mount point, and the daemon serving it."""

    def __init__(self, venvfs, where):
        self.venvfs = venvfs
        self.path = where
        self.path.mkdir(parents=True, exist_ok=True)
        self.mounted = False

    def mount(self, *extra):
        # VENVFS_TEST_MOUNT_ARGS: extra mount options for a whole run
        # (tests/meson.build runs the mount suite again with --libfuse-mt)
        extra = (*os.environ.get("VENVFS_TEST_MOUNT_ARGS", "").split(), *extra)
        self.venvfs("mount", self.path, *extra)
        self.mounted = True
        os.listdir(self.path)  # INIT is answered (and the transport chosen) at the first request
        want = "io_uring" if expect_uring(extra) else "/dev/fuse"
        assert self.stats()["transport"] == want, self.log()[-2000:]
        return self

    def umount(self):
        if self.mounted:
            self.venvfs("umount", self.path, check=False)
            subprocess.run(["fusermount3", "-u", "-q", "-z", str(self.path)], capture_output=True)
            self.mounted = False

    def pid(self):
        pidfile = next((self.venvfs.home / "run").glob("mount-*.pid"))
        return int(pidfile.read_text().split()[0])

    def stats(self):
        out = self.venvfs("stats", self.path).stdout
        d = {}
        for line in out.splitlines():
            parts = line.split()
            if parts[0] == "op":
                d[parts[1]] = int(parts[3])
                d[parts[1] + ".errors"] = int(parts[5])
            elif len(parts) == 2:
                d[parts[0]] = parts[1]
        return d

    def log(self):
        return (self.venvfs.home / "log" / "mount.log").read_text()

    def assert_no_sanitizer_report(self):
        """The daemon's stderr goes to its log: a sanitizer build reports there."""
        log = self.log() if (self.venvfs.home / "log" / "mount.log").exists() else ""
        bad = [l for l in log.splitlines() if "Sanitizer" in l or "runtime error:" in l]
        assert not bad, "the daemon's log has a sanitizer report:\n" + log[-6000:]


@pytest.fixture
def mnt(tmp_path, venvfs):
    m = Mount(venvfs, tmp_path / "mnt")
    yield m
    m.umount()
    m.assert_no_sanitizer_report()
