"""The POSIX suite: names in directories, on store entries and on entries of the
writable layer, with the exact errno of every failure path (the env each
test gets, and the helpers, are in posix_common.py): unlink (lookup ENOENT
afterwards, gone from the listing, the name made again is a fresh empty
file, the store's version never comes back), unlink of a directory (EISDIR),
rmdir of non-empty directories including ones whose entries are only in the
store (ENOTEMPTY), rmdir of a store directory emptied entry by entry, rm -rf,
rmdir of a file (ENOTDIR), mkdir of an existing name (EEXIST), names re-used
with another type; hard links (st_nlink, st_ino, writes seen through both
names; store files answer EXDEV, documented), symlinks, readlink (EINVAL),
FIFOs, device nodes, unix sockets, 255/256-byte names (ENAMETOOLONG),
directory link counts (a merged directory's is 1, documented); unlinked open
files (the fd keeps working, no .fuse_hidden* entry, the parent can be
removed), a rename over a file another fd has open; readdir after 500
creates and unlinks (no loss, no duplicates, right d_type), and while
entries are unlinked during the listing.
"""
import errno
import os
import shutil
import socket
import stat

import pytest

from conftest import run
from posix_common import fails, listing, read, write_file

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


# ---- unlink, rmdir, mkdir --------------------------------------------------------------


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


# ---- links, symlinks, special files, names ---------------------------------------------


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


def test_directory_link_counts(env):
    os.mkdir(env.root / "d")
    os.mkdir(env.root / "d" / "a")
    os.mkdir(env.root / "d" / "b")
    write_file(env.root / "d" / "f", b"")
    assert os.stat(env.root / "d").st_nlink == 4  # as on disk: 2 + subdirectories
    assert os.stat(env.root / "d" / "a").st_nlink == 2
    # documented: a directory merged with the store's says 1 ("unknown"), as overlayfs
    assert os.stat(env.sp).st_nlink == 1


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
