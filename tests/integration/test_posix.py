"""POSIX semantics of an env's writable layer, as a file-system reviewer checks them.

Every test works on a fresh env (a `venvfs clone` of one imported venv that
has `six`, pip and setuptools), so each starts from store content only, and
checks the same operation on both kinds of entries an env has:

  store-backed ("lower") entries: site-packages/six.py (a store object
      shared by every env), the pip and six-*.dist-info directories, the
      rendered templates bin/pip and bin/activate, the symlink bin/python;
  entries made in the writable layer (HOME/envs/NAME/upper/).

What is covered, with the exact errno of every failure path:
  - open/creat: O_CREAT|O_EXCL (EEXIST), O_TRUNC on a store file (copy-up,
    truncated), O_APPEND, O_RDWR without truncation, write then read back,
    pwrite beyond EOF (holes), truncate/ftruncate grow and shrink,
    posix_fallocate, st_size and st_blocks, fsync/fdatasync (files and
    directories), mmap, O_DIRECT, O_TMPFILE, copy_file_range and sendfile,
    the wrong file type (EISDIR, ENOTDIR), a byte-exact copy-up of the
    largest store file;
  - unlink (lookup ENOENT afterwards, gone from the listing, the name made
    again is a fresh empty file, the store's version never comes back),
    unlink of a directory (EISDIR), rmdir of non-empty directories including
    ones whose entries are only in the store (ENOTEMPTY), rmdir of a store
    directory emptied entry by entry, rm -rf, rmdir of a file (ENOTDIR),
    mkdir of an existing name (EEXIST), names re-used with another type;
  - rename: to a new name, over a file (atomic replace), store files and
    whole store directories (content and subtree intact, old name gone,
    renamed back, kept across a remount), directory over a non-empty
    (ENOTEMPTY) or empty directory, file over directory (EISDIR), directory
    over file (ENOTDIR), into its own subdirectory (EINVAL), two links of
    one file, renameat2 RENAME_NOREPLACE (EEXIST), RENAME_EXCHANGE (files
    of every kind, directories of the writable layer; EXDEV for a directory
    with store content, documented), RENAME_WHITEOUT (EINVAL), the old name of a
    renamed store directory re-used, an open fd, a directory fd and the cwd
    surviving a rename, rename and mkdir/create in the mount's root (EPERM);
  - hard links (st_nlink, st_ino, writes seen through both names; store
    files answer EXDEV, documented), symlinks, readlink (EINVAL), FIFOs,
    device nodes, unix sockets, 255/256-byte names (ENAMETOOLONG);
  - chmod, chown (as root), utimensat (os.utime with ns, UTIME_NOW,
    touch -d, on symlinks), and the timestamp rules: a write updates mtime
    and ctime, chmod/chown only ctime, creating, removing and renaming
    entries update their directories' mtime and ctime; the sticky bit on
    files; modes exactly the caller's under any umask, and store directories'
    (setgid, sticky, group-writable) across copy-up and rename; directory
    link counts; user.* and trusted.* xattrs (copy-up to set one; the layer's
    marker never shows); fallocate; reopening with O_NOFOLLOW (sqlite, tar,
    cp -a); st_ino across copy-up, rename and remount;
  - flock and fcntl byte-range locks between two processes (EWOULDBLOCK);
  - unlinked open files (the fd keeps working, no .fuse_hidden* entry, the
    parent can be removed), a rename over a file another fd has open;
  - readdir after 500 creates and unlinks (no loss, no duplicates, right
    d_type), and while entries are unlinked during the listing;
  - isolation: writes in one env never show in a clone holding the same
    package; store objects are never modified (hashed before and after,
    `venvfs store verify`); a reader holding a store file open while
    another process opens it for writing (the reader keeps the old
    content: its fd is the store's file, the writer gets the env's own
    copy); two fds and two processes writing one file; four processes
    copying up and appending to one store file at once; eight threads
    creating, renaming and unlinking in shared directories.

Deliberate limitations the daemon documents (docs/design.md, "What differs
from ext4") are asserted as they are: link of a store file is EXDEV,
RENAME_EXCHANGE of a directory with store content is EXDEV, RENAME_WHITEOUT
is EINVAL, a merged directory's st_nlink is 1, a store file's st_ino changes
on copy-up (as overlayfs without xino), and setattr through an fd opened
read-only on a store file before it was copied up is ESTALE.

One store and one mount serve the whole module (a mount costs a second to
take down); the daemon's health is checked around every test, and a dead
daemon is reported on the test that killed it and replaced for the next.
Set VENVFS_TEST_MOUNT_ARGS=--libfuse-mt to run it on libfuse's
multithreaded loop.
"""
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Mount, Venvfs, make_venv, run

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

TICK = 0.03  # longer than the host file system's timestamp granularity


# ---- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def six_venv(tmp_path_factory, wheelhouse):
    return make_venv(tmp_path_factory.mktemp("posix-src") / "src", ["six"], wheelhouse)


def _alive(m):
    # statfs always reaches the daemon; a stat could be answered from the kernel's cache
    try:
        os.statvfs(m.path)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
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
    """One fresh env of the module's mount, and where its layers live."""

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


# ---- creating and opening ---------------------------------------------------------------


def test_ioctl_on_files_is_enotty(env):
    """isatty() on every open() (Python's io) is an ioctl the kernel forwards:
    a store file and a writable-layer file answer ENOTTY, as files on disk do."""
    import termios
    (env.root / "mine.txt").write_text("x")
    for p in (env.sp / "six.py", env.root / "mine.txt"):
        fd = os.open(p, os.O_RDONLY)
        try:
            fails(errno.ENOTTY, fcntl.ioctl, fd, termios.TCGETS, bytes(64))
            assert not os.isatty(fd)
        finally:
            os.close(fd)


