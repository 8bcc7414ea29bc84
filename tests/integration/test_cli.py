"""The venvfs command as scripts and users meet it: which commands make a
store, one daemon a store, listings for scripts (--json), renaming an env,
and what a user who cannot mount is told. Run once (not per transport)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import BIN, Mount, make_venv, run


def test_one_daemon_for_a_store_and_a_mount_point(tmp_path, venvfs, wheelhouse):
    """A second `venvfs mount` of a store succeeded and served every env
    read-only (the reason only in its log); a second mount on the same point
    stacked on the first, and stats/absorb no longer reached the first.
    Both are refused, naming the running mount. A mount point given through a
    symlink works for every command."""
    venv = make_venv(tmp_path / "src", ["six"], wheelhouse)
    venvfs("import", venv, "--name", "a")
    real = tmp_path / "real"
    link = tmp_path / "link"
    m = Mount(venvfs, real)
    link.symlink_to(real)
    try:
        venvfs("mount", link)
        m.mounted = True
        assert (real / "a" / "bin" / "python").exists()
        first = venvfs("stats", link).stdout
        assert f"mount {link}\n" in first and "pid " in first, first  # as given: what envs are rendered for
        assert (real / "a" / "bin" / "activate").read_text().count(f"{link}/a") >= 1
        assert venvfs("stats", real).stdout.split("\n", 3)[:3] == first.split("\n", 3)[:3]
        r = venvfs("mount", real, check=False)
        assert r.returncode == 1 and "FUSE mount already" in r.stderr, r.stderr
        other = tmp_path / "other"
        other.mkdir()
        r = venvfs("mount", other, check=False)
        assert r.returncode == 1 and f"served at {real} already" in r.stderr, r.stderr  # resolved
        assert not os.path.ismount(other)
        # the first daemon is still the one answering, writable
        assert venvfs("stats", real).stdout.split("\n", 3)[:3] == first.split("\n", 3)[:3]
        (real / "a" / "mine.txt").write_text("x")
        venvfs("umount", link)
        m.mounted = False
        assert not os.path.ismount(real)
    finally:
        m.umount()
        # a second mount that was not refused: never left behind
        subprocess.run(["fusermount3", "-u", "-q", "-z", str(tmp_path / "other")], capture_output=True)



def test_listings_for_scripts(venvfs, mnt, tmp_path, wheelhouse):
    """--json on ls, store ls and stats; an option a command has no use for
    is refused, never silently ignored (store ls --json was)."""
    venv = make_venv(tmp_path / "src", ["six"], wheelhouse)
    venvfs("import", venv, "--name", "a+b")
    [e] = json.loads(venvfs("ls", "--json").stdout)
    assert e["name"] == "a+b" and e["python"].startswith("3.") and e["packages"] >= 1, e
    assert e["origin"] == str(venv), e
    pkgs = json.loads(venvfs("store", "ls", "--json").stdout)
    assert any(p["name"] == "six" and p["files"] > 0 and p["envs"] == 1 for p in pkgs), pkgs
    mnt.mount("--absorb-idle", "0", "--no-absorb-on-unmount")
    assert (mnt.path / "a+b" / "bin" / "python").exists()
    # live: what is installed through the mount, before any absorb
    before, stored = e["packages"], e["store_packages"]
    run([mnt.path / "a+b" / "bin" / "python", "-m", "pip", "install", "-q", "--no-index", "--find-links",
         wheelhouse, "idna"])
    [e] = json.loads(venvfs("ls", "--json").stdout)
    assert e["packages"] == before + 1 and e["layer_bytes"] > 0 and e["store_packages"] == stored, e
    # an env remade with another interpreter (its pyvenv.cfg rewritten)
    cfg = mnt.path / "a+b" / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(f"version = {sys.version.split()[0]}", "version = 3.99.1"))
    [e] = json.loads(venvfs("ls", "--json").stdout)
    assert e["python"] == "3.99.1" and e["packages"] == 0, e
    st = json.loads(venvfs("stats", mnt.path, "--json").stdout)
    assert st["mount"] == str(mnt.path) and isinstance(st["pid"], int) and st["rss_kb"] > 0, st
    assert st["ops"]["lookup"]["calls"] >= 1 and "errnos" in st, st
    for args in (["store", "verify", "--json"], ["rm", "--json", "x"], ["ls", "--bogus"]):
        r = venvfs(*args, check=False)
        assert r.returncode == 2 and "venvfs" in r.stderr, (args, r.returncode, r.stderr)



@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("useradd")
                    or os.stat("/dev/fuse").st_mode & 0o006 == 0o006,
                    reason="needs root to make a user who cannot open /dev/fuse")
def test_a_user_who_cannot_mount_is_told_why(tmp_path):
    """As an ordinary user with no access to /dev/fuse, the error pointed at
    a log file that was empty."""
    user = "venvfs-tu"
    if subprocess.run(["id", user], capture_output=True).returncode:
        run(["useradd", "-M", "-U", "-s", "/bin/sh", user])
    work = Path(tempfile.mkdtemp(prefix="venvfs-nofuse."))  # pytest's tmp_path is root's alone
    try:
        work.chmod(0o755)
        shutil.copy(BIN, work / "venvfs")
        (work / "mnt").mkdir()
        run(["chown", "-R", f"{user}:", work])
        r = run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "env", "-i", f"HOME={work}",
                 "PATH=/usr/bin:/bin", f"VENVFS_HOME={work / 'store'}", work / "venvfs", "mount", work / "mnt"],
                check=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert r.returncode == 1, r
    assert "venvfs mount: cannot mount at" in r.stderr and "/dev/fuse" in r.stderr, r.stderr
    assert "see " not in r.stderr and "mount.log" not in r.stderr, r.stderr



def test_mv_renames_an_env(venvfs, mnt, tmp_path, wheelhouse):
    """There was no command to rename an env."""
    venv = make_venv(tmp_path / "src", ["six"], wheelhouse)
    venvfs("import", venv, "--name", "a")
    venvfs("import", venv, "--name", "c")
    mnt.mount("--absorb-idle", "0", "--no-absorb-on-unmount")
    (mnt.path / "a" / "mine.txt").write_text("kept\n")
    r = venvfs("mv", "a", "b", check=False)
    assert r.returncode == 1 and "venvfs umount" in r.stderr, r.stderr
    mnt.umount()
    for args, says in ((["a", "c"], "exists already"), (["nope", "x"], "no env named"), (["a", "../x"], "valid")):
        r = venvfs("mv", *args, check=False)
        assert r.returncode == 1 and says in r.stderr, (args, r.stderr)
    venvfs("mv", "a", "b")
    assert [e["name"] for e in json.loads(venvfs("ls", "--json").stdout)] == ["b", "c"]
    assert "all good" in venvfs("store", "verify").stdout
    mnt.mount()
    view = mnt.path / "b"
    assert (view / "mine.txt").read_text() == "kept\n"
    assert not (mnt.path / "a").exists()
    out = run([view / "bin" / "python", "-c", "import six, sys; print(sys.prefix)"]).stdout.strip()
    assert out == str(view)
    assert run(["bash", "-c", f"source '{view}/bin/activate' && echo $VIRTUAL_ENV"]).stdout.strip() == str(view)
