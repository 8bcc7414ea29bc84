"""The POSIX suite: timestamps and inode numbers (the env each test gets, and
the helpers, are in posix_common.py): utimensat (os.utime with ns,
UTIME_NOW, touch -d, on symlinks without following them) on store entries
and the writable layer's, and the timestamp rules: a write or a truncate
updates mtime and ctime (a copy-up alone keeps the store file's mtime),
chmod/chown only ctime, creating, removing and renaming entries update their
directories' mtime and ctime; st_ino across copy-up and rename (a store
file's changes when the env gets its own copy, documented, as overlayfs
without xino).
"""
import os
import time

import pytest

from conftest import run
from posix_common import read, write_file

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

TICK = 0.03  # longer than the host file system's timestamp granularity


# ---- timestamps, inode numbers ---------------------------------------------------------


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
