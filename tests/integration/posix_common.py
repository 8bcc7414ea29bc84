"""The POSIX suite's fixtures and helpers (tests/integration/test_posix_*.py).

The suite checks POSIX semantics of an env's writable layer, as a
file-system reviewer checks them. Every test works on a fresh env (a
`venvfs clone` of one imported venv that has `six`, pip and setuptools), so
each starts from store content only, and checks the same operation on both
kinds of entries an env has:

  store-backed ("lower") entries: site-packages/six.py (a store object
      shared by every env), the pip and six-*.dist-info directories, the
      rendered templates bin/pip and bin/activate, the symlink bin/python;
  entries made in the writable layer (HOME/envs/NAME/upper/).

It is in files by subject, each failure path checked for its exact errno:

  test_posix_io.py       opening, reading, writing, truncating, allocating;
  test_posix_names.py    unlink, rmdir, mkdir, links, symlinks, special
                         files, long names, open files that lose their
                         name, directory listings;
  test_posix_rename.py   rename and renameat2;
  test_posix_modes.py    modes, owners and permissions;
  test_posix_times.py    timestamps and inode numbers;
  test_posix_xattr.py    extended attributes;
  test_posix_sharing.py  locks, concurrent processes and threads, isolation
                         of envs and of the store.

Deliberate limitations the daemon documents (docs/design.md, "What differs
from ext4") are asserted as they are: link of a store file is EXDEV,
RENAME_EXCHANGE of a directory with store content is EXDEV, RENAME_WHITEOUT
is EINVAL, a merged directory's st_nlink is 1, a store file's st_ino changes
on copy-up (as overlayfs without xino), and setattr through an fd opened
read-only on a store file before it was copied up is ESTALE.

One store and one mount serve every file of the suite (a mount costs a
second to take down): each test_posix_*.py names this module in
`pytest_plugins`, so pytest registers its fixtures once, for the whole
session (a session fixture imported into each file would be one per file).
The daemon's health is checked around every test, and a dead daemon is
reported on the test that killed it and replaced for the next. Set
VENVFS_TEST_MOUNT_ARGS=--libfuse-mt to run the suite on libfuse's
multithreaded loop. conftest.py has pytest rewrite this module's asserts,
as it does a test file's.
"""
import ctypes
import errno
import hashlib
import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import Mount, Venvfs, make_venv


@pytest.fixture(scope="session")
def six_venv(tmp_path_factory, wheelhouse):
    return make_venv(tmp_path_factory.mktemp("posix-src") / "src", ["six"], wheelhouse)


def _alive(m):
    # statfs always reaches the daemon; a stat could be answered from the kernel's cache
    try:
        os.statvfs(m.path)
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def fsmount(tmp_path_factory, six_venv):
    top = tmp_path_factory.mktemp("posix")
    vf = Venvfs(top / "store")
    # directories of shared modes, as a project's venv may have
    for name, mode in (("group-dir", 0o2775), ("world-tmp", 0o1777)):
        (six_venv / name).mkdir(exist_ok=True)
        os.chmod(six_venv / name, mode)
    vf("import", six_venv, "--name", "base", "-q")
    m = Mount(vf, top / "mnt")
    m.mount()
    yield m
    m.umount()


class Env:
    """One fresh env of the suite's mount, and where its layers live."""

    def __init__(self, m, name, six_venv):
        self.m = m
        self.name = name
        self.root = m.path / name
        rel = next(six_venv.glob("lib/python3.*/site-packages")).relative_to(six_venv)
        self.sp = self.root / rel
        self.native = six_venv
        self.native_sp = six_venv / rel
        self.six = self.sp / "six.py"
        self.six_data = (self.native_sp / "six.py").read_bytes()
        self.distinfo = next(self.sp.glob("six-*.dist-info"))
        self.home = m.venvfs.home
        self.upper = self.home / "envs" / name / "upper"
        self.work = self.home / "envs" / name / "work"

    def clone(self, suffix="-other"):
        """A clone of the pristine base env, made now."""
        name = self.name[: 60 - len(suffix)] + suffix
        self.m.venvfs("clone", "base", name)
        return self.m.path / name / self.sp.relative_to(self.root)


_serial = iter(range(1, 10000))


@pytest.fixture
def env(request, fsmount, six_venv):
    if not _alive(fsmount):
        fsmount.umount()
        fsmount.mount()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name.removeprefix("test_")).strip("-")
    name = f"{next(_serial):03d}-{slug}"[:50]
    fsmount.venvfs("clone", "base", name)
    old_umask = os.umask(0o022)
    yield Env(fsmount, name, six_venv)
    os.umask(old_umask)
    if not _alive(fsmount):
        tail = "\n".join(fsmount.log().splitlines()[-15:])
        pytest.fail(f"the venvfs daemon died during this test; its log ends:\n{tail}")


def fails(err, fn, *args, **kw):
    """fn(*args) must fail with exactly errno err."""
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno == err, (
            f"{fn.__name__}{tuple(str(a) for a in args)}: expected {errno.errorcode[err]}, "
            f"got {errno.errorcode.get(e.errno, e.errno)} ({e})")
        return e
    raise AssertionError(f"{fn.__name__}{tuple(str(a) for a in args)}: expected {errno.errorcode[err]}, succeeded")


def write_file(path, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = os.open(path, flags, mode)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def listing(d):
    names = os.listdir(d)
    assert len(names) == len(set(names)), f"duplicate names in {d}: {sorted(names)}"
    assert not [n for n in names if n.startswith(".fuse_hidden")], names
    return set(names)


def tree(root):
    """Relative path -> (type, mode, size, sha256 / link target) for everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", st.st_mode)
            else:
                out[rel] = ("f", st.st_mode, st.st_size, hashlib.sha256(read(p)).hexdigest())
    return out


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def renameat2(old, new, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


def child(code, *args):
    """A Python child process that prints 'ready' when set up, then waits for a line on stdin."""
    p = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
    return p


def finish(p):
    out, err = p.communicate("go\n", timeout=30)
    assert p.returncode == 0, err
    return out
