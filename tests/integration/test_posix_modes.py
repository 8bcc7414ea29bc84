"""The POSIX suite: modes, owners and permissions (the env each test gets, and
the helpers, are in posix_common.py): chmod of files, directories and
templates of the store and of the writable layer (a clone keeps the store's
modes), chown and lchown (as root; chown clears setuid), access(2), exec,
open and listing by mode compared with a directory on disk, the sticky bit
on files (and a file of 01400, the layer's markers' mode, still a file),
modes exactly the caller's under any umask, store directories' (setgid,
sticky, group-writable) across copy-up and rename, and setattr through an fd
opened read-only on a store file before it was copied up (ESTALE,
documented).
"""
import errno
import os
import stat
import subprocess

import pytest

from posix_common import fails, listing, read, write_file

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


# ---- modes, owners, permissions --------------------------------------------------------


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


def test_setattr_through_read_only_fd_of_store_file_is_estale(env):
    # documented: the request does not say which env the shared file is of
    fd = os.open(env.six, os.O_RDONLY)
    try:
        fails(errno.ESTALE, os.fchmod, fd, 0o600)
    finally:
        os.close(fd)
    assert read(env.six) == env.six_data
    assert stat.S_IMODE(os.stat(env.six).st_mode) == 0o644


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
