"""The POSIX suite: opening, reading and writing files, each on store files and
on files of the writable layer, with the exact errno of every failure path
(the env each test gets, and the helpers, are in posix_common.py):
open/creat with O_CREAT|O_EXCL (EEXIST), O_TRUNC on a store file (copy-up,
truncated) and on a rendered template, O_APPEND, O_RDWR without truncation,
write then read back, pwrite beyond EOF (holes), truncate/ftruncate grow and
shrink, posix_fallocate and fallocate (KEEP_SIZE, PUNCH_HOLE), st_size and
st_blocks, fsync/fdatasync (files and directories), mmap, O_DIRECT,
O_TMPFILE, copy_file_range and sendfile, ioctl (ENOTTY), the wrong file type
(EISDIR, ENOTDIR), reopening with O_NOFOLLOW (sqlite, tar, cp -a), a
byte-exact copy-up of the largest store file, and writes through a
symlinked directory (lib64) and relative to a directory fd.
"""
import ctypes
import errno
import fcntl
import mmap
import os
import shutil
import stat

import pytest

from conftest import run
from posix_common import _libc, fails, read, write_file

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


# ---- creating and opening --------------------------------------------------------------


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


# ---- reopening, allocating, copying up -------------------------------------------------


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
