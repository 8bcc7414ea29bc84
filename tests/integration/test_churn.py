"""Churn: every store operation at once, killed at any moment, nothing lost.

The way CI runners and shared hosts treat a store: many processes import,
create, clone, remove, absorb and collect garbage on one store at the same
time, with and without a mount and with installs through it, and any of
them may be killed. The lock discipline of docs/design.md ("Locks") must
keep every env exactly as its last operation left it, never refuse a gc
because of the churn, and leave a store `venvfs store verify` finds clean.

VENVFS_CHURN_SECONDS sets how long each churn phase runs (default 30, what
CI runs; run it for minutes by hand: VENVFS_CHURN_SECONDS=300).
"""
import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import BASE_PYTHON, BIN, Mount, make_venv, run
from test_absorb import install

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

PYVER = f"python3.{sys.version_info[1]}"
SP = f"lib/{PYVER}/site-packages"
SECONDS = float(os.environ.get("VENVFS_CHURN_SECONDS", "30"))
WORKERS = 8

# the requirement sets envs are made of (wheels of the session's wheelhouse)
SETS = {"six": ["six"], "req": ["requests"], "flask": ["flask"], "six+idna": ["six", "idna"]}
CHECKED = 40  # envs checked file by file after each phase (all are checked for what was written)


def own_listing(root):
    """What a user sees of an env's packages: path -> (mode, sha256) of
    everything under site-packages but bytecode, pip and setuptools (which
    an imported env has and a created one has not) and RECORDs, the env's
    path replaced where a file names it."""
    root = Path(root)
    sp = root / SP
    needle = str(root).encode()
    out = {}
    for dirpath, dirnames, filenames in os.walk(sp):
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(("pip", "setuptools", "_distutils", "pkg_resources"))]
        for name in filenames:
            # RECORD hashes the scripts, which name the env; INSTALLER,
            # REQUESTED and uv's cache info are still the first importer's
            # in a store package, not the env's own (issue 16)
            if name.startswith("distutils-precedence") or name in ("RECORD", "INSTALLER", "REQUESTED",
                                                                 "uv_cache.json"):
                continue
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if not p.is_symlink() else os.readlink(p).encode()
            out[str(p.relative_to(sp))] = (st.st_mode & 0o7777, hashlib.sha256(data.replace(needle, b"@ENV@")).hexdigest())
    return out


class Store:
    def __init__(self, venvfs):
        self.venvfs = venvfs
        self.env = dict(os.environ, VENVFS_HOME=str(venvfs.home))

    def run(self, *args, timeout=300):
        return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def origins(tmp_path_factory, wheelhouse):
    """One venv per requirement set, made by python -m venv + pip."""
    d = tmp_path_factory.mktemp("origins")
    return {k: make_venv(d / k, v, wheelhouse) for k, v in SETS.items()}


def reference(venvfs, origins, tmp_path):
    """The listing each requirement set's env must show."""
    ref = {}
    for k, o in origins.items():
        venvfs("import", o, "--name", f"ref-{k}")
        out = tmp_path / f"export-{k}"
        venvfs("export", f"ref-{k}", out)
        ref[k] = own_listing(out)
    return ref


