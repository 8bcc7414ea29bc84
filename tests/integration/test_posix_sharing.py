"""The POSIX suite: what processes, threads and envs share, and what they do
not (the env each test gets, and the helpers, are in posix_common.py): flock
and fcntl byte-range locks between two processes (EWOULDBLOCK, F_GETLK
naming the holder); writes in one env never show in a clone holding the
same package; store objects are never modified (hashed before and after,
`venvfs store verify`); a reader holding a store file open while another
process opens it for writing (the reader keeps the old content: its fd is
the store's file, the writer gets the env's own copy); two fds and two
processes writing one file; four processes copying up and appending to one
store file at once; eight threads creating, renaming and unlinking in
shared directories.
"""
import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct

import pytest

from conftest import run
from posix_common import child, fails, finish, listing, read, write_file

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


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
