"""venvfs mount: every env is a real venv, served from the store.

Real mounts (always unmounted, even when a test fails), real interpreters,
real wheels from PyPI. Views are compared with the native venvs they were
imported from.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BASE_PYTHON, BIN, Mount, Venvfs, expect_uring, kernel_has_passthrough, make_venv, run

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


@pytest.fixture(scope="module")
def web_venv(tmp_path_factory, wheelhouse):
    return make_venv(tmp_path_factory.mktemp("web") / "web", ["requests", "numpy", "flask"], wheelhouse)


def py(env_dir, code, **kw):
    return run([Path(env_dir) / "bin" / "python", "-c", code], **kw).stdout


# ---- the mount and its envs -------------------------------------------------------------


def test_envs_appear_and_disappear_without_remount(venvfs, mnt, web_venv, wheelhouse):
    venvfs("import", web_venv)
    mnt.mount()
    assert os.listdir(mnt.path) == ["web"]
    assert not (mnt.path / "later").exists()  # a negative lookup the kernel may cache
    venvfs("create", "later", "--python", BASE_PYTHON, "idna")
    venvfs("clone", "web", "webclone")
    time.sleep(0.2)
    assert sorted(os.listdir(mnt.path)) == ["later", "web", "webclone"]
    assert (mnt.path / "later" / "pyvenv.cfg").exists()
    py(mnt.path / "later", "import idna")
    py(mnt.path / "webclone", "import flask")
    venvfs("rm", "later")
    time.sleep(0.2)
    assert sorted(os.listdir(mnt.path)) == ["web", "webclone"]
    assert not (mnt.path / "later").exists()


def test_view_is_the_native_venv(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    mnt.mount()
    view = mnt.path / "web"
    probe = ("import sys, json, importlib.metadata as m; print(json.dumps([sys.prefix, sys.exec_prefix, "
             "sys.base_prefix, sys.path, sorted((d.metadata['Name'], d.version) for d in m.distributions())]))")
    nat = json.loads(py(web_venv, probe))
    vw = json.loads(py(view, probe))
    assert vw[0] == vw[1] == str(view)
    assert vw[2] == nat[2]
    assert vw[3] == [p.replace(str(web_venv), str(view)) for p in nat[3]]
    assert vw[4] == nat[4]
    for cmd in (["-m", "pip", "list"], ["-m", "pip", "freeze", "--all"], ["-m", "pip", "check"]):
        assert run([view / "bin" / "python", *cmd]).stdout == run([web_venv / "bin" / "python", *cmd]).stdout
    # every top-level module of every package imports as it does natively
    tops = sorted({line.split("/")[0].split(",")[0].removesuffix(".py")
                   for rec in web_venv.glob("lib/python3.*/site-packages/*.dist-info/RECORD")
                   for line in rec.read_text().splitlines()
                   if not line.startswith(("..", "/")) and ".dist-info" not in line.split("/")[0]
                   and not line.split("/")[0].endswith((".pth", ".data")) and "__pycache__" not in line.split("/")[0]})
    code = ("import importlib, json, sys\nres = {}\nfor t in %r:\n    try:\n        importlib.import_module(t)\n"
            "        res[t] = 'ok'\n    except BaseException as e:\n        res[t] = type(e).__name__\nprint(json.dumps(res))") % tops
    assert json.loads(py(view, code)) == json.loads(py(web_venv, code))
    # console scripts run
    assert "Flask" in run([view / "bin" / "flask", "--version"]).stdout
    assert str(view) in run([view / "bin" / "pip", "--version"]).stdout
    run([view / "bin" / "normalizer", "--version"])


def test_view_layout(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    venvfs("create", "fresh", "--python", BASE_PYTHON, "flask")
    mnt.mount()
    for name in ["web", "fresh"]:
        view = mnt.path / name
        cfg = dict(l.split(" = ", 1) for l in (view / "pyvenv.cfg").read_text().splitlines() if " = " in l)
        assert cfg["home"] and cfg["version"].startswith("3.") and cfg["include-system-site-packages"] == "false"
        assert os.path.isabs(cfg["executable"]) and str(view) in cfg["command"]
        for p in ["python", "python3", f"python3.{sys.version_info[1]}"]:
            assert (view / "bin" / p).is_symlink()
            assert os.path.realpath(view / "bin" / p) == os.path.realpath(BASE_PYTHON)
        for a in ["activate", "activate.fish", "activate.csh", "Activate.ps1"]:
            assert (view / "bin" / a).is_file()
        for a in ["activate", "activate.fish", "activate.csh"]:
            assert str(view) in (view / "bin" / a).read_text()
        assert (view / "bin" / "flask").read_text().startswith(f"#!{view}/bin/python")
        assert (view / "include").is_dir()
        assert os.readlink(view / "lib64") == "lib"
        assert (view / "lib" / f"python3.{sys.version_info[1]}" / "site-packages" / "flask").is_dir()
        # `source bin/activate` works as with any venv
        out = run(["bash", "-c", f"source '{view}/bin/activate' && command -v python && echo $VIRTUAL_ENV && "
                   "python -c 'import sys; print(sys.prefix)'"]).stdout.split()
        assert out == [f"{view}/bin/python", str(view), str(view)]


def test_long_mount_path_uses_trampolines(tmp_path, venvfs, wheelhouse):
    venv = make_venv(tmp_path / "src", ["flask"], wheelhouse)
    venvfs("import", venv, "--name", "w")
    m = Mount(venvfs, tmp_path / ("m" * 110) / "mnt")
    try:
        m.mount()
        script = (m.path / "w" / "bin" / "flask").read_text()
        assert script.startswith("#!/bin/sh\n'''exec' ")
        assert "Flask" in run([m.path / "w" / "bin" / "flask", "--version"]).stdout
    finally:
        m.umount()


def test_python_writes_no_bytecode(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    mnt.mount()
    view = mnt.path / "web"
    before = mnt.stats()
    py(view, "import numpy, requests, flask, werkzeug, jinja2, idna, urllib3")
    after = mnt.stats()
    for op in ["create", "mkdir", "write", "setattr", "rename", "unlink"]:
        assert after.get(op, 0) == before.get(op, 0), (op, before, after)
    if shutil.which("strace"):
        trace = run(["strace", "-f", "-qq", "-e", "trace=openat,mkdir,rename,unlink", "-e", "signal=none",
                     view / "bin" / "python", "-c", "import numpy, requests, flask"]).stderr
        writes = [l for l in trace.splitlines() if str(view) in l and
                  ("O_WRONLY" in l or "O_CREAT" in l or "O_RDWR" in l or "mkdir" in l or "rename" in l)]
        assert writes == []


def test_inode_numbers_stable_and_shared(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    venvfs("clone", "web", "twin")
    mnt.mount()
    paths = ["web", "web/bin", "web/bin/flask", "web/pyvenv.cfg", "web/lib64",
             "web/lib/python3.11/site-packages/numpy/__init__.py", "web/lib/python3.11/site-packages/flask"]
    paths = [p.replace("python3.11", f"python3.{sys.version_info[1]}") for p in paths]
    first = {p: os.lstat(mnt.path / p).st_ino for p in paths}
    # identical store content is one inode in every env (one page cache)
    a = mnt.path / paths[5]
    b = mnt.path / paths[5].replace("web/", "twin/", 1)
    assert os.stat(a).st_ino == os.stat(b).st_ino
    mnt.umount()
    mnt.mount()
    assert {p: os.lstat(mnt.path / p).st_ino for p in paths} == first


def test_no_store_paths_leak(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    mnt.mount()
    view = mnt.path / "web"
    home = str(venvfs.home)
    for dirpath, dirnames, filenames in os.walk(view):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                assert home not in os.readlink(p)
            real = os.path.realpath(p)
            assert not real.startswith(home), p
    assert py(view, "import os, flask; print(os.path.realpath(flask.__file__))").startswith(str(view))


def test_directory_mtimes_follow_listing(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    mnt.mount()
    mnt_root_before = os.stat(mnt.path).st_mtime_ns
    time.sleep(0.05)
    venvfs("create", "b", "--python", BASE_PYTHON, "idna")
    time.sleep(0.2)
    assert os.stat(mnt.path).st_mtime_ns != mnt_root_before


# ---- faults and bad input -------------------------------------------------------------


def object_of(venvfs, env_dir, relpath):
    """The store object behind a file of a view: the one with that content."""
    import hashlib

    data = (Path(env_dir) / relpath).read_bytes()
    for p in (venvfs.home / "objects").rglob("*"):
        if p.is_file() and p.stat().st_size == len(data) and p.read_bytes() == data:
            return p
    raise AssertionError("no object holds " + relpath)


def test_damaged_objects_fail_with_eio(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    venvfs("clone", "web", "other")
    sp = next(web_venv.glob("lib/python3.*/site-packages")).relative_to(web_venv)
    corrupt = object_of(venvfs, web_venv, sp / "flask" / "helpers.py")
    missing = object_of(venvfs, web_venv, sp / "idna" / "core.py")
    corrupt.chmod(0o644)
    data = bytearray(corrupt.read_bytes())
    data[100] ^= 0x20
    corrupt.write_bytes(bytes(data))
    missing.unlink()
    mnt.mount()
    view = mnt.path / "web"
    for rel, obj in [(sp / "flask" / "helpers.py", corrupt), (sp / "idna" / "core.py", missing)]:
        with pytest.raises(OSError) as e:
            (view / rel).read_bytes()
        assert e.value.errno == 5  # EIO
        assert str(obj.relative_to(venvfs.home / "objects")) in mnt.log()
    # the rest of the env, and the other env, keep working
    py(view, "import numpy, requests")
    py(mnt.path / "other", "import numpy, requests")
    assert (mnt.path / "other" / sp / "flask" / "app.py").read_bytes()
    assert int(mnt.stats()["damaged_objects"]) == 2
    p = venvfs("store", "verify", check=False)
    assert p.returncode == 1
    assert str(corrupt.relative_to(venvfs.home)) in p.stdout
    assert str(missing.relative_to(venvfs.home / "objects")) in p.stdout


def test_large_store_files_are_read_from_their_object(venvfs, mnt, web_venv):
    """Store files of 256 KiB and more are opened in passthrough mode, their
    object the backing file (fs/ops.c): the kernel reads and maps them
    itself, no read request reaches the daemon. The object is checked before
    the first open is answered (in the background over 1 MiB): a missing or
    damaged one fails with EIO and the log names it; the others work."""
    import mmap

    venvfs("import", web_venv)
    sos = sorted((p for p in web_venv.rglob("numpy/**/*.so") if p.stat().st_size >= 256 << 10),
                 key=lambda p: p.stat().st_size)
    small = [p for p in sos if p.stat().st_size <= 1 << 20]  # checked before the open is answered
    large = [p for p in sos if p.stat().st_size > 1 << 20]   # checked in the background
    assert len(small) >= 3 and len(large) >= 2, sos
    good, missing, corrupt, corrupt_large = small[0], small[1], small[2], large[0]
    big = large[-1]  # numpy's core library: imported below, so not damaged
    rel = lambda p: p.relative_to(web_venv)
    objs = {p: object_of(venvfs, web_venv, rel(p)) for p in (missing, corrupt, corrupt_large)}
    objs[missing].unlink()
    for p in (corrupt, corrupt_large):
        objs[p].chmod(0o644)
        data = bytearray(objs[p].read_bytes())
        data[len(data) // 2] ^= 0x20
        objs[p].write_bytes(bytes(data))
    mnt.mount()
    view = mnt.path / "web"
    reads = mnt.stats().get("read", 0)
    for p in (good, big):
        assert (view / rel(p)).read_bytes() == p.read_bytes()
        with open(view / rel(p), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == p.read_bytes()
    if kernel_has_passthrough() and "passthrough refused" not in mnt.log():
        assert mnt.stats().get("read", 0) == reads, "reads of large store files reached the daemon"
    for p in (missing, corrupt):
        with pytest.raises(OSError) as e:
            open(view / rel(p), "rb").close()
        assert e.value.errno == 5  # EIO
        assert str(objs[p].relative_to(venvfs.home / "objects")) in mnt.log()
    # over 1 MiB: the first open is answered at once; once the check in the
    # background has found the damage, opens fail
    open(view / rel(corrupt_large), "rb").close()
    deadline = time.time() + 30
    while str(objs[corrupt_large].relative_to(venvfs.home / "objects")) not in mnt.log():
        assert time.time() < deadline, mnt.log()[-2000:]
        time.sleep(0.1)
    with pytest.raises(OSError) as e:
        open(view / rel(corrupt_large), "rb").close()
    assert e.value.errno == 5  # EIO
    assert int(mnt.stats()["damaged_objects"]) == 3
    py(view, "import numpy, requests, flask")  # the rest of the env works


def test_object_changed_after_its_check(venvfs, mnt, web_venv):
    """The daemon hashes an object once (fs/inode.c checked_before): served
    again after the kernel forgot it (drop_caches), it is not hashed again
    unless its file changed since, as a write to it does."""
    venvfs("import", web_venv)
    sp = next(web_venv.glob("lib/python3.*/site-packages")).relative_to(web_venv)
    bad, good = sp / "flask" / "helpers.py", sp / "flask" / "app.py"
    mnt.mount()
    view = mnt.path / "web"
    for rel in (bad, good):
        assert (view / rel).read_bytes() == (web_venv / rel).read_bytes()
    obj = object_of(venvfs, web_venv, bad)
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[100] ^= 0x20
    obj.write_bytes(bytes(data))
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    with pytest.raises(OSError) as e:
        (view / bad).read_bytes()
    assert e.value.errno == 5  # EIO
    assert str(obj.relative_to(venvfs.home / "objects")) in mnt.log()
    assert (view / good).read_bytes() == (web_venv / good).read_bytes()


def test_damaged_package_manifest(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    env = (venvfs.home / "envs" / "web" / "env").read_text()
    line = next(l for l in env.splitlines() if l.startswith("package ") and " idna " in l)
    oid = line.split()[1]
    manifest = venvfs.home / "objects" / oid[:2] / oid[2:]
    manifest.chmod(0o644)
    manifest.write_bytes(manifest.read_bytes()[:-10])
    mnt.mount()
    # the env reads as damaged: showing it without idna would have pip
    # take idna for not installed (its files vanished, before)
    with pytest.raises(OSError) as e:
        os.stat(mnt.path / "web" / "pyvenv.cfg")
    assert e.value.errno == errno.EIO, e.value
    assert "idna" in mnt.log() and oid[2:] in mnt.log()
    assert venvfs("store", "verify", check=False).returncode == 1


def test_env_torn_by_a_crash(venvfs, mnt, web_venv):
    """`venvfs create` waits for no disk write (docs/design.md, crash safety): a
    power cut soon after it can leave the env's name with an empty or cut
    manifest, as delayed allocation does. Made here by truncating it: the env
    reads as damaged and says why, the others work, verify reports it, a
    create of that name replaces it and gc removes it."""
    venvfs("import", web_venv)
    venvfs("create", "fresh", "--python", BASE_PYTHON, "idna")
    venvfs("create", "gone", "--python", BASE_PYTHON, "idna")
    for name, keep in [("fresh", 0), ("gone", 40)]:
        m = venvfs.home / "envs" / name / "env"
        m.write_bytes(m.read_bytes()[:keep])
    mnt.mount()
    with pytest.raises(OSError) as e:
        os.stat(mnt.path / "fresh" / "pyvenv.cfg")
    assert e.value.errno == 5  # EIO
    assert "envs/fresh/env: incomplete env manifest" in mnt.log()
    py(mnt.path / "web", "import numpy, flask")
    p = venvfs("store", "verify", check=False)
    assert p.returncode == 1 and "envs/gone/env: incomplete env manifest" in p.stdout + p.stderr
    venvfs("create", "fresh", "--python", BASE_PYTHON, "idna")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            py(mnt.path / "fresh", "import idna")
            break
        except (OSError, subprocess.CalledProcessError, SystemExit):
            time.sleep(0.2)
    py(mnt.path / "fresh", "import idna")
    assert "1 unfinished envs" in venvfs("gc").stdout
    assert [l.split()[0] for l in venvfs("ls").stdout.splitlines()[1:]] == ["fresh", "web"]
    # a file written into a fresh env and fsynced: the env is durable first
    site = next((mnt.path / "fresh").glob("lib/python3.*/site-packages"))
    with open(site / "mine.py", "w") as f:
        f.write("x = 1\n")
        f.flush()
        os.fsync(f.fileno())
    assert int(mnt.stats()["fsync"]) >= 1


def test_store_file_pages_are_cached_once(venvfs, mnt, web_venv):
    """A store file read through a view is cached in the view's inode, which
    every env shares, and not a second time in its object."""
    venvfs("import", web_venv)
    mnt.mount()
    sp = next(web_venv.glob("lib/python3.*/site-packages")).relative_to(web_venv)
    rel = sp / "flask" / "app.py"
    expected = (web_venv / rel).read_bytes()
    obj = object_of(venvfs, web_venv, rel)
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    assert (mnt.path / "web" / rel).read_bytes() == expected
    cached = run(["fincore", "--bytes", "--noheadings", "--output", "RES", obj]).stdout.strip()
    assert int(cached) == 0, f"{obj}: {cached} bytes of the object stayed cached"


def test_small_store_files_are_cached_at_first_open(venvfs, mnt, web_venv):
    """A store file under 256 KiB is put in the page cache by its first open
    (fs/ops.c, fill_page_cache): no READ request reaches the daemon, however
    many readers open it at once (the same file in four envs is one inode,
    so most opens meet a first one still filling). What they read is what
    O_DIRECT reads, which bypass the page cache, get from the daemon: the
    native file, or for a pyc the store's (docs/design.md, pyc handling)."""
    import mmap
    import random
    from concurrent.futures import ThreadPoolExecutor

    venvfs("import", web_venv)
    for i in range(3):
        venvfs("clone", "web", f"c{i}")
    sp = next(web_venv.glob("lib/python3.*/site-packages"))
    # (a RECORD is rendered for its env, not a store file)
    files = sorted(p.relative_to(web_venv) for p in sp.rglob("*")
                   if p.is_file() and not p.is_symlink() and 0 < p.stat().st_size < 256 << 10
                   and p.name != "RECORD")
    assert len(files) > 500
    mnt.mount()
    envs = [mnt.path / e for e in ("web", "c0", "c1", "c2")]

    def read_all(k):
        order = files[:]
        random.Random(k).shuffle(order)
        return {rel: (envs[k % 4] / rel).read_bytes() for rel in order}

    with ThreadPoolExecutor(16) as ex:
        seen = list(ex.map(read_all, range(16)))
    so = next(rel for rel in files if rel.suffix == ".so")
    with open(envs[1] / so, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == seen[0][so]
    stats = mnt.stats()
    # Without the fill every file costs a READ. With it, a READ comes only
    # for a page reclaimed before it was read (these machines' kernels
    # reclaim cold pages proactively, DAMON: seen 0 to 33 here).
    assert stats.get("read", 0) < len(files) // 20, f"{stats.get('read')} reads of small store files"
    # one fill per inode: at least one per distinct content, never one per env
    assert len(set(seen[0].values())) <= int(stats["filled_at_open"]) <= len(files)
    assert int(stats.get("open.errors", 0)) == 0

    def direct(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            buf = mmap.mmap(-1, 256 << 10)  # page-aligned
            n = os.readv(fd, [buf])
            return buf[:n]
        finally:
            os.close(fd)

    for rel in files:
        want = direct(envs[2] / rel)
        assert all(s[rel] == want for s in seen), rel
        if "__pycache__" not in rel.parts:
            assert want == (web_venv / rel).read_bytes(), rel
    assert mnt.stats().get("read", 0) > 0  # the O_DIRECT reads did reach it


def test_more_store_files_than_descriptors(venvfs, mnt, web_venv):
    """Reading every file of an env, as an editor indexing it does, while the
    kernel keeps them all cached: a small store file holds no descriptor in
    the daemon (fs/inode.c shared_open_object), so a daemon allowed fewer
    descriptors than the env has files serves them all; none reads as
    damaged."""
    venvfs("import", web_venv)
    sp = next(web_venv.glob("lib/python3.*/site-packages"))
    files = [p.relative_to(web_venv) for p in sp.rglob("*")
             if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts and p.name != "RECORD"]
    assert len(files) > 2000
    mnt.mount("--max-fds", "1000")
    view = mnt.path / "web"
    for rel in files:
        assert (view / rel).read_bytes() == (web_venv / rel).read_bytes(), rel
    stats = mnt.stats()
    assert int(stats["damaged_objects"]) == 0
    assert stats.get("open.errors", 0) == 0 and stats.get("read.errors", 0) == 0
    assert "cannot be opened" not in mnt.log()


def test_many_concurrent_readers(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    for i in range(7):
        venvfs("clone", "web", f"w{i}")
    mnt.mount()
    envs = ["web"] + [f"w{i}" for i in range(7)]
    procs = [subprocess.Popen([mnt.path / envs[i % 8] / "bin" / "python", "-c",
                               "import numpy, requests, flask, jinja2, urllib3; print('ok')"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(16)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err
    assert int(mnt.stats().get("read.errors", 0)) == 0


def as_nobody(cmd):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd],
                          capture_output=True, text=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_private_by_default_and_permissions_with_allow_other(tmp_path, venvfs, wheelhouse):
    import tempfile

    venv = make_venv(tmp_path / "src", ["six"], wheelhouse)
    secret = next(venv.glob("lib/python3.*/site-packages")) / "secret.txt"
    secret.write_text("only root\n")
    secret.chmod(0o600)
    venvfs("import", venv, "--name", "p")
    # a mount point other users can reach (pytest's tmp dirs are 0700)
    top = Path(tempfile.mkdtemp(prefix="venvfs-perm-", dir="/tmp"))
    top.chmod(0o755)
    m = Mount(venvfs, top / "m")
    m.path.chmod(0o755)
    try:
        m.mount()
        assert as_nobody(["ls", m.path / "p"]).returncode != 0      # not even listable
        m.umount()
        m.mount("--allow-other")
        view = m.path / "p"
        assert as_nobody(["cat", view / "pyvenv.cfg"]).returncode == 0
        r = as_nobody(["cat", view / secret.relative_to(venv)])
        assert r.returncode != 0 and "Permission denied" in r.stderr
    finally:
        m.umount()
        shutil.rmtree(top, ignore_errors=True)


def test_kill9_then_mount_again(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    mnt.mount()
    os.kill(mnt.pid(), signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(OSError):
        os.listdir(mnt.path)  # a dead mount: ENOTCONN
    mnt.mount()  # cleans up and mounts again, no manual step
    assert os.listdir(mnt.path) == ["web"]
    py(mnt.path / "web", "import flask")


@pytest.mark.skipif(not os.path.exists("/sys/module/fuse/parameters/enable_uring"),
                    reason="this kernel has no FUSE over io_uring")
@pytest.mark.skipif(not expect_uring(os.environ.get("VENVFS_TEST_MOUNT_ARGS", "").split()),
                    reason="this run mounts with --no-uring or --libfuse-mt (the default run tests the default)")
def test_transport_io_uring_by_default(venvfs, mnt, web_venv):
    """io_uring unless --no-uring, whether the fuse module offered it before or
    the daemon asked for it (and put the switch back); a view reads the same
    either way, from the disk (a worker answers) and from the page cache."""
    param = Path("/sys/module/fuse/parameters/enable_uring")
    before = param.read_text().strip()
    venvfs("import", web_venv)
    init = "numpy/__init__.py"
    site = next((web_venv / "lib").glob("python3.*/site-packages"))
    want = (site / init).read_bytes()
    try:
        for switch, extra, transport in (("N", (), "io_uring"), ("Y", (), "io_uring"),
                                         ("N", ("--no-uring",), "/dev/fuse")):
            param.write_text(switch)
            mnt.mount(*extra)
            assert mnt.stats()["transport"] == transport, mnt.log()[-2000:]
            assert param.read_text().strip() == switch  # as it was
            vsite = next((mnt.path / "web" / "lib").glob("python3.*/site-packages"))
            assert py(mnt.path / "web", "import flask, numpy, requests; print(numpy.__name__)").strip() == "numpy"
            Path("/proc/sys/vm/drop_caches").write_text("1")
            assert (vsite / init).read_bytes() == want
            assert (vsite / init).read_bytes() == want
            mnt.umount()
    finally:
        param.write_text(before)
    assert "requests come through io_uring" in mnt.log()


@pytest.mark.skipif(not os.path.exists("/sys/module/fuse/parameters/enable_uring"),
                    reason="this kernel has no FUSE over io_uring")
@pytest.mark.skipif(not expect_uring(os.environ.get("VENVFS_TEST_MOUNT_ARGS", "").split()),
                    reason="this run mounts with --no-uring or --libfuse-mt (the default run tests the default)")
def test_daemons_mounting_at_once_all_take_io_uring(tmp_path):
    """Each daemon sets the fuse module's enable_uring for its own mount and
    puts it back (fs/uring.c); daemons mounting at the same moment take
    turns, so none is left on /dev/fuse by another's putting it back."""
    param = Path("/sys/module/fuse/parameters/enable_uring")
    before = param.read_text().strip()
    mounts = [Mount(Venvfs(tmp_path / f"store{i}"), tmp_path / f"mnt{i}") for i in range(4)]
    try:
        param.write_text("N")
        env = lambda m: dict(os.environ, VENVFS_HOME=str(m.venvfs.home))
        for attempt in range(3):
            procs = [subprocess.Popen([BIN, "mount", m.path], env=env(m), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT) for m in mounts]
            for m, p in zip(mounts, procs):
                assert p.wait(timeout=60) == 0, p.stdout.read()
                p.stdout.close()
                m.mounted = True
            for m in mounts:
                os.listdir(m.path)
                assert m.stats()["transport"] == "io_uring", (attempt, m.log()[-2000:])
                m.umount()
            assert param.read_text().strip() == "N"
    finally:
        for m in mounts:
            m.umount()
        param.write_text(before)
    for m in mounts:
        m.assert_no_sanitizer_report()


def test_sigterm_and_umount_exit_cleanly(venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    mnt.mount()
    pid = mnt.pid()
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("daemon did not exit on SIGTERM")
    assert not os.path.ismount(mnt.path)
    mnt.mounted = False
    mnt.mount()
    venvfs("umount", mnt.path)
    mnt.mounted = False
    assert not os.path.ismount(mnt.path)
    assert "exited" in mnt.log()


def test_create_requirements(tmp_path, venvfs, mnt, web_venv):
    venvfs("import", web_venv)
    req = tmp_path / "requirements.txt"
    req.write_text("# pinned\nflask==3.1.3 ; python_version >= '3.8'\nrequests\n--index-url https://example.invalid\n")
    freeze = run([web_venv / "bin" / "python", "-m", "pip", "freeze"]).stdout
    flask_v = next(l.split("==")[1] for l in freeze.splitlines() if l.lower().startswith("flask=="))
    req.write_text(req.read_text().replace("3.1.3", flask_v))
    venvfs("create", "fromreq", "--python", BASE_PYTHON, "-r", req)
    p = venvfs("create", "bad", "--python", BASE_PYTHON, "flask==0.0.1", check=False)
    assert p.returncode == 1 and f"the store has flask {flask_v}" in p.stderr, p.stderr
    assert "bad" not in venvfs("ls").stdout
    p = venvfs("create", "bad", "--python", BASE_PYTHON, "nosuchthing", check=False)
    assert p.returncode == 1 and "no nosuchthing at all" in p.stderr
    venvfs("create", "plus", "--from", "fromreq", "numpy")
    mnt.mount()
    py(mnt.path / "fromreq", "import flask, requests, werkzeug, certifi")
    py(mnt.path / "plus", "import flask, numpy")