def test_o_excl_creates_new_file_then_eexist(env):
    f = env.root / "new.txt"
    fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    st = os.stat(f)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 0
    fails(errno.EEXIST, os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert (env.upper / "new.txt").is_file()
    fd = os.open(env.sp / "new.py", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # in a store directory
    os.close(fd)
    fails(errno.EEXIST, os.open, env.sp / "new.py", os.O_CREAT | os.O_EXCL | os.O_RDWR)


@pytest.mark.parametrize("what", ["six.py", "pip", "bin/pip", "bin/python", "lib64"])
def test_o_excl_on_store_entry_is_eexist(env, what):
    p = env.sp / what if what in ("six.py", "pip") else env.root / what
    fails(errno.EEXIST, os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    if what == "six.py":
        assert read(p) == env.six_data


def test_open_missing_without_o_creat_is_enoent(env):
    fails(errno.ENOENT, os.open, env.sp / "missing.py", os.O_RDONLY)
    fails(errno.ENOENT, os.open, env.sp / "missing.py", os.O_WRONLY)
    fails(errno.ENOENT, os.open, env.sp / "nodir" / "x", os.O_CREAT | os.O_WRONLY)


def test_open_wrong_file_type(env):
    fails(errno.EISDIR, os.open, env.sp / "pip", os.O_WRONLY)
    fails(errno.EISDIR, os.open, env.sp / "pip", os.O_RDWR | os.O_CREAT)
    fails(errno.ENOTDIR, os.open, env.six, os.O_RDONLY | os.O_DIRECTORY)
    fails(errno.ENOTDIR, os.stat, env.six / "x")
    fails(errno.ENOTDIR, os.open, env.six / "x", os.O_CREAT | os.O_WRONLY)
    fails(errno.ENOTDIR, os.mkdir, env.root / "pyvenv.cfg" / "x")


def test_o_creat_without_excl_on_store_file_keeps_content(env):
    fd = os.open(env.six, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"#")
    os.close(fd)
    assert read(env.six) == b"#" + env.six_data[1:]
    assert stat.S_IMODE(os.stat(env.six).st_mode) == 0o644  # O_CREAT's mode is for new files only


def test_o_trunc_on_store_file_copies_up_truncated(env):
    other = env.clone()
    fd = os.open(env.six, os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"new\n")
    os.close(fd)
    assert read(env.six) == b"new\n" and os.stat(env.six).st_size == 4
    assert (env.upper / env.six.relative_to(env.root)).read_bytes() == b"new\n"
    assert read(other / "six.py") == env.six_data
    assert (env.native_sp / "six.py").read_bytes() == env.six_data


def test_o_trunc_on_template_file(env):
    act = env.root / "bin" / "activate"
    assert str(env.root) in act.read_text()
    with open(act, "w") as f:
        f.write("echo hi\n")
    assert act.read_text() == "echo hi\n"
    fd = os.open(act, os.O_RDWR | os.O_TRUNC)
    assert os.read(fd, 100) == b""
    os.close(fd)
    assert os.stat(act).st_size == 0


def test_o_rdwr_on_store_file_reads_original_then_overwrites(env):
    fd = os.open(env.six, os.O_RDWR)
    assert os.read(fd, 100) == env.six_data[:100]
    os.pwrite(fd, b"XYZ", 1000)
    assert os.pread(fd, 10, 998) == env.six_data[998:1000] + b"XYZ" + env.six_data[1003:1008]
    os.close(fd)
    assert read(env.six) == env.six_data[:1000] + b"XYZ" + env.six_data[1003:]


def test_o_append_on_upper_file_with_two_fds(env):
    f = env.root / "log.txt"
    write_file(f, b"start\n")
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    b = os.open(f, os.O_WRONLY | os.O_APPEND)
    os.lseek(a, 0, os.SEEK_SET)
    os.write(a, b"a\n")
    os.write(b, b"b\n")
    os.write(a, b"c\n")
    os.close(a)
    os.close(b)
    assert read(f) == b"start\na\nb\nc\n"


def test_o_append_on_store_file_keeps_the_original_first(env):
    fd = os.open(env.six, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"# appended\n")
    os.close(fd)
    assert read(env.six) == env.six_data + b"# appended\n"
    assert os.stat(env.six).st_size == len(env.six_data) + 11


def test_write_then_read_back_1mib(env):
    data = os.urandom((1 << 20) + 12345)
    f = env.root / "blob"
    write_file(f, data)
    assert read(f) == data
    fd = os.open(f, os.O_RDONLY)
    assert os.pread(fd, 7, 500000) == data[500000:500007]
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
        assert m[:] == data
    os.close(fd)
    assert (env.upper / "blob").read_bytes() == data


def test_pwrite_beyond_eof_leaves_a_hole(env):
    f = env.root / "sparse"
    fd = os.open(f, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"head")
    assert os.pwrite(fd, b"tail", 1 << 20) == 4
    st = os.fstat(fd)
    assert st.st_size == (1 << 20) + 4
    assert os.pread(fd, 16, 4) == b"\0" * 16
    assert os.pread(fd, 100, (1 << 20) - 2) == b"\0\0tail"
    assert st.st_blocks * 512 < (1 << 20), f"the hole takes space: st_blocks {st.st_blocks}"
    os.close(fd)
    assert read(f) == b"head" + b"\0" * ((1 << 20) - 4) + b"tail"


def test_pwrite_beyond_eof_on_store_file(env):
    n = len(env.six_data)
    fd = os.open(env.six, os.O_WRONLY)
    os.pwrite(fd, b"!", n + 100)
    os.close(fd)
    assert read(env.six) == env.six_data + b"\0" * 100 + b"!"


def test_truncate_and_ftruncate_grow_and_shrink_upper_file(env):
    f = env.root / "t"
    write_file(f, b"0123456789")
    os.truncate(f, 4)
    assert read(f) == b"0123" and os.stat(f).st_size == 4
    os.truncate(f, 8)
    assert read(f) == b"0123\0\0\0\0"
    fd = os.open(f, os.O_RDWR)
    os.ftruncate(fd, 2)
    assert os.fstat(fd).st_size == 2 and os.stat(f).st_size == 2
    os.ftruncate(fd, 5000)
    assert os.pread(fd, 10000, 0) == b"01" + b"\0" * 4998
    os.ftruncate(fd, 0)
    assert os.pread(fd, 10, 0) == b""
    os.close(fd)
    assert os.stat(f).st_size == 0


def test_truncate_store_file_by_path_grow_and_shrink(env):
    other = env.clone()
    n = len(env.six_data)
    os.truncate(env.six, n + 10)
    assert read(env.six) == env.six_data + b"\0" * 10
    os.truncate(env.six, 10)
    assert read(env.six) == env.six_data[:10] and os.stat(env.six).st_size == 10
    assert read(other / "six.py") == env.six_data


def test_ftruncate_store_file_through_rdwr_fd(env):
    fd = os.open(env.six, os.O_RDWR)
    os.ftruncate(fd, 100)
    assert os.fstat(fd).st_size == 100
    assert os.pread(fd, 200, 0) == env.six_data[:100]
    os.close(fd)
    assert read(env.six) == env.six_data[:100]


def test_st_size_and_st_blocks_follow_writes(env):
    f = env.root / "sized"
    fd = os.open(f, os.O_CREAT | os.O_WRONLY)
    assert os.fstat(fd).st_size == 0 and os.fstat(fd).st_blocks == 0
    os.write(fd, b"x" * 100000)
    os.fsync(fd)
    for st in (os.fstat(fd), os.stat(f)):
        assert st.st_size == 100000
        assert st.st_blocks * 512 >= 100000
    os.write(fd, b"y")
    assert os.stat(f).st_size == 100001
    os.close(fd)
    # a store file reports blocks for its size too
    st = os.stat(env.six)
    assert st.st_size == len(env.six_data) and st.st_blocks * 512 >= st.st_size


def test_fsync_and_fdatasync_return_zero(env):
    f = env.root / "synced"
    fd = os.open(f, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"data")
    assert os.fsync(fd) is None and os.fdatasync(fd) is None
    os.close(fd)
    fd = os.open(env.six, os.O_RDONLY)  # a store file
    assert os.fsync(fd) is None and os.fdatasync(fd) is None
    os.close(fd)
    fd = os.open(env.six, os.O_RDWR)  # copied up by this open
    assert os.fsync(fd) is None and os.fdatasync(fd) is None
    os.close(fd)
    for d in (env.root, env.sp, env.sp / "pip"):  # the rename-then-fsync-the-directory idiom
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        assert os.fsync(fd) is None
        os.close(fd)


def test_o_direct_aligned_write_and_read(env):
    f = env.root / "direct"
    try:
        fd = os.open(f, os.O_CREAT | os.O_RDWR | os.O_DIRECT)
    except OSError as e:
        assert e.errno == errno.EINVAL  # a file system may refuse O_DIRECT at open, nowhere else
        return
    buf = mmap.mmap(-1, 4096)
    buf.write(b"d" * 4096)
    try:
        assert os.pwrite(fd, buf, 0) == 4096
        back = mmap.mmap(-1, 4096)
        assert os.preadv(fd, [back], 0) == 4096 and back[:] == buf[:]
    finally:
        os.close(fd)
    assert read(f) == b"d" * 4096


def test_posix_fallocate_extends_files(env):
    f = env.root / "alloc"
    fd = os.open(f, os.O_CREAT | os.O_RDWR)
    os.write(fd, b"abc")
    os.posix_fallocate(fd, 0, 10000)
    assert os.fstat(fd).st_size == 10000 and os.pread(fd, 5, 0) == b"abc\0\0"
    os.close(fd)
    n = len(env.six_data)
    fd = os.open(env.six, os.O_RDWR)
    os.posix_fallocate(fd, 0, n + 4096)
    os.close(fd)
    assert read(env.six) == env.six_data + b"\0" * 4096


def test_o_tmpfile_is_refused_or_works(env):
    try:
        fd = os.open(env.root, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        assert e.errno == errno.EOPNOTSUPP, errno.errorcode.get(e.errno)
        return
    os.write(fd, b"tmp")
    os.link(f"/proc/self/fd/{fd}", env.root / "linked", follow_symlinks=True)
    os.close(fd)
    assert read(env.root / "linked") == b"tmp"


def test_mmap_shared_write_reaches_the_file(env):
    f = env.root / "mapped"
    write_file(f, b"\0" * 8192)
    fd = os.open(f, os.O_RDWR)
    with mmap.mmap(fd, 8192) as m:
        m[0:5] = b"hello"
        m[4096:4100] = b"page"
        m.flush()
    os.close(fd)
    d = read(f)
    assert d[:5] == b"hello" and d[4096:4100] == b"page" and len(d) == 8192
    # a store file mapped read-only shows its content
    fd = os.open(env.six, os.O_RDONLY)
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
        assert m[:] == env.six_data
    os.close(fd)


def test_copy_file_range_and_sendfile_from_store_file(env):
    src = os.open(env.six, os.O_RDONLY)
    dst = os.open(env.root / "copy1", os.O_CREAT | os.O_WRONLY)
    n = len(env.six_data)
    done = 0
    while done < n:
        k = os.copy_file_range(src, dst, n - done)
        assert k > 0
        done += k
    os.close(dst)
    shutil.copyfile(env.six, env.root / "copy2")  # sendfile
    os.close(src)
    assert read(env.root / "copy1") == env.six_data == read(env.root / "copy2")


# ---- unlink, rmdir, mkdir ----------------------------------------------------------------


def test_unlink_upper_file_then_enoent_and_recreate_is_empty(env):
    f = env.root / "gone"
    write_file(f, b"content")
    os.unlink(f)
    fails(errno.ENOENT, os.stat, f)
    fails(errno.ENOENT, os.open, f, os.O_RDONLY)
    assert "gone" not in listing(env.root)
    fails(errno.ENOENT, os.unlink, f)
    fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    assert os.fstat(fd).st_size == 0 and os.read(fd, 10) == b""
    os.close(fd)
    assert not (env.upper / "gone").exists() or (env.upper / "gone").stat().st_size == 0


def test_unlink_store_file_hides_it_and_recreate_is_fresh(env):
    other = env.clone()
    os.unlink(env.six)
    fails(errno.ENOENT, os.stat, env.six)
    fails(errno.ENOENT, os.lstat, env.six)
    assert "six.py" not in listing(env.sp)
    fails(errno.ENOENT, os.unlink, env.six)
    fd = os.open(env.six, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    assert os.read(fd, 10) == b""
    os.write(fd, b"mine")
    os.close(fd)
    assert read(env.six) == b"mine" and stat.S_IMODE(os.stat(env.six).st_mode) == 0o600
    assert "six.py" in listing(env.sp)
    assert read(other / "six.py") == env.six_data


def test_unlink_copied_up_store_file_does_not_bring_the_original_back(env):
    with open(env.six, "ab") as f:
        f.write(b"#changed\n")
    os.unlink(env.six)
    fails(errno.ENOENT, os.stat, env.six)
    assert "six.py" not in listing(env.sp)
    fails(errno.ENOENT, os.open, env.six, os.O_RDONLY)


def test_unlink_lower_symlink_and_template(env):
    os.unlink(env.root / "bin" / "python3")
    os.unlink(env.root / "bin" / "pip")
    names = listing(env.root / "bin")
    assert "python3" not in names and "pip" not in names and "python" in names
    fails(errno.ENOENT, os.lstat, env.root / "bin" / "python3")
    os.symlink("python", env.root / "bin" / "python3")
    assert os.readlink(env.root / "bin" / "python3") == "python"


def test_unlink_of_a_directory_is_eisdir(env):
    fails(errno.EISDIR, os.unlink, env.sp / "pip")
    os.mkdir(env.root / "d")
    fails(errno.EISDIR, os.unlink, env.root / "d")
    assert (env.sp / "pip" / "__init__.py").is_file() and (env.root / "d").is_dir()


def test_rmdir_nonempty_upper_dir_is_enotempty(env):
    os.makedirs(env.root / "a" / "b")
    fails(errno.ENOTEMPTY, os.rmdir, env.root / "a")
    write_file(env.root / "a" / "b" / "f", b"x")
    fails(errno.ENOTEMPTY, os.rmdir, env.root / "a" / "b")
    os.unlink(env.root / "a" / "b" / "f")
    os.rmdir(env.root / "a" / "b")
    os.rmdir(env.root / "a")
    fails(errno.ENOENT, os.stat, env.root / "a")


def test_rmdir_store_dir_with_only_store_entries_is_enotempty(env):
    fails(errno.ENOTEMPTY, os.rmdir, env.distinfo)
    fails(errno.ENOTEMPTY, os.rmdir, env.sp / "pip")
    fails(errno.ENOTEMPTY, os.rmdir, env.sp)
    # all but one entry deleted: still not empty
    names = sorted(os.listdir(env.distinfo))
    for n in names[1:]:
        os.unlink(env.distinfo / n)
    fails(errno.ENOTEMPTY, os.rmdir, env.distinfo)
    assert listing(env.distinfo) == {names[0]}


def test_rmdir_store_dir_after_deleting_all_its_entries(env):
    d = env.distinfo
    for n in os.listdir(d):
        os.unlink(d / n)
    assert listing(d) == set()
    os.rmdir(d)
    fails(errno.ENOENT, os.stat, d)
    fails(errno.ENOENT, os.stat, d / "METADATA")
    assert d.name not in listing(env.sp)
    fails(errno.ENOENT, os.rmdir, d)


def test_rm_rf_store_tree_then_mkdir_same_name_is_empty(env):
    other = env.clone()
    run(["rm", "-rf", env.sp / "pip"])
    fails(errno.ENOENT, os.stat, env.sp / "pip")
    fails(errno.ENOENT, os.stat, env.sp / "pip" / "_internal" / "__init__.py")
    assert "pip" not in listing(env.sp)
    os.mkdir(env.sp / "pip")
    assert listing(env.sp / "pip") == set()
    fails(errno.ENOENT, os.stat, env.sp / "pip" / "__init__.py")
    write_file(env.sp / "pip" / "__init__.py", b"")
    assert listing(env.sp / "pip") == {"__init__.py"}
    assert len(os.listdir(other / "pip")) > 3


def test_rmdir_of_a_file_is_enotdir(env):
    fails(errno.ENOTDIR, os.rmdir, env.six)
    write_file(env.root / "f", b"")
    fails(errno.ENOTDIR, os.rmdir, env.root / "f")
    fails(errno.ENOTDIR, os.rmdir, env.root / "lib64")  # a symlink to a directory
    fails(errno.ENOENT, os.rmdir, env.root / "missing")
    assert read(env.six) == env.six_data


def test_mkdir_of_an_existing_name_is_eexist(env):
    os.mkdir(env.root / "d")
    write_file(env.root / "f", b"")
    for p in (env.sp / "pip", env.root / "include", env.six, env.root / "bin" / "pip",
              env.root / "bin" / "python", env.root / "d", env.root / "f"):
        fails(errno.EEXIST, os.mkdir, p)
    assert read(env.six) == env.six_data


def test_mkdir_and_rmdir_of_a_store_dir_name(env):
    inc = env.root / "include"
    fails(errno.EEXIST, os.mkdir, inc)
    run(["rm", "-rf", inc])
    os.mkdir(inc, 0o750)
    assert stat.S_IMODE(os.stat(inc).st_mode) == 0o750 and listing(inc) == set()
    os.rmdir(inc)
    fails(errno.ENOENT, os.stat, inc)
    assert "include" not in listing(env.root)
    os.mkdir(inc)
    assert listing(inc) == set()


def test_mkdir_on_an_unlinked_store_file_name(env):
    os.unlink(env.six)
    os.mkdir(env.six)
    assert stat.S_ISDIR(os.stat(env.six).st_mode) and listing(env.six) == set()
    os.rmdir(env.six)
    fails(errno.ENOENT, os.stat, env.six)
    write_file(env.six, b"back")
    assert read(env.six) == b"back"


def test_each_kind_of_new_entry_in_a_free_name_and_over_a_whiteout(env):
    """create, mknod, symlink, link and mkdir: made in place when the name is
    free, through work/ when a whiteout holds it; either way the store's entry
    never shows again and work/ is left empty."""
    other = env.clone()
    src = env.root / "linked-from"
    write_file(src, b"linked")
    store_names = ["six.py"] + sorted(n for n in os.listdir(env.sp / "pip") if n.endswith(".py"))[:4]
    kinds = {
        "create": lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)),
        "mknod": lambda p: os.mknod(p, stat.S_IFIFO | 0o600),
        "symlink": lambda p: os.symlink("target", p),
        "link": lambda p: os.link(src, p),
        "mkdir": lambda p: os.mkdir(p, 0o750),
    }
    check = {
        "create": lambda p: stat.S_ISREG(os.lstat(p).st_mode) and read(p) == b"",
        "mknod": lambda p: stat.S_ISFIFO(os.lstat(p).st_mode),
        "symlink": lambda p: os.readlink(p) == "target",
        "link": lambda p: read(p) == b"linked" and os.stat(p).st_ino == os.stat(src).st_ino,
        "mkdir": lambda p: stat.S_ISDIR(os.lstat(p).st_mode) and listing(p) == set(),
    }
    for (kind, make), name in zip(kinds.items(), store_names):
        parent = env.sp if name == "six.py" else env.sp / "pip"
        free = env.root / f"free-{kind}"
        make(free)
        assert check[kind](free), kind
        fails(errno.EEXIST, make, free)
        over = parent / name
        os.unlink(over)
        make(over)
        assert check[kind](over), (kind, name)
        fails(errno.EEXIST, make, over)
        assert read(other / over.relative_to(env.sp)) != b"", "the other env keeps the store's file"
    assert not [n for n in os.listdir(env.work) if n.startswith("new.")], os.listdir(env.work)


def test_create_file_on_a_removed_store_dir_name(env):
    d = env.distinfo
    for n in os.listdir(d):
        os.unlink(d / n)
    os.rmdir(d)
    write_file(d, b"a file now")
    assert stat.S_ISREG(os.stat(d).st_mode) and read(d) == b"a file now"
    os.unlink(d)
    fails(errno.ENOENT, os.stat, d)


# ---- rename --------------------------------------------------------------------------------


def test_rename_upper_file_to_new_name(env):
    a, b = env.root / "a", env.root / "b"
    write_file(a, b"payload")
    ino = os.stat(a).st_ino
    os.rename(a, b)
    fails(errno.ENOENT, os.stat, a)
    assert read(b) == b"payload" and os.stat(b).st_ino == ino
    assert {"a", "b"} & listing(env.root) == {"b"}
    os.rename(b, env.sp / "moved")  # to another directory (a store one)
    assert read(env.sp / "moved") == b"payload"
    fails(errno.ENOENT, os.stat, b)
    fails(errno.ENOENT, os.rename, b, a)


def test_rename_over_existing_file_is_an_atomic_replace(env):
    a, b = env.root / "a", env.root / "b"
    write_file(a, b"new")
    write_file(b, b"old")
    held = os.open(b, os.O_RDONLY)
    os.rename(a, b)
    assert read(b) == b"new"
    assert os.pread(held, 10, 0) == b"old"  # the replaced file lives on for its open fd
    os.close(held)
    fails(errno.ENOENT, os.stat, a)
    assert {"a", "b"} & listing(env.root) == {"b"}
    # over a store file
    write_file(a, b"replacement")
    os.rename(a, env.six)
    assert read(env.six) == b"replacement"
    assert sorted(os.listdir(env.sp)).count("six.py") == 1


def test_rename_store_file_and_back(env):
    other = env.clone()
    moved = env.sp / "six_moved.py"
    ino = os.stat(env.six).st_ino
    os.rename(env.six, moved)
    fails(errno.ENOENT, os.stat, env.six)
    names = listing(env.sp)
    assert "six_moved.py" in names and "six.py" not in names
    assert read(moved) == env.six_data and os.stat(moved).st_ino == ino
    assert stat.S_IMODE(os.stat(moved).st_mode) == stat.S_IMODE((env.native_sp / "six.py").stat().st_mode)
    os.rename(moved, env.six)
    fails(errno.ENOENT, os.stat, moved)
    assert read(env.six) == env.six_data
    assert read(other / "six.py") == env.six_data and not (other / "six_moved.py").exists()


def test_rename_store_file_over_store_file(env):
    init = env.sp / "pip" / "__init__.py"
    init_data = read(init)
    os.rename(init, env.six)
    assert read(env.six) == init_data
    fails(errno.ENOENT, os.stat, init)
    assert "__init__.py" not in listing(env.sp / "pip")


def test_renamed_store_file_can_then_be_written(env):
    moved = env.root / "six_here.py"
    os.rename(env.six, moved)
    with open(moved, "ab") as f:
        f.write(b"#more\n")
    assert read(moved) == env.six_data + b"#more\n"
    os.truncate(moved, 5)
    assert read(moved) == env.six_data[:5]


def test_rename_copied_up_store_file_leaves_no_original_behind(env):
    with open(env.six, "ab") as f:
        f.write(b"#x\n")
    os.rename(env.six, env.root / "six.py")
    fails(errno.ENOENT, os.stat, env.six)
    assert "six.py" not in listing(env.sp)
    assert read(env.root / "six.py") == env.six_data + b"#x\n"


def test_rename_store_dir_keeps_its_subtree(env):
    other = env.clone()
    src = env.sp / "pip"
    before = tree(src)
    assert len(before) > 100
    os.rename(src, env.sp / "pip_renamed")
    fails(errno.ENOENT, os.stat, src)
    fails(errno.ENOENT, os.stat, src / "__init__.py")
    names = listing(env.sp)
    assert "pip_renamed" in names and "pip" not in names
    assert tree(env.sp / "pip_renamed") == before
    assert tree(other / "pip") == before


def test_rename_store_dir_back_to_its_own_name(env):
    src, tmp = env.distinfo, env.sp / "renamed.dist-info"
    before = tree(src)
    os.rename(src, tmp)
    assert tree(tmp) == before
    os.rename(tmp, src)
    assert tree(src) == before
    fails(errno.ENOENT, os.stat, tmp)


def test_rename_upper_dir_onto_an_unlinked_store_file_name(env):
    os.mkdir(env.root / "d")
    write_file(env.root / "d" / "f", b"f")
    os.unlink(env.six)
    os.rename(env.root / "d", env.six)
    assert stat.S_ISDIR(os.stat(env.six).st_mode) and listing(env.six) == {"f"}


def test_rename_store_dir_with_a_copied_up_file_inside(env):
    pip = env.sp / "pip"
    names = listing(pip)
    with open(pip / "__init__.py", "ab") as f:
        f.write(b"#edited\n")
    edited = read(pip / "__init__.py")
    os.rename(pip, env.sp / "pipx")
    assert listing(env.sp / "pipx") == names
    assert read(env.sp / "pipx" / "__init__.py") == edited
    assert read(env.sp / "pipx" / "__main__.py") == (env.native_sp / "pip" / "__main__.py").read_bytes()
    # the moved tree is writable like any other
    os.rename(env.sp / "pipx" / "__main__.py", env.sp / "pipx" / "main2.py")
    os.unlink(env.sp / "pipx" / "py.typed")
    assert listing(env.sp / "pipx") == names - {"__main__.py", "py.typed"} | {"main2.py"}


def test_rename_store_subdir_into_another_directory(env):
    src = env.sp / "pip" / "_internal"
    before = tree(src)
    os.rename(src, env.root / "include" / "_internal")
    assert tree(env.root / "include" / "_internal") == before
    fails(errno.ENOENT, os.stat, src)
    assert "_internal" not in listing(env.sp / "pip")
    os.rename(env.root / "include" / "_internal", env.sp / "_internal2")
    assert tree(env.sp / "_internal2") == before


def test_renames_and_writes_survive_a_remount(env):
    m = env.m
    os.rename(env.sp / "pip", env.sp / "pip_moved")
    os.rename(env.six, env.sp / "six_moved.py")
    os.unlink(env.distinfo / "RECORD")
    write_file(env.root / "mine", b"mine")
    os.rename(env.root / "mine", env.root / "mine2")
    ino = os.stat(env.root / "mine2").st_ino
    before = tree(env.root)
    m.umount()
    m.mount()
    assert tree(env.root) == before
    assert os.stat(env.root / "mine2").st_ino == ino
    assert read(env.sp / "six_moved.py") == env.six_data
    fails(errno.ENOENT, os.stat, env.sp / "pip")
    fails(errno.ENOENT, os.stat, env.distinfo / "RECORD")


def test_old_name_of_a_renamed_store_dir_is_free_and_the_new_one_removable(env):
    d = env.distinfo
    os.rename(d, env.root / "x.dist-info")
    os.mkdir(d)
    assert listing(d) == set()  # nothing of the store's directory shows through
    write_file(d / "METADATA", b"new")
    shutil.rmtree(env.root / "x.dist-info")
    fails(errno.ENOENT, os.stat, env.root / "x.dist-info")
    assert listing(d) == {"METADATA"} and read(d / "METADATA") == b"new"


def test_dir_fd_and_cwd_survive_a_rename_of_their_store_dir(env):
    pip = env.sp / "pip"
    dfd = os.open(pip, os.O_RDONLY | os.O_DIRECTORY)
    cwd = os.getcwd()
    try:
        os.chdir(env.sp / "setuptools")
        os.rename(pip, env.sp / "pip_moved")
        os.rename(env.sp / "setuptools", env.sp / "setuptools_moved")
        fd = os.open("__init__.py", os.O_RDONLY, dir_fd=dfd)
        assert os.read(fd, 1 << 20) == (env.native_sp / "pip" / "__init__.py").read_bytes()
        os.close(fd)
        os.close(os.open("made_here", os.O_CREAT | os.O_WRONLY, dir_fd=dfd))
        assert (env.sp / "pip_moved" / "made_here").is_file()
        fails(errno.ENOENT, os.stat, pip)
        assert os.getcwd() == str(env.sp / "setuptools_moved")
        assert Path("__init__.py").read_bytes() == (env.native_sp / "setuptools" / "__init__.py").read_bytes()
        write_file("new_in_cwd", b"x")
        assert (env.sp / "setuptools_moved" / "new_in_cwd").is_file()
    finally:
        os.chdir(cwd)
        os.close(dfd)


def test_rename_of_an_open_file_keeps_the_fd_writing(env):
    write_file(env.root / "a", b"")
    fa = os.open(env.root / "a", os.O_WRONLY)
    fs = os.open(env.six, os.O_WRONLY | os.O_APPEND)
    os.rename(env.root / "a", env.sp / "a2")
    os.rename(env.six, env.root / "six2.py")
    os.write(fa, b"after rename")
    os.write(fs, b"#after rename")
    os.close(fa)
    os.close(fs)
    assert read(env.sp / "a2") == b"after rename"
    assert read(env.root / "six2.py") == env.six_data + b"#after rename"


def test_rename_dir_over_nonempty_dir_is_enotempty(env):
    os.makedirs(env.root / "a")
    os.makedirs(env.root / "b" / "sub")
    fails(errno.ENOTEMPTY, os.rename, env.root / "a", env.root / "b")
    fails(errno.ENOTEMPTY, os.rename, env.root / "a", env.sp / "pip")  # store entries only
    fails(errno.ENOTEMPTY, os.rename, env.sp / "pip", env.distinfo)
    assert (env.sp / "pip" / "__init__.py").is_file() and (env.distinfo / "METADATA").is_file()
    assert (env.root / "a").is_dir() and (env.root / "b" / "sub").is_dir()


def test_rename_dir_over_empty_dir(env):
    os.mkdir(env.root / "empty")
    os.makedirs(env.root / "full" / "x")
    os.rename(env.root / "full", env.root / "empty")
    assert listing(env.root / "empty") == {"x"}
    fails(errno.ENOENT, os.stat, env.root / "full")
    # a store directory over an empty directory
    os.mkdir(env.root / "empty2")
    before = tree(env.distinfo)
    os.rename(env.distinfo, env.root / "empty2")
    assert tree(env.root / "empty2") == before
    fails(errno.ENOENT, os.stat, env.distinfo)


def test_rename_store_dir_over_emptied_store_dir(env):
    target = env.distinfo
    for n in os.listdir(target):
        os.unlink(target / n)
    before = tree(env.sp / "_distutils_hack")
    os.rename(env.sp / "_distutils_hack", target)
    assert tree(target) == before
    fails(errno.ENOENT, os.stat, env.sp / "_distutils_hack")


def test_rename_file_over_dir_is_eisdir(env):
    os.mkdir(env.root / "d")
    write_file(env.root / "f", b"f")
    fails(errno.EISDIR, os.rename, env.root / "f", env.root / "d")
    fails(errno.EISDIR, os.rename, env.six, env.sp / "pip")
    fails(errno.EISDIR, os.rename, env.root / "f", env.root / "include")
    assert read(env.six) == env.six_data and read(env.root / "f") == b"f"


def test_rename_dir_over_file_is_enotdir(env):
    os.mkdir(env.root / "d")
    write_file(env.root / "f", b"f")
    fails(errno.ENOTDIR, os.rename, env.root / "d", env.root / "f")
    fails(errno.ENOTDIR, os.rename, env.sp / "pip", env.six)
    fails(errno.ENOTDIR, os.rename, env.root / "d", env.root / "pyvenv.cfg")
    assert read(env.six) == env.six_data and (env.sp / "pip" / "__init__.py").is_file()


def test_rename_dir_into_its_own_subdirectory_is_einval(env):
    os.makedirs(env.root / "a" / "b")
    fails(errno.EINVAL, os.rename, env.root / "a", env.root / "a" / "b" / "c")
    fails(errno.EINVAL, os.rename, env.sp / "pip", env.sp / "pip" / "_internal" / "pip")
    fails(errno.EINVAL, os.rename, env.root / "lib", env.sp / "lib")
    assert (env.sp / "pip" / "_internal").is_dir()


def test_rename_missing_source_is_enoent(env):
    fails(errno.ENOENT, os.rename, env.root / "nothing", env.root / "x")
    os.unlink(env.six)
    fails(errno.ENOENT, os.rename, env.six, env.root / "x")
    fails(errno.ENOENT, os.stat, env.root / "x")


def test_rename_between_two_links_of_one_file_does_nothing(env):
    a, b = env.root / "a", env.root / "b"
    write_file(a, b"one file")
    os.link(a, b)
    os.rename(a, b)
    assert read(a) == read(b) == b"one file"
    assert os.stat(a).st_nlink == 2
    os.rename(a, a)
    assert read(a) == b"one file"


def test_renameat2_noreplace(env):
    a = env.root / "a"
    write_file(a, b"a")
    write_file(env.root / "b", b"b")
    fails(errno.EEXIST, renameat2, a, env.root / "b", RENAME_NOREPLACE)
    fails(errno.EEXIST, renameat2, a, env.six, RENAME_NOREPLACE)
    fails(errno.EEXIST, renameat2, env.sp / "pip", env.sp / "setuptools", RENAME_NOREPLACE)
    fails(errno.EEXIST, renameat2, env.sp / "pip", env.root / "include", RENAME_NOREPLACE)
    assert read(env.root / "b") == b"b" and read(env.six) == env.six_data
    renameat2(a, env.root / "c", RENAME_NOREPLACE)
    assert read(env.root / "c") == b"a" and not a.exists()
    renameat2(env.sp / "pip", env.sp / "pip2", RENAME_NOREPLACE)
    assert (env.sp / "pip2" / "__init__.py").is_file() and not (env.sp / "pip").exists()
    renameat2(env.six, env.sp / "six2.py", RENAME_NOREPLACE)
    assert read(env.sp / "six2.py") == env.six_data


def test_renameat2_noreplace_onto_an_unlinked_store_name(env):
    os.unlink(env.six)
    write_file(env.root / "f", b"f")
    renameat2(env.root / "f", env.six, RENAME_NOREPLACE)
    assert read(env.six) == b"f"
    run(["rm", "-rf", env.sp / "pip"])
    renameat2(env.distinfo, env.sp / "pip", RENAME_NOREPLACE)
    assert (env.sp / "pip" / "METADATA").is_file()


def test_renameat2_exchange(env):
    # files of the writable layer, store files, and both; directories of the writable layer
    write_file(env.root / "a", b"a")
    write_file(env.root / "b", b"b")
    renameat2(env.root / "a", env.root / "b", RENAME_EXCHANGE)
    assert read(env.root / "a") == b"b" and read(env.root / "b") == b"a"
    renameat2(env.six, env.root / "a", RENAME_EXCHANGE)
    assert read(env.six) == b"b" and read(env.root / "a") == env.six_data
    init = env.sp / "pip" / "__init__.py"
    init_data = read(init)
    renameat2(env.root / "a", init, RENAME_EXCHANGE)
    assert read(init) == env.six_data and read(env.root / "a") == init_data
    os.mkdir(env.root / "d1")
    os.mkdir(env.root / "d1" / "sub")
    write_file(env.root / "d1" / "f", b"d1")
    renameat2(env.root / "d1", env.root / "b", RENAME_EXCHANGE)
    assert read(env.root / "b" / "f") == b"d1" and read(env.root / "d1") == b"a"
    # a directory of the writable layer put where the store has a directory
    # (hidden by a file there) shows none of the store's one
    run(["rm", "-rf", env.sp / "pip"])
    write_file(env.sp / "pip", b"file")
    renameat2(env.root / "b", env.sp / "pip", RENAME_EXCHANGE)
    assert listing(env.sp / "pip") == {"f", "sub"} and read(env.root / "b") == b"file"
    # documented: a directory with store content does not move whole (EXDEV:
    # callers copy); RENAME_WHITEOUT is overlayfs's own
    fails(errno.EXDEV, renameat2, env.root / "d1", env.distinfo, RENAME_EXCHANGE)
    fails(errno.EINVAL, renameat2, env.root / "d1", env.root / "c", RENAME_WHITEOUT)
    fails(errno.ENOENT, renameat2, env.root / "d1", env.root / "nothing", RENAME_EXCHANGE)
    fails(errno.EINVAL, renameat2, env.sp / "pip", env.sp / "pip" / "sub", RENAME_EXCHANGE)
    assert read(env.six) == b"b"


def test_rename_in_the_mount_root_is_eperm(env):
    # envs are made and removed with venvfs commands, not with rename(2)
    fails(errno.EPERM, os.rename, env.root, env.m.path / "renamed-env")
    fails(errno.EPERM, os.rename, env.root / "pyvenv.cfg", env.m.path / "cfg")
    fails(errno.EPERM, os.mkdir, env.m.path / "newenv")
    fails(errno.EPERM, os.open, env.m.path / "newfile", os.O_CREAT | os.O_WRONLY)
    assert (env.root / "pyvenv.cfg").is_file()


# ---- links, symlinks, special files, names -----------------------------------------------


def test_hard_link_of_upper_file(env):
    a, b = env.root / "a", env.sp / "b"
    write_file(a, b"one")
    os.link(a, b)
    sa, sb = os.stat(a), os.stat(b)
    assert sa.st_nlink == sb.st_nlink == 2 and sa.st_ino == sb.st_ino
    with open(a, "r+b") as f:
        f.write(b"TWO")
    assert read(b) == b"TWO"
    with open(b, "ab") as f:
        f.write(b"+3")
    assert read(a) == b"TWO+3"
    fails(errno.EEXIST, os.link, a, b)
    fails(errno.EEXIST, os.link, a, env.six)
    os.unlink(a)
    assert os.stat(b).st_nlink == 1 and read(b) == b"TWO+3"


def test_hard_link_of_store_file_is_exdev(env):
    # documented: a store file has no single place to link from; uv copies instead
    fails(errno.EXDEV, os.link, env.six, env.root / "six_link.py")
    fails(errno.EXDEV, os.link, env.root / "bin" / "pip", env.root / "pip_link")
    fails(errno.ENOENT, os.stat, env.root / "six_link.py")
    # once the env has its own copy, it links
    with open(env.six, "ab") as f:
        f.write(b"#own\n")
    os.link(env.six, env.root / "six_link.py")
    assert os.stat(env.six).st_nlink == 2 and read(env.root / "six_link.py") == env.six_data + b"#own\n"


def test_symlink_create_readlink_lstat(env):
    ln = env.sp / "six_alias.py"
    os.symlink("six.py", ln)
    st = os.lstat(ln)
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("six.py")
    assert os.readlink(ln) == "six.py" and read(ln) == env.six_data
    assert os.stat(ln).st_ino == os.stat(env.six).st_ino
    os.symlink("/nonexistent/target", env.root / "dangling")
    assert os.readlink(env.root / "dangling") == "/nonexistent/target"
    fails(errno.ENOENT, os.stat, env.root / "dangling")
    fails(errno.EEXIST, os.symlink, "x", ln)
    fails(errno.EEXIST, os.symlink, "x", env.six)
    fails(errno.EEXIST, os.symlink, "x", env.root / "bin" / "python")
    assert "six_alias.py" in listing(env.sp)
    os.unlink(ln)
    assert read(env.six) == env.six_data


def test_store_symlinks_readlink_and_replace(env):
    py = env.root / "bin" / "python"
    assert stat.S_ISLNK(os.lstat(py).st_mode)
    target = os.readlink(py)
    assert os.lstat(py).st_size == len(target)
    assert os.readlink(env.root / "lib64") == "lib"
    fails(errno.EINVAL, os.readlink, env.six)
    fails(errno.EINVAL, os.readlink, env.root / "pyvenv.cfg")
    fails(errno.EINVAL, os.readlink, env.sp)
    write_file(env.root / "plain", b"")
    fails(errno.EINVAL, os.readlink, env.root / "plain")
    os.unlink(py)
    os.symlink("/usr/bin/true", py)
    assert os.readlink(py) == "/usr/bin/true"


def test_mkfifo(env):
    f = env.root / "fifo"
    os.mkfifo(f, 0o640)
    st = os.lstat(f)
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    r = os.open(f, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(f, os.O_WRONLY)
    os.write(w, b"through the pipe")
    assert os.read(r, 100) == b"through the pipe"
    os.close(w)
    os.close(r)
    fails(errno.EEXIST, os.mkfifo, f)
    fails(errno.EEXIST, os.mkfifo, env.six)
    os.unlink(f)
    fails(errno.ENOENT, os.lstat, f)


def test_mknod_regular_device_and_socket(env):
    os.mknod(env.root / "reg", stat.S_IFREG | 0o640)
    st = os.stat(env.root / "reg")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == 0
    if os.geteuid() == 0:
        os.mknod(env.root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        st = os.lstat(env.root / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    fails(errno.EEXIST, os.mknod, env.six, stat.S_IFREG | 0o644)
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(env.root / "sock"))
        srv.listen(1)
        assert stat.S_ISSOCK(os.lstat(env.root / "sock").st_mode)
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(env.root / "sock"))
            conn, _ = srv.accept()
            c.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()


def test_name_of_255_bytes_works_and_256_is_enametoolong(env):
    ok, bad = "n" * 255, "n" * 256
    write_file(env.sp / ok, b"long")
    assert read(env.sp / ok) == b"long" and ok in listing(env.sp)
    os.mkdir(env.root / ("d" * 255))
    os.symlink("six.py", env.sp / ("s" * 255))
    os.link(env.sp / ok, env.root / ("l" * 255))
    os.rename(env.six, env.sp / ("r" * 255))
    assert read(env.sp / ("r" * 255)) == env.six_data
    fails(errno.ENAMETOOLONG, os.open, env.sp / bad, os.O_CREAT | os.O_WRONLY)
    fails(errno.ENAMETOOLONG, os.mkdir, env.root / bad)
    fails(errno.ENAMETOOLONG, os.symlink, "x", env.root / bad)
    fails(errno.ENAMETOOLONG, os.mkfifo, env.root / bad)
    fails(errno.ENAMETOOLONG, os.link, env.sp / ok, env.root / bad)
    fails(errno.ENAMETOOLONG, os.rename, env.sp / ok, env.root / bad)
    fails(errno.ENAMETOOLONG, os.rename, env.sp / "pip", env.sp / bad)
    fails(errno.ENAMETOOLONG, os.stat, env.sp / bad)
    assert os.statvfs(env.root).f_namemax == 255


# ---- attributes and timestamps ---------------------------------------------------------


def test_chmod_of_upper_and_store_entries(env):
    other = env.clone()
    write_file(env.root / "f", b"f")
    os.chmod(env.root / "f", 0o600)
    assert stat.S_IMODE(os.stat(env.root / "f").st_mode) == 0o600
    os.chmod(env.six, 0o755)
    assert stat.S_IMODE(os.stat(env.six).st_mode) == 0o755 and read(env.six) == env.six_data
    os.chmod(env.sp / "pip", 0o700)
    assert stat.S_IMODE(os.stat(env.sp / "pip").st_mode) == 0o700
    os.chmod(env.root / "bin" / "pip", 0o644)
    assert stat.S_IMODE(os.stat(env.root / "bin" / "pip").st_mode) == 0o644
    os.chmod(env.root / "f", 0o4755)
    assert stat.S_IMODE(os.stat(env.root / "f").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(other / "six.py").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(other / "pip").st_mode) == 0o755


def test_chown_as_root(env):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    write_file(env.root / "f", b"f")
    os.mkdir(env.root / "d")
    os.symlink("f", env.root / "l")
    for p in (env.root / "f", env.six, env.root / "bin" / "activate"):
        os.chown(p, 1234, 5678)
        st = os.stat(p)
        assert (st.st_uid, st.st_gid) == (1234, 5678), p
    os.chown(env.root / "f", -1, 42)
    assert (os.stat(env.root / "f").st_uid, os.stat(env.root / "f").st_gid) == (1234, 42)
    os.lchown(env.root / "l", 77, 88)
    assert (os.lstat(env.root / "l").st_uid, os.stat(env.root / "l").st_uid) == (77, 1234)
    assert read(env.six) == env.six_data
    for d in (env.root / "d", env.sp / "pip"):
        os.chown(d, 1234, 5678)
        st = os.stat(d)
        assert (st.st_uid, st.st_gid) == (1234, 5678), f"chown of directory {d.name}: stat says {st.st_uid}:{st.st_gid}"


def test_chown_clears_setuid(env):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    write_file(env.root / "f", b"f")
    os.chmod(env.root / "f", 0o6755)
    os.chown(env.root / "f", 1000, 1000)
    assert stat.S_IMODE(os.stat(env.root / "f").st_mode) & 0o6000 == 0


def test_permission_answers_match_a_directory_on_disk(env, tmp_path):
    """access(2), exec and open of files and directories by mode, here and in a
    native directory, as whoever runs the tests (root: the mount then has no
    default_permissions and answers access() itself)."""
    modes = [0o000, 0o444, 0o644, 0o600, 0o700, 0o755, 0o711, 0o100, 0o010, 0o001]
    script = b"#!/bin/sh\nexit 0\n"

    def answers(top):
        out = {}
        for m in modes:
            f, d = top / f"f{m:o}", top / f"d{m:o}"
            write_file(f, script)
            os.chmod(f, m)
            os.mkdir(d)
            os.chmod(d, m)
            for what, p in (("file", f), ("dir", d)):
                out[what, m, "access"] = tuple(os.access(p, k) for k in (os.F_OK, os.R_OK, os.W_OK, os.X_OK))
            try:
                out["file", m, "exec"] = subprocess.run([f], capture_output=True).returncode
            except OSError as e:
                out["file", m, "exec"] = errno.errorcode[e.errno]
            for flags in (os.O_RDONLY, os.O_WRONLY):
                try:
                    os.close(os.open(f, flags))
                    out["file", m, "open", flags] = "ok"
                except OSError as e:
                    out["file", m, "open", flags] = errno.errorcode[e.errno]
            try:
                os.listdir(d)
                out["dir", m, "list"] = "ok"
            except OSError as e:
                out["dir", m, "list"] = errno.errorcode[e.errno]
        out["missing", "access"] = os.access(top / "missing", os.F_OK)
        return out

    native = tmp_path / "native"
    native.mkdir()
    here = env.root / "perm"
    os.mkdir(here)
    expected = answers(native)
    if os.geteuid() != 0:
        # documented (docs/design.md): a daemon that is not root has no more
        # rights on the layer's files than their owner, whom it is: it cannot
        # open a file the owner may not read for a kernel that only executes
        # it, nor list a directory the owner may not search (it looks each
        # entry up)
        expected["file", 0o100, "exec"] = "EACCES"
        for m in (0o600, 0o444, 0o644):
            expected["dir", m, "list"] = "EACCES"
    assert answers(here) == expected
    # store files and directories too
    assert os.access(env.root / "bin" / "python", os.X_OK) and os.access(env.six, os.R_OK | os.W_OK)
    assert not os.access(env.six, os.X_OK) and os.access(env.sp / "pip", os.X_OK)


def test_utime_with_nanoseconds(env):
    times = (1_000_000_123, 2_000_000_456)
    write_file(env.root / "f", b"f")
    for p in (env.root / "f", env.six, env.root / "bin" / "pip"):
        os.utime(p, ns=times)
        st = os.stat(p)
        assert (st.st_atime_ns, st.st_mtime_ns) == times, p
    assert read(env.six) == env.six_data
    for d in (env.root / "include", env.sp / "pip"):
        os.utime(d, ns=times)
        st = os.stat(d)
        assert st.st_mtime_ns == times[1], f"utime of directory {d.name}: mtime {st.st_mtime_ns}"
        assert st.st_atime_ns == times[0], f"utime of directory {d.name}: atime {st.st_atime_ns}"


def test_utime_now(env):
    before = time.time_ns()
    os.utime(env.six)
    st = os.stat(env.six)
    assert before - 10**9 <= st.st_mtime_ns <= time.time_ns() + 10**9
    assert read(env.six) == env.six_data


def test_touch_d(env):
    want = 981173106  # 2001-02-03 04:05:06 UTC
    run(["touch", "-d", "2001-02-03 04:05:06 UTC", env.six, env.root / "fresh"])
    for p in (env.six, env.root / "fresh"):
        assert os.stat(p).st_mtime == want and os.stat(p).st_atime == want
    assert read(env.six) == env.six_data and read(env.root / "fresh") == b""
    run(["touch", "-h", "-d", "2001-02-03 04:05:06 UTC", env.root / "bin" / "python"])
    assert os.lstat(env.root / "bin" / "python").st_mtime == want


def test_utime_of_symlinks_does_not_follow(env):
    os.symlink("target", env.root / "l")
    times = (3_000_000_000, 4_000_000_000)
    for p in (env.root / "l", env.root / "bin" / "python3"):
        os.utime(p, ns=times, follow_symlinks=False)
        assert os.lstat(p).st_mtime_ns == times[1], p
    assert os.stat(env.root / "bin" / "python3").st_mtime_ns != times[1]


def test_write_updates_mtime_and_ctime(env):
    f = env.root / "f"
    write_file(f, b"x")
    for p in (f, env.six):
        s0 = os.stat(p)
        time.sleep(TICK)
        with open(p, "r+b") as fh:
            fh.write(b"y")
        s1 = os.stat(p)
        assert s1.st_mtime_ns > s0.st_mtime_ns and s1.st_ctime_ns > s0.st_ctime_ns, p
        assert s1.st_mtime_ns >= time.time_ns() - 10 * 10**9
    # copy-up alone (an open for writing, no write) keeps the store file's mtime
    init = env.sp / "pip" / "__init__.py"
    s0 = os.stat(init)
    os.close(os.open(init, os.O_RDWR))
    assert os.stat(init).st_mtime_ns == s0.st_mtime_ns and read(init) == (env.native_sp / "pip" / "__init__.py").read_bytes()


def test_truncate_updates_mtime_and_ctime(env):
    f = env.root / "f"
    write_file(f, b"xyz")
    s0 = os.stat(f)
    time.sleep(TICK)
    os.truncate(f, 1)
    s1 = os.stat(f)
    assert s1.st_mtime_ns > s0.st_mtime_ns and s1.st_ctime_ns > s0.st_ctime_ns


def test_chmod_and_chown_update_ctime_only(env):
    f = env.root / "f"
    write_file(f, b"x")
    os.mkdir(env.root / "d")
    for p in (f, env.six, env.root / "d", env.sp / "pip"):
        os.chmod(p, 0o700)  # copies up what it has to first
        s0 = os.stat(p)
        time.sleep(TICK)
        os.chmod(p, 0o750)
        s1 = os.stat(p)
        assert s1.st_mtime_ns == s0.st_mtime_ns, f"chmod changed the mtime of {p.name}"
        assert s1.st_ctime_ns > s0.st_ctime_ns, f"chmod left the ctime of {p.name}"
        if os.geteuid() != 0:
            continue
        time.sleep(TICK)
        os.chown(p, 0, 0)
        s2 = os.stat(p)
        assert s2.st_mtime_ns == s0.st_mtime_ns and s2.st_ctime_ns > s1.st_ctime_ns, f"chown, {p.name}"


def test_creating_and_removing_entries_update_the_directory_times(env):
    for d in (env.root / "include", env.sp):  # a store directory, then one already copied up
        steps = [lambda: write_file(d / "f", b""), lambda: os.mkdir(d / "sub"),
                 lambda: os.symlink("f", d / "l"), lambda: os.link(d / "f", d / "f2"),
                 lambda: os.unlink(d / "f2"), lambda: os.rmdir(d / "sub"), lambda: os.unlink(d / "l"),
                 lambda: os.unlink(d / "f")]
        for i, step in enumerate(steps):
            s0 = os.stat(d)
            time.sleep(TICK)
            step()
            s1 = os.stat(d)
            assert s1.st_mtime_ns > s0.st_mtime_ns, f"{d.name}: step {i} left the mtime"
            assert s1.st_ctime_ns > s0.st_ctime_ns, f"{d.name}: step {i} left the ctime"
    s0 = os.stat(env.sp / "pip")
    time.sleep(TICK)
    os.unlink(env.sp / "pip" / "py.typed")  # removing a store entry
    assert os.stat(env.sp / "pip").st_mtime_ns > s0.st_mtime_ns


def test_rename_updates_both_directories_times(env):
    a, b = env.root / "include", env.sp / "pip"
    write_file(a / "f", b"")
    time.sleep(TICK)
    sa, sb = os.stat(a), os.stat(b)
    time.sleep(TICK)
    os.rename(a / "f", b / "f")
    assert os.stat(a).st_mtime_ns > sa.st_mtime_ns and os.stat(b).st_mtime_ns > sb.st_mtime_ns
    assert os.stat(a).st_ctime_ns > sa.st_ctime_ns and os.stat(b).st_ctime_ns > sb.st_ctime_ns
    s = os.stat(env.sp)
    time.sleep(TICK)
    os.rename(env.six, env.sp / "six2.py")  # a store file, within one directory
    assert os.stat(env.sp).st_mtime_ns > s.st_mtime_ns


def test_st_ino_across_copy_up_and_rename(env):
    # documented: a store file's st_ino changes when the env gets its own copy
    # (as overlayfs without xino); from then on it is the copy's, and stable
    fd = os.open(env.six, os.O_RDWR)
    ino = os.fstat(fd).st_ino
    assert os.stat(env.six).st_ino == ino
    os.write(fd, b"#")
    os.close(fd)
    os.chmod(env.six, 0o600)
    assert os.stat(env.six).st_ino == ino
    os.rename(env.six, env.root / "six.py")
    assert os.stat(env.root / "six.py").st_ino == ino
    assert os.stat(env.root).st_ino != os.stat(env.sp).st_ino != os.stat(env.root / "six.py").st_ino


def test_setattr_through_read_only_fd_of_store_file_is_estale(env):
    # documented: the request does not say which env the shared file is of
    fd = os.open(env.six, os.O_RDONLY)
    try:
        fails(errno.ESTALE, os.fchmod, fd, 0o600)
    finally:
        os.close(fd)
    assert read(env.six) == env.six_data
    assert stat.S_IMODE(os.stat(env.six).st_mode) == 0o644


def test_xattrs_are_off_by_default(env):
    # documented (mount --help, ops.c): served they cost a round trip per write
    write_file(env.root / "f", b"")
    for p in (env.root / "f", env.six, env.sp):
        fails(errno.EOPNOTSUPP, os.listxattr, p)
        fails(errno.EOPNOTSUPP, os.getxattr, p, "user.venvfs")
        fails(errno.EOPNOTSUPP, os.setxattr, p, "user.test", b"1")


@pytest.fixture(scope="module")
def xattr_mount(tmp_path_factory, six_venv):
    top = tmp_path_factory.mktemp("posix-xattrs")
    vf = Venvfs(top / "store")
    vf("import", six_venv, "--name", "base", "-q")
    m = Mount(vf, top / "mnt")
    m.mount("--xattrs")
    yield m
    m.umount()


def test_xattrs(xattr_mount, six_venv, wheelhouse):
    """With --xattrs, user.* attributes as on ext4: on files and directories of
    the writable layer, and on store entries, which setting one copies up (as
    chmod does). The layer's own marker attribute never shows, cannot be set."""
    xattr_mount.venvfs("clone", "base", "x")
    env = Env(xattr_mount, "x", six_venv)
    write_file(env.root / "f", b"")
    for p in (env.root / "f", env.six, env.sp, env.sp / "pip"):
        assert "user.venvfs" not in os.listxattr(p)
        fails(errno.ENODATA, os.getxattr, p, "user.test")
        os.setxattr(p, "user.test", b"1")
        os.setxattr(p, "user.other", b"x" * 1000)
        assert os.getxattr(p, "user.test") == b"1" and os.getxattr(p, "user.other") == b"x" * 1000
        assert sorted(os.listxattr(p)) == ["user.other", "user.test"], (p, os.listxattr(p))
        fails(errno.EEXIST, os.setxattr, p, "user.test", b"2", os.XATTR_CREATE)
        os.removexattr(p, "user.other")
        fails(errno.ENODATA, os.removexattr, p, "user.other")
        assert os.listxattr(p) == ["user.test"]
        fails(errno.EPERM, os.setxattr, p, "user.venvfs", b"w")
        fails(errno.ENODATA, os.getxattr, p, "user.venvfs")
    assert read(env.six) == env.six_data  # copied up, bytes unchanged
    # absorb does not take a distribution whose files have them into the
    # store (it keeps none): they stay, and so do the attributes
    run([env.root / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--find-links", wheelhouse, "idna"])
    os.setxattr(env.sp / "idna" / "core.py", "user.keep", b"me")
    out = xattr_mount.venvfs("absorb", "x").stdout
    assert "idna" in out and "has extended attributes" in out, out
    assert os.getxattr(env.sp / "idna" / "core.py", "user.keep") == b"me"
    # a directory with a whiteout and an opaque one: their markers never show
    os.unlink(env.sp / "pip" / "__init__.py")
    run(["rm", "-rf", env.sp / "pip" / "_internal"])
    os.mkdir(env.sp / "pip" / "_internal")
    for p in (env.sp / "pip", env.sp / "pip" / "_internal"):
        assert "user.venvfs" not in os.listxattr(p)
        fails(errno.ENODATA, os.getxattr, p, "user.venvfs")
    # another env's copy of six.py has none
    assert os.listxattr(env.clone() / "six.py") == []
    if os.geteuid() == 0:
        os.setxattr(env.root / "f", "trusted.t", b"root's")
        assert os.getxattr(env.root / "f", "trusted.t") == b"root's"
    # cp -a keeps them
    run(["cp", "-a", env.root / "f", env.root / "g"])
    assert os.getxattr(env.root / "g", "user.test") == b"1"


def test_sticky_bit_on_files_and_marker_modes(env):
    # 01400 is the mode of the layer's markers; a file of that mode is still a file
    write_file(env.root / "f", b"data")
    os.chmod(env.root / "f", 0o1644)
    assert stat.S_IMODE(os.stat(env.root / "f").st_mode) == 0o1644
    os.chmod(env.six, 0o1644)
    assert stat.S_IMODE(os.stat(env.six).st_mode) == 0o1644 and read(env.six) == env.six_data
    write_file(env.root / "empty", b"", mode=0o600)
    os.chmod(env.root / "empty", 0o1400)
    assert "empty" in listing(env.root)
    st = os.stat(env.root / "empty")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o1400 and st.st_size == 0
    fd = os.open(env.root / "sticky-new", os.O_CREAT | os.O_WRONLY, 0o1755)
    os.close(fd)
    assert stat.S_IMODE(os.stat(env.root / "sticky-new").st_mode) == 0o1755


def test_modes_are_the_callers_whatever_the_umask(env):
    os.umask(0)
    write_file(env.root / "f", b"", mode=0o666)
    os.mkdir(env.root / "d", 0o777)
    os.mkfifo(env.root / "p", 0o666)
    os.symlink("f", env.root / "l")
    assert stat.S_IMODE(os.stat(env.root / "f").st_mode) == 0o666
    assert stat.S_IMODE(os.stat(env.root / "d").st_mode) == 0o777
    os.rename(env.root / "p", env.root / "d" / "p2")
    assert stat.S_IMODE(os.stat(env.root / "d" / "p2").st_mode) == 0o666
    os.umask(0o027)
    write_file(env.root / "g", b"", mode=0o666)
    assert stat.S_IMODE(os.stat(env.root / "g").st_mode) == 0o640


def test_store_directory_modes_survive_copy_up_and_rename(env):
    """The import's venv has group-dir/ 02775 and world-tmp/ 01777 (fsmount): a file
    written in each (copy-up of the directory), a rename of each, keep them;
    a directory made in a setgid one is setgid and of its group."""
    for name, mode in (("group-dir", 0o2775), ("world-tmp", 0o1777)):
        d = env.root / name
        assert stat.S_IMODE(os.stat(d).st_mode) == mode, oct(os.stat(d).st_mode)
        write_file(d / "new", b"x")
        assert stat.S_IMODE(os.stat(d).st_mode) == mode
        os.rename(d, env.root / (name + "-renamed"))
        assert stat.S_IMODE(os.stat(env.root / (name + "-renamed")).st_mode) == mode
    os.mkdir(env.root / "group-dir-renamed" / "sub")
    st = os.stat(env.root / "group-dir-renamed" / "sub")
    assert st.st_mode & stat.S_ISGID and st.st_gid == os.stat(env.root / "group-dir-renamed").st_gid
    os.chmod(env.sp, 0o2777)
    assert stat.S_IMODE(os.stat(env.sp).st_mode) == 0o2777


def test_directory_link_counts(env):
    os.mkdir(env.root / "d")
    os.mkdir(env.root / "d" / "a")
    os.mkdir(env.root / "d" / "b")
    write_file(env.root / "d" / "f", b"")
    assert os.stat(env.root / "d").st_nlink == 4  # as on disk: 2 + subdirectories
    assert os.stat(env.root / "d" / "a").st_nlink == 2
    # documented: a directory merged with the store's says 1 ("unknown"), as overlayfs
    assert os.stat(env.sp).st_nlink == 1


def test_reopen_with_o_nofollow(env, tmp_path):
    """sqlite, tar, cp -a and git reopen files with O_NOFOLLOW."""
    write_file(env.root / "f", b"written")
    os.chmod(env.six, 0o644)  # copied up
    for p in (env.root / "f", env.six, env.sp / "pip" / "__init__.py"):
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        os.close(fd)
        fd = os.open(p, os.O_RDWR | os.O_NOFOLLOW)
        os.close(fd)
    os.symlink("f", env.root / "l")
    fails(errno.ELOOP, os.open, env.root / "l", os.O_RDONLY | os.O_NOFOLLOW)
    import sqlite3
    db = sqlite3.connect(env.root / "db.sqlite")
    db.execute("create table t (x)")
    db.execute("insert into t values (1)")
    db.commit()
    db.close()
    db = sqlite3.connect(env.root / "db.sqlite")
    assert db.execute("select x from t").fetchall() == [(1,)]
    db.close()
    run(["tar", "-cf", tmp_path / "env.tar", "-C", env.root, "."])
    run(["cp", "-a", env.root, tmp_path / "copy"])
    assert read(tmp_path / "copy" / "f") == b"written"


def test_fallocate(env):
    write_file(env.root / "f", b"x" * 65536)
    fd = os.open(env.root / "f", os.O_RDWR)
    try:
        FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
        fallocate = _libc.fallocate
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        assert fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20) == 0, os.strerror(ctypes.get_errno())
        assert os.fstat(fd).st_size == 65536
        assert fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 4096, 8192) == 0
        assert os.pread(fd, 65536, 0) == b"x" * 4096 + b"\0" * 8192 + b"x" * (65536 - 12288)
        assert fallocate(fd, 0, 0, 200000) == 0 and os.fstat(fd).st_size == 200000
    finally:
        os.close(fd)


# ---- locks -----------------------------------------------------------------------------


FLOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_flock_exclusive_between_processes(env):
    write_file(env.root / ".lock", b"")
    for p in (env.root / ".lock", env.six):
        holder = child(FLOCK_HOLDER, p)
        fd = os.open(p, os.O_RDONLY)
        try:
            fails(errno.EWOULDBLOCK, fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fails(errno.EWOULDBLOCK, fcntl.flock, fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            finish(holder)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


FCNTL_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_fcntl_byte_range_locks_between_processes(env):
    f = env.root / "ranges"
    write_file(f, b"x" * 100)
    holder = child(FCNTL_HOLDER, f)
    fd = os.open(f, os.O_RDWR)
    try:
        fails(errno.EAGAIN, fcntl.lockf, fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 5)
        fails(errno.EAGAIN, fcntl.lockf, fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 20, 0)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 10)  # bytes 10-19 are free
        # F_GETLK names the holder
        req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 5, 0)
        got = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, req))
        assert got[0] == fcntl.F_WRLCK and got[4] == holder.pid
        finish(holder)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    finally:
        os.close(fd)


# ---- open files that lose their name ---------------------------------------------------


def test_unlinked_open_upper_file_keeps_working(env):
    d = env.root / "d"
    os.mkdir(d)
    fd = os.open(d / "f", os.O_CREAT | os.O_RDWR)
    os.write(fd, b"data")
    os.unlink(d / "f")
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, 10, 0) == b"data"
    os.write(fd, b"more")
    assert os.pread(fd, 10, 0) == b"datamore"
    os.fsync(fd)
    assert listing(d) == set()
    assert [p.name for p in (env.upper / "d").iterdir()] == []
    os.rmdir(d)
    fails(errno.ENOENT, os.stat, d)
    assert os.pread(fd, 10, 0) == b"datamore"
    os.close(fd)


def test_unlinked_open_store_file_keeps_reading(env):
    d = env.distinfo
    fd = os.open(d / "METADATA", os.O_RDONLY)
    want = (env.native_sp / d.name / "METADATA").read_bytes()
    for n in os.listdir(d):
        os.unlink(d / n)
    assert listing(d) == set()
    os.rmdir(d)
    assert os.pread(fd, 1 << 20, 0) == want
    os.close(fd)
    fd = os.open(env.six, os.O_RDWR)  # copied up, then unlinked while open
    os.unlink(env.six)
    os.pwrite(fd, b"!", 0)
    assert os.pread(fd, 5, 0) == b"!" + env.six_data[1:5]
    os.close(fd)
    assert "six.py" not in listing(env.sp)
    fails(errno.ENOENT, os.stat, env.six)


def test_rename_over_open_store_file_keeps_the_reader(env):
    fd = os.open(env.six, os.O_RDONLY)
    write_file(env.root / "new", b"new content")
    os.rename(env.root / "new", env.six)
    assert read(env.six) == b"new content"
    assert os.pread(fd, 1 << 20, 0) == env.six_data
    os.close(fd)


# ---- directory listings ----------------------------------------------------------------


def test_readdir_after_500_creates_and_unlinks(env):
    for d in (env.root / "many", env.sp):
        if d.name == "many":
            os.mkdir(d)
        base = listing(d)
        names = {f"entry-with-a-longer-name-{i:04d}" for i in range(500)}
        for n in names:
            write_file(d / n, n.encode())
        assert listing(d) == base | names
        gone = {n for i, n in enumerate(sorted(names)) if i % 3 == 0}
        for n in gone:
            os.unlink(d / n)
        assert listing(d) == base | (names - gone)
        for n in sorted(names - gone)[:50]:
            assert read(d / n) == n.encode()
        for n in sorted(gone)[:50]:
            fails(errno.ENOENT, os.stat, d / n)
        for n in list(gone)[:100]:  # names come back as new files
            write_file(d / n, b"again")
        assert len(listing(d)) == len(base) + len(names) - len(gone) + 100


def test_readdir_types_match_lstat(env):
    os.mkdir(env.sp / "newdir")
    os.symlink("six.py", env.sp / "newlink")
    os.mkfifo(env.sp / "newfifo")
    write_file(env.sp / "newfile", b"")
    with os.scandir(env.sp) as it:
        entries = list(it)
    assert len(entries) == len(listing(env.sp))
    for e in entries:
        st = os.lstat(e.path)
        assert e.is_symlink() == stat.S_ISLNK(st.st_mode), e.name
        assert e.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode), e.name
        assert e.is_file(follow_symlinks=False) == stat.S_ISREG(st.st_mode), e.name
        assert e.inode() == st.st_ino, e.name


