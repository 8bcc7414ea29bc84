"""A group store: one store shared by the accounts of a group (CI runners
under several accounts), with two real accounts.

What each account may do to the other (docs/design.md, "Group stores"):
nothing that changes what the other's envs show or run. Every object
belongs to whoever inserted it, and its owner can always chmod it and
write to it; so another account's object is checked against its name on
every read path, and a change after the check fails the read with EIO.
The tests play the owner who tampers: a module's bytecode, a console
script's template, a package manifest (swapped for another valid one),
and a large file changed while the other account reads it.

Accounts are real (useradd), and their daemons are their own: the suite
runs in a private mount namespace where /dev/fuse is usable by everyone
(fusermount3 mounts for them, as it does on an ordinary desktop).
"""
import contextlib
import ctypes
import os
import pwd
import grp
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, run

GROUP = "venvfs-tg"
USERS = ("venvfs-ta", "venvfs-tb")
PY = "/usr/bin/python3"
SP = "lib/python3.11/site-packages"
MAGIC = bytes.fromhex("a70d0d0a")  # CPython 3.11 bytecode

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("setpriv", "useradd", "fusermount3", "unshare")),
    reason="needs root, setpriv, useradd and fusermount3 to make two accounts and let them mount")


# ---- two accounts, a group, and /dev/fuse for them ------------------------------------------


@pytest.fixture(scope="module")
def accounts():
    made = []
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        run(["groupadd", GROUP])
        made.append(("groupdel", GROUP))
    for u in USERS:
        try:
            pwd.getpwnam(u)
        except KeyError:
            run(["useradd", "-M", "-U", "-G", GROUP, "-s", "/bin/sh", u])
            made.insert(0, ("userdel", u))
    yield
    for cmd, name in made:
        subprocess.run([cmd, name], capture_output=True)