class Worker(threading.Thread):
    """Runs random operations on its own env names; remembers what each of
    its envs must hold: (requirement set, files written through the mount)."""

    def __init__(self, no, store, origins, mnt, deadline, errors, wheelhouse, uv_cache):
        super().__init__()
        self.no, self.store, self.origins, self.mnt = no, store, origins, mnt
        self.wheelhouse, self.uv_cache = wheelhouse, uv_cache
        self.deadline, self.errors = deadline, errors
        self.envs = {}  # name -> [set key, {relative path: bytes}]
        self.rng = random.Random(no * 7919 + int(time.time()))
        self.counts = {}
        self.serial = 0

    def name(self):
        self.serial += 1
        return f"w{self.no}-{self.serial}"

    def fail(self, what, p):
        self.errors.append(f"worker {self.no}: {what}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")

    def op_create(self):
        k = self.rng.choice(list(SETS))
        n = self.name()
        p = self.store.run("create", n, "--python", BASE_PYTHON, *SETS[k])
        if p.returncode:
            self.fail(f"create {n} {k}", p)
        else:
            self.envs[n] = [k, {}]

    def op_import(self):
        k = self.rng.choice(list(SETS))
        n = self.name()
        p = self.store.run("import", self.origins[k], "--name", n)
        if p.returncode:
            self.fail(f"import {n} from {k}", p)
        else:
            self.envs[n] = [k, {}]

    def op_clone(self):
        if not self.envs:
            return
        src = self.rng.choice(list(self.envs))
        n = self.name()
        p = self.store.run("clone", src, n)
        if p.returncode:
            self.fail(f"clone {src} {n}", p)
        else:
            self.envs[n] = [self.envs[src][0], dict(self.envs[src][1])]

    def op_rm(self):
        if len(self.envs) < 3:
            return
        n = self.rng.choice(list(self.envs))
        p = self.store.run("rm", n)
        if p.returncode:
            self.fail(f"rm {n}", p)
        else:
            del self.envs[n]

    def op_gc(self):
        p = self.store.run("gc")
        if p.returncode:
            self.fail("gc", p)

    def op_write(self):
        """A file written and fsync'ed through the mount: it must stay."""
        if not self.mnt or not self.envs:
            return
        n = self.rng.choice(list(self.envs))
        rel = f"notes-{self.serial}-{self.rng.randrange(1 << 30)}.txt"
        data = os.urandom(64).hex().encode()
        self.serial += 1
        try:
            with open(self.mnt.path / n / rel, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self.errors.append(f"worker {self.no}: writing {n}/{rel}: {e}")
            return
        self.envs[n][1][rel] = data

    def op_install(self):
        """uv pip install through the mount: the daemon's absorbs (idle, or
        asked) race the clones of this env."""
        if not self.mnt:
            return
        six = [n for n, (k, _) in self.envs.items() if k == "six"]
        if not six:
            return
        n = self.rng.choice(six)
        p = subprocess.run([sys.executable, "-m", "uv", "pip", "install", "-q", "--offline", "--no-index",
                            "--find-links", str(self.wheelhouse), "--python", str(self.mnt.path / n / "bin" / "python"),
                            "idna"], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, UV_LINK_MODE="copy", UV_CACHE_DIR=str(self.uv_cache)))
        if p.returncode:
            self.fail(f"uv pip install idna into {n}", p)
        else:
            self.envs[n][0] = "six+idna"

    def op_absorb(self):
        if not self.envs:
            return
        n = self.rng.choice(list(self.envs))
        p = self.store.run("absorb", n)
        # a busy env ("kept changing", locked by the daemon's own absorb)
        # is a refusal, not damage
        if p.returncode and "kept changing" not in p.stderr and "locked" not in p.stderr:
            self.fail(f"absorb {n}", p)

    def run(self):
        ops = [self.op_create, self.op_create, self.op_import, self.op_clone, self.op_clone, self.op_rm,
               self.op_rm, self.op_gc, self.op_absorb, self.op_write, self.op_write, self.op_install]
        while time.monotonic() < self.deadline and len(self.errors) < 20:
            op = self.rng.choice(ops)
            self.counts[op.__name__] = self.counts.get(op.__name__, 0) + 1
            try:
                op()
            except Exception as e:  # a timeout, a crash of the harness: report it
                self.errors.append(f"worker {self.no}: {op.__name__}: {e!r}")


def check_envs(venvfs, workers, ref, where):
    """Every env each worker made is there and shows what it must, file by
    file: its requirement set's packages, and what was written into it."""
    listed = set(run([BIN, "ls"], env=dict(os.environ, VENVFS_HOME=str(venvfs.home))).stdout.split())
    bad = []
    assert sum(len(w.envs) for w in workers) >= WORKERS, "the churn left too few envs to check"
    every = [(n, e) for w in workers for n, e in w.envs.items()]
    sample = set(n for n, _ in random.Random(len(every)).sample(every, min(CHECKED, len(every))))
    for n, (k, written) in every:
        if n not in listed:
            bad.append(f"{n}: gone")
            continue
        root = where(n) if n in sample or written else None
        if n in sample:
            try:
                got = own_listing(root)
            except OSError as e:
                bad.append(f"{n}: {e}")
                continue
            want = ref[k]
            if got != want:
                diff = sorted(set(got) ^ set(want)) or sorted(f for f in got if got[f] != want.get(f))
                bad.append(f"{n} ({k}): differs: {diff[:5]}")
        for rel, data in written.items():
            try:
                if (Path(root) / rel).read_bytes() != data:
                    bad.append(f"{n}/{rel}: other bytes")
            except OSError as e:
                bad.append(f"{n}/{rel}: {e}")
    assert not bad, "\n".join(bad[:30])


