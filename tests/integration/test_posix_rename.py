"""The POSIX suite: rename and renameat2, with the exact errno of every failure
path (the env each test gets, and the helpers, are in posix_common.py): to a
new name, over a file (atomic replace), store files and whole store
directories (content and subtree intact, old name gone, renamed back, kept
across a remount, st_ino too), directory over a non-empty (ENOTEMPTY) or
empty directory, file over directory (EISDIR), directory over file
(ENOTDIR), into its own subdirectory (EINVAL), two links of one file,
renameat2 RENAME_NOREPLACE (EEXIST), RENAME_EXCHANGE (files of every kind,
directories of the writable layer; EXDEV for a directory with store content,
documented), RENAME_WHITEOUT (EINVAL), the old name of a renamed store
directory re-used, an open fd, a directory fd and the cwd surviving a
rename, rename and mkdir/create in the mount's root (EPERM).
"""
import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import run
from posix_common import (
    RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, fails, listing, read, renameat2, tree, write_file,
)

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


# ---- rename ----------------------------------------------------------------------------


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