def private_dev_fuse(where):
    """This process (and its children) in a mount namespace of its own, where
    /dev/fuse is a node everyone may open (the machine's is 0600)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        pytest.skip(f"unshare: {os.strerror(ctypes.get_errno())}")
    run(["mount", "--make-rprivate", "/"])
    where.mkdir()
    run(["mount", "-t", "tmpfs", "none", where])
    os.mknod(where / "fuse", 0o666 | stat.S_IFCHR, os.makedev(10, 229))
    os.chmod(where / "fuse", 0o666)
    run(["mount", "--bind", where / "fuse", "/dev/fuse"])


class Account:
    def __init__(self, name, base, store):
        self.name = name
        self.uid = pwd.getpwnam(name).pw_uid
        self.home = base / name
        self.home.mkdir()
        os.chown(self.home, self.uid, -1)
        self.store = store
        self.bin = base / "venvfs"
        self.mnt = self.home / "mnt"

    def run(self, *cmd, check=True, **kw):
        env = {"HOME": str(self.home), "VENVFS_HOME": str(self.store), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        return run(["setpriv", f"--reuid={self.name}", f"--regid={self.name}", "--init-groups", "env", "-i",
                    *[f"{k}={v}" for k, v in env.items()], *cmd], check=check, **kw)

    def venvfs(self, *args, check=True):
        return self.run(self.bin, *args, check=check)

    def mount(self):
        self.mnt.mkdir(exist_ok=True)
        os.chown(self.mnt, self.uid, -1)
        self.venvfs("mount", self.mnt)

    def umount(self):
        self.venvfs("umount", self.mnt, check=False)
        subprocess.run(["fusermount3", "-u", "-q", "-z", str(self.mnt)], capture_output=True)


@pytest.fixture(scope="module")
def world(accounts, tmp_path_factory):
    """A group store made by root, and env a (account a) and env b (account
    b) imported from venvs each account made itself, with the same packages
    and the same 3 MiB data file."""
    base = Path(tempfile.mkdtemp(prefix="venvfs-group-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        shutil.copy(BIN, base / "venvfs")  # where every account can run it
        wh = base / "wheels"
        wh.mkdir()
        for w in (Path(os.environ.get("VENVFS_TEST_CACHE", "")) / "wheels").glob("*.whl"):
            shutil.copy(w, wh)
        (base / "big.bin").write_bytes(os.urandom(3 << 20))
        (base / "secret").write_bytes(b"TOKEN=" + os.urandom(16).hex().encode() + b"\n")
        for p in base.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() or p.name == "venvfs" else 0o644)
        private_dev_fuse(base / "dev")
        store = base / "store"
        run([base / "venvfs", "--home", store, "store", "init", "--group", GROUP])
        a, b = Account(USERS[0], base, store), Account(USERS[1], base, store)
        for acct, env in ((a, "a"), (b, "b")):
            v = acct.home / f"venv-{env}"
            acct.run(PY, "-m", "venv", v)
            acct.run(v / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wh, "six", "flask")
            acct.run("cp", base / "big.bin", base / "secret", v)
            acct.run("chmod", "600", v / "secret")
            out = acct.venvfs("import", v, "--name", env).stdout
            acct.imported = out
        yield base, store, a, b
    finally:
        for u in USERS:
            subprocess.run(["pkill", "-u", u], capture_output=True)
        for m in base.glob("*/mnt"):
            subprocess.run(["fusermount3", "-u", "-q", "-z", str(m)], capture_output=True)
        subprocess.run(["umount", "-l", str(base / "dev")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def objects_of(store, data):
    """Object files (Path) holding exactly data."""
    return [p for p in (store / "objects").glob("*/*") if p.stat().st_size == len(data) and p.read_bytes() == data]


def package_manifest(store, env, name):
    """objects/ab/cd... of package name of env (from the env manifest)."""
    for line in (store / "envs" / env / "env").read_text().splitlines():
        f = line.split()
        if f and f[0] == "package" and f[2] == name:
            return store / "objects" / f[1][:2] / f[1][2:]
    raise AssertionError(f"no package {name} in env {env}")


class Tampered:
    """Account acct rewrites its own object p (chmod u+w, write) to content;
    put back as it was (by root) afterwards."""

    def __init__(self, acct, p, content):
        self.acct, self.p, self.content = acct, p, content

    def __enter__(self):
        self.orig = self.p.read_bytes()
        assert self.p.stat().st_uid == self.acct.uid
        self.acct.run("chmod", "u+w", self.p)
        src = Path(tempfile.mkdtemp(dir="/tmp")) / "content"
        src.write_bytes(self.content)
        os.chmod(src.parent, 0o755)
        os.chmod(src, 0o644)
        self.acct.run("cp", src, self.p)  # O_TRUNC: the same file, rewritten by its owner
        shutil.rmtree(src.parent)
        assert self.p.read_bytes() == self.content
        return self

    def __exit__(self, *exc):
        self.p.write_bytes(self.orig)
        os.chmod(self.p, 0o444)


# ---- the store and what each account made in it -------------------------------------------


def test_directories_are_the_groups_and_imports_share(world):
    base, store, a, b = world
    gid = grp.getgrnam(GROUP).gr_gid
    assert (store / "venvfs-store").read_text() == f"venvfs store 1\ngroup {gid}\n"
    # made by the accounts with their umask 022: still group-writable, setgid, sticky
    for d in [store / "packages" / "six", store / "packages" / "flask", store / "objects" / "00", store / "envs",
              store / "tmp", store / "run", store / "cache", store / "log"]:
        st = d.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o3775, gid), d
    assert (store / "envs" / "a").stat().st_uid == a.uid and (store / "envs" / "b").stat().st_uid == b.uid
    assert (store / "envs" / "b").stat().st_gid == gid
    # b's first import: the packages a stored were b's too (no 0444 index file in the way)
    assert "new in the store" in b.imported
    six_py = (a.home / "venv-a" / SP / "six.py").read_bytes()
    [obj] = objects_of(store, six_py)
    assert obj.stat().st_uid == a.uid and stat.S_IMODE(obj.stat().st_mode) == 0o444
    # each account its own import cache
    caches = sorted(p.name.rsplit(".", 1)[1] for p in (store / "cache").glob("import-*"))
    assert caches == [f"u{a.uid}", f"u{b.uid}"], caches


def test_private_files_stay_private(world):
    """A 0600 file's object is its owner's alone; the other account with the
    same content gets an object of its own."""
    base, store, a, b = world
    objs = objects_of(store, (base / "secret").read_bytes())
    assert sorted((p.stat().st_uid, stat.S_IMODE(p.stat().st_mode)) for p in objs) == \
        sorted([(a.uid, 0o400), (b.uid, 0o400)])
    for p in objs:
        other = b if p.stat().st_uid == a.uid else a
        assert other.run("cat", p, check=False).returncode != 0


def test_accounts_cannot_remove_or_write_each_others(world):
    base, store, a, b = world
    r = a.venvfs("rm", "b", check=False)
    assert r.returncode != 0 and (store / "envs" / "b" / "env").exists(), r.stderr
    # b's own objects (its secret) cannot be removed by a; a's own it can
    [theirs] = [p for p in objects_of(store, (base / "secret").read_bytes()) if p.stat().st_uid == b.uid]
    assert a.run("rm", "-f", theirs, check=False).returncode != 0 and theirs.exists()
    r = a.venvfs("gc", check=False)
    assert r.returncode != 0 and "group store" in r.stderr and "owner" in r.stderr, r.stderr
    # a's daemon shows b's env read-only, and a's own writable
    a.mount()
    try:
        r = a.run("touch", a.mnt / "b" / "x", check=False)
        assert r.returncode != 0 and "Read-only" in r.stderr, r.stderr
        a.run("touch", a.mnt / "a" / "x")
        a.run("rm", a.mnt / "a" / "x")
        assert a.run(a.mnt / "b" / "bin" / "python", "-c", "import six, flask").returncode == 0
    finally:
        a.umount()
    assert (store / "log" / f"mount.log.u{a.uid}").exists()
    assert not (store / "envs" / "b" / "work").exists() or (store / "envs" / "b" / "work").stat().st_uid == b.uid


# ---- what an owner's change to its objects does to the other account --------------------------


def test_changed_bytecode_and_script_template_are_not_run(world):
    base, store, a, b = world
    marker = base / "ran-a-s-code"
    payload = f"open({str(marker)!r}, 'w').write('pwned')\n"
    # a compiles its own evil six and puts that bytecode in six's object
    pyc_rel = f"{SP}/__pycache__/six.cpython-311.pyc"
    pycs = [p for p in (store / "objects").glob("*/*") if p.stat().st_uid == a.uid and
            p.read_bytes()[:4] == MAGIC and b"Utilities for writing code that runs on Python 2" in p.read_bytes()]
    assert pycs
    evil = a.home / "evil"
    a.run("mkdir", "-p", evil)
    a.run("sh", "-c", f"cp {a.home}/venv-a/{SP}/six.py {evil}/six.py && echo \"{payload.strip()}\" >> {evil}/six.py")
    a.run(PY, "-c", f"import py_compile; py_compile.compile({str(evil / 'six.py')!r}, cfile={str(evil / 'six.pyc')!r})")
    evil_pyc = bytearray((evil / "six.pyc").read_bytes())
    # and flask's console script template runs the payload first
    flask_script = [p for p in (store / "objects").glob("*/*")
                    if p.stat().st_uid == a.uid and p.stat().st_size < 4096 and b"from flask.cli import main" in p.read_bytes()]
    assert flask_script
    with contextlib.ExitStack() as tampered:
        for pyc in pycs:
            evil_pyc[8:16] = pyc.read_bytes()[8:16]  # the stored source mtime and size: taken as valid
            tampered.enter_context(Tampered(a, pyc, bytes(evil_pyc)))
        tampered.enter_context(Tampered(a, flask_script[0], payload.encode() + flask_script[0].read_bytes()))
        b.mount()
        try:
            r = b.run("sh", "-c", f"cat {b.mnt / 'b' / pyc_rel} >/dev/null", check=False)
            assert r.returncode != 0 and "Input/output error" in r.stderr, r.stderr
            r = b.run("cat", b.mnt / "b" / "bin" / "flask", check=False)
            assert r.returncode != 0 and "Input/output error" in r.stderr, r.stderr
            log = (store / "log" / f"mount.log.u{b.uid}").read_text()
            assert "does not match its name" in log, log[-3000:]
            # Python, refused the bytecode, compiles six.py again (into b's own layer)
            b.run(b.mnt / "b" / "bin" / "python", "-c", "import six; assert six.PY3")
            b.run(b.mnt / "b" / "bin" / "flask", "--version", check=False)
            assert not marker.exists(), "b ran code a put into its objects"
        finally:
            b.umount()
        # exporting what a changed fails, naming the object
        r = b.venvfs("export", "b", b.home / "exported", check=False)
        assert r.returncode != 0 and "objects/" in r.stderr, r.stderr
        assert not (b.home / "exported").exists()
    assert not marker.exists()


def test_a_swapped_package_manifest_is_refused(world):
    """a rewrites six's manifest (which it stored) with flask's: a valid
    manifest, listing other files; b's env must not show flask's files as six."""
    base, store, a, b = world
    six_m, flask_m = package_manifest(store, "b", "six"), package_manifest(store, "b", "flask")
    assert six_m.stat().st_uid == a.uid
    with Tampered(a, six_m, flask_m.read_bytes()):
        b.mount()
        try:
            r = b.run("ls", b.mnt / "b" / SP, check=False)
            assert r.returncode != 0 and "Input/output error" in r.stderr, (r.stdout, r.stderr)
        finally:
            b.umount()
        # nor is it taken for the env a new create composes
        r = b.venvfs("create", "c", "six", "flask", check=False)
        if r.returncode == 0:
            b.mount()
            try:
                r = b.run("ls", b.mnt / "c" / SP, check=False)
                assert r.returncode != 0 or "six.py" in r.stdout, r.stdout
            finally:
                b.umount()
            b.venvfs("rm", "c")


def test_a_large_file_changed_is_never_served(world):
    """The 3 MiB data file both venvs have is a's object. Changed before b's
    daemon opens it: checked whole first, EIO, none of a's bytes. Changed
    while b reads it (b read its head, a overwrites the tail): b's read of
    the tail fails with EIO rather than return a's bytes."""
    base, store, a, b = world
    orig = (base / "big.bin").read_bytes()
    [big] = objects_of(store, orig)
    assert big.stat().st_uid == a.uid
    changed = orig[:2 << 20] + b"A" * 65536 + orig[(2 << 20) + 65536:]
    with Tampered(a, big, changed):
        b.mount()
        try:
            r = b.run("cat", b.mnt / "b" / "big.bin", check=False, text=False)
            assert r.returncode != 0 and b"A" * 4096 not in r.stdout, r.stderr
        finally:
            b.umount()
    reader = (f"import sys\nf = open({str(b.mnt / 'b' / 'big.bin')!r}, 'rb', buffering=0)\n"
              "f.read(65536); print('ready', flush=True); sys.stdin.readline()\n"
              "f.seek(2 << 20)\ntry:\n    print(f.read(16).hex())\nexcept OSError as e:\n    print('error', e.errno)\n")
    b.mount()
    try:
        p = subprocess.Popen(["setpriv", f"--reuid={b.name}", f"--regid={b.name}", "--init-groups",
                              b.mnt / "b" / "bin" / "python", "-c", reader],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        with Tampered(a, big, changed):
            out, _ = p.communicate("go\n", timeout=60)
        assert out.strip() == "error 5", out
    finally:
        b.umount()


def test_owner_collects_and_the_store_is_whole(world):
    base, store, a, b = world
    run([base / "venvfs", "--home", store, "gc"])
    out = run([base / "venvfs", "--home", store, "store", "verify"]).stdout
    assert "all good" in out
    b.mount()
    try:
        b.run(b.mnt / "b" / "bin" / "python", "-c", "import six, flask")
        b.run(b.mnt / "b" / "bin" / "flask", "--version")
    finally:
        b.umount()