def churn(venvfs, origins, mnt, wheelhouse, tmp_path):
    store = Store(venvfs)
    errors = []
    deadline = time.monotonic() + SECONDS
    workers = [Worker(i, store, origins, mnt, deadline, errors, wheelhouse, tmp_path / "uv-cache")
               for i in range(WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts = {}
    for w in workers:
        for k, v in w.counts.items():
            counts[k] = counts.get(k, 0) + v
    print("operations:", counts)
    assert not errors, "\n\n".join(errors[:8])
    assert counts.get("op_gc", 0) >= 8, counts
    return workers


def test_churn_unmounted(venvfs, origins, tmp_path, wheelhouse):
    ref = reference(venvfs, origins, tmp_path)
    workers = churn(venvfs, origins, None, wheelhouse, tmp_path)

    def exported(n):
        out = tmp_path / "check" / n
        out.parent.mkdir(exist_ok=True)
        venvfs("export", n, out)
        return out

    check_envs(venvfs, workers, ref, exported)
    venvfs("gc")
    venvfs("store", "verify")
    leftovers = [p.name for p in (venvfs.home / "envs").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def test_churn_mounted(venvfs, origins, tmp_path, wheelhouse):
    ref = reference(venvfs, origins, tmp_path)
    m = Mount(venvfs, tmp_path / "mnt")
    try:
        # the daemon absorbs by itself too, racing the commands' clones
        m.mount("--absorb-idle", "1")
        workers = churn(venvfs, origins, m, wheelhouse, tmp_path)
        check_envs(venvfs, workers, ref, lambda n: m.path / n)
    finally:
        m.umount()
    m.assert_no_sanitizer_report()
    venvfs("gc")
    venvfs("store", "verify")


# ---- the races of issue 14, one by one -------------------------------------------------


def test_reimport_of_a_served_env_never_deletes_what_is_written(venvfs, origins, tmp_path):
    """Import checks the env's writable layer, then replaces the env: a file
    written through the mount in between must not be lost."""
    origin = tmp_path / "origin"
    make_venv(origin)
    for i in range(3000):  # enough that a re-import takes a few tenths of a second
        (origin / f"data-{i}.bin").write_bytes(os.urandom(4096))
    venvfs("import", origin, "--name", "a")
    m = Mount(venvfs, tmp_path / "mnt")
    try:
        m.mount()
        os.listdir(m.path / "a")
        for trial in range(6):
            (origin / f"changed-{trial}.txt").write_text("new\n")
            p = subprocess.Popen([BIN, "import", str(origin), "--name", "a", "--no-cache"],
                                 env=dict(os.environ, VENVFS_HOME=str(venvfs.home)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(0.05 + 0.04 * trial)  # after its check, before its swap
            f = m.path / "a" / f"mine-{trial}.txt"
            with open(f, "w") as fh:
                fh.write("mine\n")
                fh.flush()
                os.fsync(fh.fileno())
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 or "in use" in err or "changed through a mount" in err, err
            time.sleep(0.2)
            assert f.read_text() == "mine\n", (trial, out, err)
    finally:
        m.umount()
    assert (Path(venvfs.home) / "envs" / "a").is_dir()
    venvfs("store", "verify")


def six_env_with_idna_in_its_layer(venvfs, origins, tmp_path, wheelhouse):
    """Env a: six imported, idna installed through a mount, not absorbed."""
    venvfs("import", origins["six"], "--name", "a")
    m = Mount(venvfs, tmp_path / "mnt")
    try:
        m.mount("--absorb-idle", "0", "--no-absorb-on-unmount")
        install(m.path / "a", wheelhouse, "idna")
    finally:
        m.umount()


def test_absorb_writes_to_the_env_it_read(venvfs, origins, tmp_path, wheelhouse):
    """An env directory renamed by hand, and another env made under its old
    name: absorbing the renamed one changes it, not the other one."""
    six_env_with_idna_in_its_layer(venvfs, origins, tmp_path, wheelhouse)
    envs = Path(venvfs.home) / "envs"
    os.rename(envs / "a", envs / "b")
    venvfs("import", origins["req"], "--name", "a")
    a_before = (envs / "a" / "env").read_bytes()
    r = venvfs("store", "verify", check=False)
    assert r.returncode != 0 and "renamed by hand" in (r.stdout + r.stderr), (r.stdout, r.stderr)
    out = venvfs("absorb", "b").stdout
    assert "absorbed idna" in out, out
    assert (envs / "a" / "env").read_bytes() == a_before
    assert "\npackage " in (envs / "b" / "env").read_text() and " idna " in (envs / "b" / "env").read_text()
    venvfs("store", "verify")


def test_a_manifest_naming_another_place_is_damage(venvfs, origins, tmp_path, wheelhouse):
    """A manifest whose name field leaves the store: the env is damaged
    (EIO, reported), and nothing is ever written where the name points."""
    six_env_with_idna_in_its_layer(venvfs, origins, tmp_path, wheelhouse)
    escaped = tmp_path / "escaped"  # HOME/envs/../../escaped
    escaped.mkdir()
    man = Path(venvfs.home) / "envs" / "a" / "env"
    text = man.read_text()
    # a version 1 manifest: no checksum to forge
    body = text[:text.rindex("end ")].replace("venvfs-env 2\n", "venvfs-env 1\n", 1)
    man.write_text(body.replace("name a\n", "name ../../escaped\n", 1))
    r = venvfs("absorb", "a", check=False)
    assert r.returncode != 0 and "not a valid env name" in r.stderr, (r.stdout, r.stderr)
    assert not list(escaped.iterdir())
    r = venvfs("store", "verify", check=False)
    assert r.returncode != 0 and "not a valid env name" in (r.stdout + r.stderr), (r.stdout, r.stderr)


def test_gc_removes_what_a_killed_clone_left(venvfs, origins):
    venvfs("import", origins["six"], "--name", "a")
    left = Path(venvfs.home) / "envs" / ".clone-b-0123456789abcdef"
    (left / "upper").mkdir(parents=True)
    (left / "upper" / "x").write_text("x")
    venvfs("gc")
    assert not left.exists()


def test_create_beside_gc_never_fails(venvfs, origins):
    """create makes its interpreter skeleton in HOME/tmp, which gc clears."""
    venvfs("import", origins["six"], "--name", "a")
    stop = time.monotonic() + 20
    errors = []

    def gc_loop():
        while time.monotonic() < stop:
            p = Store(venvfs).run("gc")
            if p.returncode:
                errors.append("gc: " + p.stderr)

    t = threading.Thread(target=gc_loop)
    t.start()
    n = 0
    try:
        while time.monotonic() < stop and n < 40:
            for c in (Path(venvfs.home) / "cache").glob("python-*"):
                c.unlink()  # every create makes its skeleton again
            p = Store(venvfs).run("create", f"c{n}", "--python", BASE_PYTHON, "six")
            if p.returncode:
                errors.append(f"create c{n}: " + p.stderr)
            n += 1
    finally:
        t.join()
    assert not errors, errors[:5]
    venvfs("store", "verify")


def test_gc_killed_anywhere_never_leaves_a_listed_package_incomplete(venvfs, origins, tmp_path):
    """A gc killed mid-sweep: what the package index lists stays whole, so
    create never composes an env whose files are gone."""
    rng = random.Random(1)
    store = Store(venvfs)
    for trial in range(12):
        venvfs("import", origins["flask"], "--name", f"t{trial}", "--no-cache")
        venvfs("rm", f"t{trial}")  # its packages are garbage now
        p = subprocess.Popen([BIN, "gc"], env=store.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait()
        c = store.run("create", f"n{trial}", "--python", BASE_PYTHON, "flask")
        if c.returncode:
            assert "not in the store" in c.stderr or "no package" in c.stderr or "No such" in c.stderr, c.stderr
            continue
        out = tmp_path / f"x{trial}"
        e = store.run("export", f"n{trial}", out)
        assert e.returncode == 0, (trial, e.stderr)
        venvfs("rm", f"n{trial}")
    venvfs("gc")
    venvfs("store", "verify")
