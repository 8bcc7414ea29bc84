"""The POSIX suite: extended attributes (the env each test gets, and the
helpers, are in posix_common.py): off by default (EOPNOTSUPP; served, they
cost a round trip per write), and, on a mount of their own with --xattrs,
user.* and trusted.* attributes as on ext4 on files and directories of the
writable layer and on store entries (setting one copies up, as chmod does),
the layer's marker attribute never shown and never set, attributes kept by
absorb (which leaves a distribution that has them out of the store) and by
cp -a.
"""
import errno
import os

import pytest

from conftest import Mount, Venvfs, run
from posix_common import Env, fails, read, write_file

pytest_plugins = ["posix_common"]  # the suite's fixtures, one mount for every file
pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


# ---- extended attributes ---------------------------------------------------------------


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