def test_unlink_while_listing_misses_no_entry(env):
    # POSIX leaves out or returns entries removed during the listing, but
    # must return every entry that stays; deleting each entry as it is
    # listed must empty the directory (the classic rm loop)
    d = env.root / "many"
    os.mkdir(d)
    for i in range(500):
        write_file(d / f"file-with-a-longish-name-{i:04d}", b"")
    seen = []
    with os.scandir(d) as it:
        for e in it:
            seen.append(e.name)
            os.unlink(e.path)
    left = os.listdir(d)
    assert len(seen) == 500 and left == [], f"listed {len(seen)} of 500 while unlinking; {len(left)} left"


def test_unlink_while_listing_store_directory(env):
    d = env.sp / "pip" / "_vendor"
    want = listing(d)
    seen = []
    with os.scandir(d) as it:
        for e in it:
            seen.append(e.name)
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
    assert set(seen) == want and listing(d) == set()
    os.rmdir(d)


# ---- isolation and the store -----------------------------------------------------------


def test_writes_in_one_env_never_show_in_a_clone(env):
    other = env.clone()
    other_root = other.parents[2]
    with open(env.six, "ab") as f:
        f.write(b"#env\n")
    with open(other / "pip" / "__init__.py", "ab") as f:
        f.write(b"#other\n")
    os.unlink(env.sp / "pip" / "py.typed")
    os.rename(env.distinfo, env.sp / "moved.dist-info")
    write_file(env.root / "only-here", b"")
    os.chmod(env.sp / "pip" / "__main__.py", 0o600)
    assert read(other / "six.py") == env.six_data
    assert read(env.sp / "pip" / "__init__.py") == (env.native_sp / "pip" / "__init__.py").read_bytes()
    assert (other / "pip" / "py.typed").is_file()
    assert (other / env.distinfo.name / "METADATA").is_file() and not (other / "moved.dist-info").exists()
    assert not (other_root / "only-here").exists()
    assert stat.S_IMODE(os.stat(other / "pip" / "__main__.py").st_mode) == 0o644
    assert read(env.six) == env.six_data + b"#env\n"
    # a clone of the written env gets the writes, and is independent from then on
    env.m.venvfs("clone", env.name, env.name[:40] + "-copy")
    copy = env.m.path / (env.name[:40] + "-copy") / env.sp.relative_to(env.root)
    assert read(copy / "six.py") == env.six_data + b"#env\n"
    with open(copy / "six.py", "ab") as f:
        f.write(b"#copy\n")
    assert read(env.six) == env.six_data + b"#env\n"


