"""A store on a read-only file system: how images and shared caches ship one.

The store is made read-only with a read-only bind mount (as root). Reading
commands (ls, store ls, store du, store verify, export) and a read-only
mount work on it; commands that would change it fail at once, saying why.
The mount's pid file, control socket, counters and log go to a directory of
the user's (nothing can be written in the store), where umount and stats
find them.
"""
import errno
import os
import subprocess

import pytest

from conftest import Mount, Venvfs, make_venv

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root"),
]
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


@pytest.fixture
def ro_store(tmp_path, wheelhouse):
    """(a Venvfs on a read-only view of a store with env v, the writable store, the venv)"""
    venv = make_venv(tmp_path / "v", ["six"], wheelhouse)
    src = tmp_path / "store"
    Venvfs(src)("import", venv, "--name", "v")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        yield Venvfs(ro), src, venv
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_reading_commands_work(tmp_path, ro_store):
    venvfs, src, venv = ro_store
    assert os.statvfs(venvfs.home).f_flag & os.ST_RDONLY
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    assert "v " in venvfs("ls").stdout
    assert "six" in venvfs("store", "ls").stdout
    assert venvfs.du()["envs"] == 1
    assert "all good" in venvfs("store", "verify").stdout
    dest = tmp_path / "out"
    venvfs("export", "v", dest)
    assert (dest / "pyvenv.cfg").exists()
    six = next(dest.glob("lib/python3.*/site-packages/six.py"))
    assert six.read_bytes() == next(venv.glob("lib/python3.*/site-packages/six.py")).read_bytes()
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before


@pytest.mark.parametrize("cmd", [
    ["rm", "v"],
    ["gc"],
    ["create", "n", "--python", "python3"],
    ["clone", "v", "v2"],
    ["absorb", "v"],
    ["import", "VENV", "--name", "w"],
])
def test_writing_commands_say_why(ro_store, cmd):
    venvfs, src, venv = ro_store
    cmd = [str(venv) if a == "VENV" else a for a in cmd]
    p = venvfs(*cmd, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"the store {venvfs.home} is on a read-only file system" in p.stderr, p.stderr
    assert "v " in venvfs("ls").stdout


@needs_fuse
def test_read_only_mount(tmp_path, ro_store):
    venvfs, src, venv = ro_store
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    m = Mount(venvfs, tmp_path / "mnt")
    try:
        venvfs("mount", m.path)
        m.mounted = True
        env = m.path / "v"
        six = next(env.glob("lib/python3.*/site-packages/six.py"))
        assert six.read_bytes() == next(venv.glob("lib/python3.*/site-packages/six.py")).read_bytes()
        out = subprocess.run([env / "bin" / "python", "-c", "import six; print(six.__file__)"],
                             capture_output=True, text=True, check=True).stdout
        assert out.startswith(str(env))
        for attempt in (lambda: (env / "new.txt").write_text("x"),
                        lambda: open(six, "a").close(),
                        lambda: (env / "newdir").mkdir(),
                        lambda: six.unlink()):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS
        stats = venvfs("stats", m.path).stdout
        assert "envs_loaded 1" in stats, stats
        p = venvfs("umount", m.path)
        m.mounted = False
        assert not os.path.ismount(m.path), p.stderr
    finally:
        m.umount()
    # nothing was written to the store: no run/, log/, views, work
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before