def _objects_digest(home):
    out = {}
    for p in sorted((home / "objects").rglob("*")):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def test_store_objects_are_never_modified(env):
    before = _objects_digest(env.home)
    assert before
    fd = os.open(env.six, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"x")
    os.close(fd)
    with open(env.sp / "pip" / "__init__.py", "ab") as f:
        f.write(b"#")
    os.truncate(env.sp / "pip" / "__main__.py", 3)
    os.chmod(env.sp / "pip" / "py.typed", 0o600)
    if os.geteuid() == 0:
        os.chown(env.distinfo / "METADATA", 1, 1)
    else:
        fails(errno.EPERM, os.chown, env.distinfo / "METADATA", 1, 1)  # as on disk
    os.utime(env.distinfo / "WHEEL", ns=(1, 1))
    fd = os.open(env.sp / "pip" / "__pip-runner__.py", os.O_RDWR)
    with mmap.mmap(fd, 0) as m:
        m[0:1] = b"#"
        m.flush()
    os.close(fd)
    os.rename(env.sp / "pip" / "_internal", env.sp / "internal")
    with open(env.sp / "internal" / "__init__.py", "r+b") as f:
        f.write(b"##")
    os.rename(env.distinfo / "LICENSE", env.root / "LICENSE")
    with open(env.root / "LICENSE", "ab") as f:
        f.write(b"more")
    run(["rm", "-rf", env.sp / "setuptools"])
    assert _objects_digest(env.home) == before
    assert list(env.work.iterdir()) == [], "the work directory keeps leftovers"
    out = env.m.venvfs("store", "verify").stdout
    assert "all good" in out, out


READER = """
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
first = os.pread(fd, 100, 0)
print("ready", flush=True)
sys.stdin.readline()
data = os.pread(fd, 1 << 20, 0)
print(hashlib.sha256(data).hexdigest(), len(data), hashlib.sha256(first).hexdigest())
"""


def test_write_open_of_store_file_while_another_process_reads_it(env):
    # the reader's fd is the store's (shared) file: it keeps the old content;
    # the writer's open gives the env its own copy, which the path shows
    reader = child(READER, env.six)
    fd = os.open(env.six, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new content\n")
    os.close(fd)
    out = finish(reader).split()
    assert out[0] == hashlib.sha256(env.six_data).hexdigest() and int(out[1]) == len(env.six_data)
    assert read(env.six) == b"new content\n"
    # a reader opening now sees the new content
    reader = child(READER, env.six)
    assert finish(reader).split()[0] == hashlib.sha256(b"new content\n").hexdigest()


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("ready", flush=True)
sys.stdin.readline()
os.pwrite(fd, b"CHILD", int(sys.argv[2]))
os.close(fd)
print("done", flush=True)
"""


def test_one_file_written_through_two_fds(env):
    f = env.root / "shared"
    write_file(f, b"." * 64)
    a = os.open(f, os.O_RDWR)
    b = os.open(f, os.O_RDWR)
    os.pwrite(a, b"AAAA", 0)
    os.pwrite(b, b"BBBB", 8)
    assert os.pread(a, 16, 0) == os.pread(b, 16, 0) == b"AAAA....BBBB...."
    os.close(a)
    os.close(b)
    # two processes on a store file: the second open finds the env's copy
    a = os.open(env.six, os.O_RDWR)
    w = child(WRITER, env.six, 100)
    os.pwrite(a, b"PARENT", 0)
    finish(w)
    assert os.pread(a, 6, 0) == b"PARENT" and os.pread(a, 5, 100) == b"CHILD"
    os.close(a)
    want = bytearray(env.six_data)
    want[0:6] = b"PARENT"
    want[100:105] = b"CHILD"
    assert read(env.six) == bytes(want)


APPENDER = """
import os, sys
print("ready", flush=True)
sys.stdin.readline()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
for i in range(20):
    os.write(fd, ("#%s line %02d\\n" % (sys.argv[2], i)).encode())
os.close(fd)
"""


def test_concurrent_first_writes_to_one_store_file(env):
    # four processes copy up and append to the same store file at once: no
    # append is lost, none is applied twice, the original stays in front
    procs = [child(APPENDER, env.six, f"p{k}") for k in range(4)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    data = read(env.six)
    assert data.startswith(env.six_data)
    lines = data[len(env.six_data):].decode().splitlines()
    assert sorted(lines) == sorted(f"#p{k} line {i:02d}" for k in range(4) for i in range(20))


def test_concurrent_creates_writes_and_renames_from_threads(env):
    from concurrent.futures import ThreadPoolExecutor

    def work(t):
        d = env.sp if t % 2 else env.root / "include"
        for i in range(40):
            tmp, final = d / f".tmp-{t}-{i}", d / f"file-{t}-{i}"
            write_file(tmp, f"{t}:{i}".encode() * 100)
            os.rename(tmp, final)
            if i % 4 == 0:
                os.unlink(final)
        return t

    with ThreadPoolExecutor(8) as ex:
        assert sorted(ex.map(work, range(8))) == list(range(8))
    for t in range(8):
        d = env.sp if t % 2 else env.root / "include"
        for i in range(40):
            p = d / f"file-{t}-{i}"
            if i % 4 == 0:
                fails(errno.ENOENT, os.stat, p)
            else:
                assert read(p) == f"{t}:{i}".encode() * 100
    names = listing(env.sp) | listing(env.root / "include")
    assert not [n for n in names if n.startswith(".tmp-")]
    assert len([n for n in names if n.startswith("file-")]) == 8 * 30


def test_copy_up_of_the_largest_store_file_keeps_every_byte(env):
    # (not a .pyc: the store keeps those with the normalised source mtime in their header)
    big = max((p for p in env.native_sp.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix != ".pyc"),
              key=lambda p: p.stat().st_size)
    rel = big.relative_to(env.native_sp)
    want = big.read_bytes()
    assert len(want) > 100000 and read(env.sp / rel) == want
    with open(env.sp / rel, "ab") as f:
        f.write(b"END")
    assert read(env.sp / rel) == want + b"END"
    assert (env.upper / env.sp.relative_to(env.root) / rel).read_bytes() == want + b"END"


def test_write_through_a_symlinked_directory_path(env):
    via = env.root / "lib64" / env.sp.relative_to(env.root / "lib") / "six.py"
    with open(via, "ab") as f:
        f.write(b"#via lib64\n")
    assert read(env.six) == env.six_data + b"#via lib64\n"
    dfd = os.open(env.sp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = os.open("pip/py.typed", os.O_WRONLY | os.O_TRUNC, dir_fd=dfd)
        os.write(fd, b"relative")
        os.close(fd)
    finally:
        os.close(dfd)
    assert read(env.sp / "pip" / "py.typed") == b"relative"
