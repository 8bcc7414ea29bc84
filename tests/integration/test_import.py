"""venvfs import / export / store commands on real venvs.

Each test builds real venvs with the real interpreter and real wheels,
imports them, and checks what comes back out: byte for byte at the same
path, working venvs elsewhere, and a store that verifies whatever happens.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BASE_PYTHON, BIN, assert_same_tree, make_venv, run, store_counts


def export_in_place(venvfs, name, venv):
    """Export env name to the path it was imported from; compare with the original."""
    venv = Path(venv)
    orig = venv.with_name(venv.name + ".orig")
    venv.rename(orig)
    try:
        venvfs("export", name, venv)
        assert_same_tree(orig, venv)
    finally:
        if venv.exists():
            shutil.rmtree(venv)
        orig.rename(venv)


def pip_freeze(python):
    return run([python, "-m", "pip", "freeze", "--all"]).stdout


# ---- real venvs ------------------------------------------------------------------


def test_plain_venv_roundtrip(tmp_path, venvfs):
    venv = make_venv(tmp_path / "plain")
    out = venvfs("import", venv).stdout
    assert "as env plain" in out
    assert "2 packages" in out  # pip and setuptools
    export_in_place(venvfs, "plain", venv)

    dest = tmp_path / "elsewhere"
    venvfs("export", "plain", dest)
    assert "elsewhere" in run([dest / "bin" / "pip", "--version"]).stdout
    assert pip_freeze(dest / "bin" / "python") == pip_freeze(venv / "bin" / "python")
    cfg = (dest / "pyvenv.cfg").read_text()
    assert str(dest) in cfg and str(venv) not in cfg
    assert f'VIRTUAL_ENV="{dest}"' in (dest / "bin" / "activate").read_text()


def test_pypi_venv_with_console_scripts(tmp_path, venvfs, wheelhouse):
    venv = make_venv(tmp_path / "web", ["requests", "numpy", "flask"], wheelhouse)
    venvfs("import", venv)
    pkgs = venvfs("store", "ls").stdout
    for name in ["requests", "numpy", "flask", "werkzeug", "charset-normalizer", "pip"]:
        assert f"\n{name} " in "\n" + pkgs, pkgs
    export_in_place(venvfs, "web", venv)

    dest = tmp_path / "copy"
    venvfs("export", "web", dest)
    py = dest / "bin" / "python"
    assert "Flask" in run([dest / "bin" / "flask", "--version"]).stdout
    assert run([dest / "bin" / "normalizer", "--version"]).returncode == 0
    run([py, "-c", "import numpy, requests, flask; assert numpy.ones(3).sum() == 3"])
    assert pip_freeze(py) == pip_freeze(venv / "bin" / "python")
    run([py, "-m", "pip", "check"])
    # scripts name the new location, RECORD rows agree with them
    assert (dest / "bin" / "flask").read_text().startswith(f"#!{dest}/bin/python")
    record = next((dest / "lib").glob("python3.*/site-packages/flask-*.dist-info/RECORD")).read_text()
    import base64
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256((dest / "bin" / "flask").read_bytes()).digest())
    assert digest.rstrip(b"=").decode() in record


def test_uv_and_virtualenv_venvs(tmp_path, venvfs, wheelhouse):
    uv = shutil.which("uv")
    assert uv, "uv must be installed in the test environment (pip install uv)"
    uvenv = tmp_path / "uvproj" / ".venv"
    uvenv.parent.mkdir()
    run([uv, "venv", "-q", "--python", BASE_PYTHON, uvenv])
    run([uv, "pip", "install", "-q", "--no-index", "--find-links", wheelhouse, "--python",
         uvenv / "bin" / "python", "requests", "six"])
    out = venvfs("import", uvenv).stdout
    assert "as env uvproj" in out  # the project's name, not ".venv"
    export_in_place(venvfs, "uvproj", uvenv)

    vvenv = tmp_path / "vv"
    run([sys.executable, "-m", "virtualenv", "-q", "--python", BASE_PYTHON, vvenv])
    venvfs("import", vvenv)
    export_in_place(venvfs, "vv", vvenv)
    dest = tmp_path / "vv-copy"
    venvfs("export", "vv", dest)
    run([dest / "bin" / "python", "-m", "pip", "--version"])
    venvfs("store", "verify")


def test_reimport_adds_nothing(tmp_path, venvfs, wheelhouse):
    venv = make_venv(tmp_path / "again", ["six", "requests"], wheelhouse)
    venvfs("import", venv)
    before = store_counts(venvfs.home)
    out = venvfs("import", venv).stdout
    assert "0 B new in the store" in out
    assert "unchanged since the last import" in out
    assert store_counts(venvfs.home) == before
    # without the stat cache, still nothing new
    out = venvfs("import", "--no-cache", venv).stdout
    assert "0 B new in the store" in out
    assert store_counts(venvfs.home)["objects"] == before["objects"]


def test_what_is_not_a_venv_is_refused_cleanly(tmp_path, venvfs):
    """Each of these once freed an uninitialised pointer (valgrind, and the
    ASan pass of this suite, see it): the error paths of import."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "f").write_text("x")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for what, says in ((tmp_path / "nonexistent", "nonexistent"), (plain, "pyvenv.cfg"), (afile, "afile")):
        r = venvfs("import", what, check=False)
        assert r.returncode == 1, (what, r.returncode, r.stderr)
        assert r.stderr.startswith("venvfs import: ") and says in r.stderr, r.stderr
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    assert "0 envs" in venvfs("store", "verify").stdout


def test_reading_commands_never_make_a_store(tmp_path):
    """`venvfs --home DIR ls` (or store du, stats...) turned any directory,
    missing or full of other things, into a store; a command that makes one
    took a directory of other files too."""
    missing = tmp_path / "missing"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine\n")
    for args in (["ls"], ["store", "ls"], ["store", "du"], ["store", "verify"], ["gc"],
                 ["stats", tmp_path], ["umount", tmp_path], ["rm", "x"], ["absorb", "x"], ["export", "x", tmp_path / "x"]):
        for home, says in ((missing, "no store here"), (plain, "not a venvfs store")):
            r = run([BIN, "--home", home, *args], check=False)
            assert r.returncode != 0 and says in r.stderr, (args, home, r.stderr)
    assert not missing.exists()
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"]
    # making one: an empty or new directory only
    for args in (["store", "init"], ["create", "e", "six"]):
        r = run([BIN, "--home", plain, *args], check=False)
        assert r.returncode == 1 and "not empty" in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in plain.iterdir()) == ["notes.txt"]
    r = run([BIN, "--home", missing, "store", "init"])
    assert (missing / "venvfs-store").exists()
    assert run([BIN, "--home", missing, "ls"], check=False).returncode == 0


def test_ten_venvs_store_each_file_once(tmp_path, venvfs, wheelhouse):
    # at paths of different lengths: nothing path-dependent may leak into
    # what the store shares
    projects = [tmp_path / ("p" + "x" * i) for i in range(10)]
    for p in projects:
        make_venv(p / ".venv", ["requests", "flask", "six"], wheelhouse)
    for p in projects:
        venvfs("import", p / ".venv")
    du = venvfs.du()
    assert du["envs"] == 10
    ratio = du["stored_bytes"] / du["logical_bytes"]
    assert ratio < 0.13, du  # about 1/10
    # one package per distribution, each used by all ten envs
    lines = venvfs("store", "ls").stdout.splitlines()[1:]
    names = [l.split()[0] for l in lines]
    assert len(names) == len(set(names)), (lines, why_two_packages(venvfs.home, projects, names))
    assert all(l.split()[-2] == "10" for l in lines), lines
    # and any of them still comes back byte for byte
    export_in_place(venvfs, projects[7].name, projects[7] / ".venv")


def why_two_packages(home, projects, names):
    """For a distribution stored twice: which envs took which package, and
    how the files of its first two venvs differ (hash; pyc header)."""
    import hashlib

    dup = next(n for n in names if names.count(n) > 1)
    by_pkg = {}
    for envfile in sorted(home.glob("envs/*/env")):
        for line in envfile.read_text().splitlines():
            f = line.split()
            if f[0] == "package" and f[2] == dup:
                by_pkg.setdefault(f[1], []).append(envfile.parent.name)
    venvs = {p.name: p / ".venv" for p in projects}
    lists = []
    for envs in list(by_pkg.values())[:2]:
        venv = next((venvs[e] for e in envs if e in venvs), None)
        if venv is None:
            continue
        site = site_packages(venv)
        info = next(d for d in site.glob("*.dist-info")
                    if d.name.split("-")[0].lower().replace("_", "-").replace(".", "-") == dup)
        files = {}
        for row in (info / "RECORD").read_text().splitlines():
            f = (site / row.rsplit(",", 2)[0]).resolve()
            if not f.is_file():
                files[str(f)] = "missing"
                continue
            data = f.read_bytes()
            files[str(f.relative_to(venv.resolve()))] = hashlib.sha256(data).hexdigest()[:16]
            if f.suffix == ".pyc":  # flags, size, and whether its mtime is its source's
                src = f.parent.parent / (f.name.split(".")[0] + ".py")
                ok = src.exists() and int.from_bytes(data[8:12], "little") == int(src.stat().st_mtime) & 0xFFFFFFFF
                files[str(f.relative_to(venv.resolve()))] = f"{data[4:8].hex()} {data[12:16].hex()} valid={ok}"
        lists.append(files)
    diff = {} if len(lists) < 2 else {k: (lists[0].get(k), lists[1].get(k)) for k in lists[0].keys() | lists[1].keys()
                                      if lists[0].get(k) != lists[1].get(k)}
    return {"distribution": dup, "envs per package": by_pkg, "files that differ": dict(list(diff.items())[:40])}


# ---- bad input --------------------------------------------------------------------


def site_packages(venv):
    return next(Path(venv).glob("lib/python3.*/site-packages"))


def assert_store_untouched(home):
    if not home.exists():
        return
    c = store_counts(home)
    assert c["envs"] == 0 and c["packages"] == 0 and c["objects"] == 0 and c["tmp"] == 0, c


@pytest.fixture(scope="module")
def six_venv(tmp_path_factory, wheelhouse):
    return make_venv(tmp_path_factory.mktemp("six") / "v", ["six"], wheelhouse)


def record_of(venv):
    return next(site_packages(venv).glob("six-*.dist-info")) / "RECORD"


BAD_RECORDS = {
    "escape": ("../../../../../../etc/passwd,sha256=x,12", "escapes the env"),
    "absolute": ("/etc/passwd,,", "absolute path /etc/passwd"),
    "malformed": ('"six.py,sha256=x,1', "malformed CSV quoting"),
    "fields": ("six.py,sha256=x", "expected 3 fields"),
    "size": ("six.py,sha256=x,twelve", "size is not a non-negative integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_rejected(tmp_path, venvfs, six_venv, case):
    venv = tmp_path / "bad"
    shutil.copytree(six_venv, venv, symlinks=True)
    rec = record_of(venv)
    lines = rec.read_text().splitlines()
    row, message = BAD_RECORDS[case]
    lines.insert(2, row)
    rec.write_text("\n".join(lines) + "\n")
    p = venvfs("import", venv, check=False)
    assert p.returncode == 1
    assert f"{rec}:3: " in p.stderr and message in p.stderr, p.stderr
    assert_store_untouched(venvfs.home)


def test_huge_record_costs_no_memory(tmp_path, venvfs, six_venv):
    """A RECORD past 64 MiB is not read as a list: its distribution stays
    the env's own, and the import's memory stays near the file's size
    (before: the whole text, then every row parsed, five times its size)."""
    venv = tmp_path / "huge"
    shutil.copytree(six_venv, venv, symlinks=True)
    rec = record_of(venv)
    row = "six_extra/module_%08d.py,sha256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA,1234\n"
    with open(rec, "a") as f:
        for chunk in range(100):
            f.write("".join(row % (chunk * 20000 + i) for i in range(20000)))
    assert rec.stat().st_size > 96 << 20
    # the import alone, in a process of its own: its peak resident memory
    measure = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    p = run([sys.executable, "-c", measure, BIN, "import", venv], check=False,
            env=dict(os.environ, VENVFS_HOME=str(venvfs.home)))
    assert p.returncode == 0, p.stderr
    assert "larger than 64 MiB" in p.stderr, p.stderr
    rss_kb = int(p.stdout.split()[-1])
    assert rss_kb < 300 * 1024, f"the import peaked at {rss_kb} kB for a {rec.stat().st_size >> 20} MiB RECORD"
    venvfs("store", "verify")


@pytest.mark.parametrize("how", ["file", "dir"])
def test_symlink_pointing_outside_rejected(tmp_path, venvfs, six_venv, how):
    venv = tmp_path / "bad"
    shutil.copytree(six_venv, venv, symlinks=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "data.py").write_text("SECRET = 1\n")
    rec = record_of(venv)
    if how == "file":
        (site_packages(venv) / "evil.py").symlink_to(secret / "data.py")
        row = "evil.py,,"
        message = "evil.py is a symlink pointing outside the env"
    else:
        (site_packages(venv) / "evil").symlink_to(secret)
        row = "evil/data.py,sha256=x,11"
        message = "goes through symlink"
    rec.write_text(rec.read_text() + row + "\n")
    p = venvfs("import", venv, check=False)
    assert p.returncode == 1 and message in p.stderr and str(rec) in p.stderr, p.stderr
    assert_store_untouched(venvfs.home)


def test_not_a_venv(tmp_path, venvfs):
    (tmp_path / "plain").mkdir()
    p = venvfs("import", tmp_path / "plain", check=False)
    assert p.returncode == 1 and "not a virtual environment (no pyvenv.cfg)" in p.stderr
    (tmp_path / "plain" / "pyvenv.cfg").write_text("version = 3.11\n")
    p = venvfs("import", tmp_path / "plain", check=False)
    assert p.returncode == 1 and "pyvenv.cfg: no 'home' key" in p.stderr
    p = venvfs("import", tmp_path / "missing", check=False)
    assert p.returncode == 1 and "missing" in p.stderr
    assert_store_untouched(venvfs.home)


def test_messy_venv_imported_faithfully(tmp_path, venvfs, wheelhouse):
    venv = make_venv(tmp_path / "messy", ["requests", "six"], wheelhouse)
    sp = site_packages(venv)
    shutil.rmtree(sp / "requests" / "__pycache__")        # listed bytecode, gone
    (sp / "six.py").write_text((sp / "six.py").read_text() + "# edited\n")  # hash mismatch
    os.mkfifo(sp / "leftover.fifo")
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(sp)  # socket paths are limited to 108 bytes
    try:
        s.bind("leftover.sock")
    finally:
        os.chdir(cwd)
        s.close()
    (sp / "caf\udce9.txt").write_bytes(b"latin-1 name\n")   # not UTF-8
    (venv / "empty" / "dir").mkdir(parents=True)
    p = venvfs("import", venv)
    assert "six-" in p.stderr and "six.py has changed" in p.stderr, p.stderr
    assert "1 distributions kept as env files" in p.stdout
    pkgs = venvfs("store", "ls").stdout
    assert "\nrequests " in "\n" + pkgs and "\nsix " not in "\n" + pkgs
    export_in_place(venvfs, "messy", venv)
    venvfs("store", "verify")


# ---- faults ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_venv(tmp_path_factory, wheelhouse):
    return make_venv(tmp_path_factory.mktemp("big") / "big", ["numpy", "requests", "flask"], wheelhouse)


def test_kill9_during_import(tmp_path, venvfs, big_venv):
    env = dict(os.environ, VENVFS_HOME=str(venvfs.home))
    for delay in [0.02, 0.1, 0.25, 0.5, 0.8, 1.2]:
        p = subprocess.Popen([BIN, "import", "-q", big_venv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (venvfs.home / "venvfs-store").exists():
            venvfs("store", "verify")
        elif venvfs.home.exists():  # killed while it made the store: nothing to verify yet
            r = venvfs("store", "verify", check=False)
            assert r.returncode == 1 and "making was interrupted" in r.stderr, r.stderr
    venvfs("import", big_venv)
    venvfs("store", "verify")
    gc = venvfs("gc").stdout
    assert "removed 0 objects" in gc or "removed" in gc
    venvfs("store", "verify")
    export_in_place(venvfs, "big", big_venv)


def test_concurrent_overlapping_imports_and_gc(tmp_path, venvfs, big_venv, wheelhouse):
    other = make_venv(tmp_path / "other", ["numpy", "six"], wheelhouse)
    env = dict(os.environ, VENVFS_HOME=str(venvfs.home))
    a = subprocess.Popen([BIN, "import", "-q", big_venv], env=env, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([BIN, "import", "-q", other], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    g = subprocess.Popen([BIN, "gc"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert a.wait() == 0, a.stderr.read()
    assert b.wait() == 0, b.stderr.read()
    assert g.wait() == 0, g.stderr.read()
    venvfs("store", "verify")
    export_in_place(venvfs, "big", big_venv)
    export_in_place(venvfs, "other", other)


def test_import_name_conflict(tmp_path, venvfs, six_venv):
    a = tmp_path / "a" / "proj"
    b = tmp_path / "b" / "proj"
    shutil.copytree(six_venv, a, symlinks=True)
    shutil.copytree(six_venv, b, symlinks=True)
    venvfs("import", a)
    p = venvfs("import", b, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    venvfs("import", b, "--name", "proj2")
    assert "proj2" in venvfs("ls").stdout


# ---- paths that need care ------------------------------------------------------------


@pytest.mark.parametrize("where", ["with space", "long"])
def test_export_to_awkward_paths(tmp_path, venvfs, wheelhouse, where):
    venv = make_venv(tmp_path / "src", ["flask"], wheelhouse)
    venvfs("import", venv, "--name", "src")
    dest = tmp_path / "a dir with space" / "env" if where == "with space" else tmp_path / ("d" * 120) / "env"
    dest.parent.mkdir()
    venvfs("export", "src", dest)
    script = (dest / "bin" / "flask").read_text()
    assert script.startswith("#!/bin/sh\n'''exec' "), script[:200]
    assert "Flask" in run([dest / "bin" / "flask", "--version"]).stdout
    run([dest / "bin" / "pip", "--version"])


def test_export_refuses_nonempty_destination(tmp_path, venvfs, six_venv):
    venvfs("import", six_venv, "--name", "six")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    p = venvfs("export", "six", tmp_path / "full", check=False)
    assert p.returncode == 1 and "not an empty directory" in p.stderr
    assert os.listdir(tmp_path / "full") == ["x"]
    assert not [n for n in os.listdir(tmp_path) if "venvfs-export" in n]


# ---- the command line ---------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["import", "export", "ls", "rm", "store", "gc"])
def test_every_command_has_help(venvfs, cmd):
    p = venvfs(cmd, "--help")
    assert p.stdout.startswith(f"usage: venvfs {cmd}")


def test_usage_errors(venvfs):
    assert venvfs("import", check=False).returncode == 2
    assert venvfs("frobnicate", check=False).returncode == 2
    assert venvfs("store", "dance", check=False).returncode == 2


def test_quiet_when_not_a_terminal(tmp_path, venvfs, six_venv):
    p = venvfs("import", six_venv)
    assert p.stderr == ""  # no progress noise in logs


def test_rm_and_gc(tmp_path, venvfs, six_venv):
    venvfs("import", six_venv, "--name", "x")
    assert store_counts(venvfs.home)["objects"] > 0
    venvfs("rm", "x")
    assert "x" not in venvfs("ls").stdout.split()
    venvfs("gc")
    c = store_counts(venvfs.home)
    assert c["objects"] == 0 and c["packages"] == 0
    assert venvfs("rm", "x", check=False).returncode == 1


def test_import_leaves_no_garbage(tmp_path, venvfs, six_venv):
    # every object an import writes is referenced: the RECORD of a package
    # with scripts (pip's) is stored once, as the template the view renders
    venvfs("import", six_venv, "--name", "x")
    assert venvfs("gc").stdout.startswith("removed 0 objects"), "an import left unreferenced objects"


def test_verify_names_damage(tmp_path, venvfs, six_venv):
    venvfs("import", six_venv, "--name", "x")
    objs = sorted(p for p in (venvfs.home / "objects").rglob("*") if p.is_file() and p.stat().st_size > 100)
    victim = objs[0]
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    missing = objs[1]
    missing.unlink()
    p = venvfs("store", "verify", check=False)
    assert p.returncode == 1
    rel = str(victim.relative_to(venvfs.home))
    assert rel in p.stdout and "corrupt" in p.stdout, p.stdout
    assert str(missing.relative_to(venvfs.home / "objects")) in p.stdout


def test_objects_are_no_more_readable_than_their_files(tmp_path, venvfs):
    """A venv's 0600 .env imported into a store: its object is readable by
    its owner alone (before: 0444, readable by every user from objects/).
    The same bytes from a file others may read make the object readable."""
    venv = make_venv(tmp_path / "p", with_pip=False)
    secret = b"API_TOKEN=" + os.urandom(16).hex().encode() + b"\n"
    (venv / ".env").write_bytes(secret)
    (venv / ".env").chmod(0o600)
    (venv / "group.txt").write_bytes(b"for the group\n" + secret)
    (venv / "group.txt").chmod(0o640)
    venvfs("import", venv, "--name", "p")

    def obj_mode(data):
        for p in (venvfs.home / "objects").rglob("*"):
            if p.is_file() and not p.name.startswith(".") and p.read_bytes() == data:
                return p.stat().st_mode & 0o7777
        raise AssertionError("no object holds these bytes")

    assert obj_mode(secret) == 0o400
    assert obj_mode(b"for the group\n" + secret) == 0o440
    out = tmp_path / "out"
    venvfs("export", "p", out)
    assert (out / ".env").read_bytes() == secret and (out / ".env").stat().st_mode & 0o777 == 0o600
    pub = make_venv(tmp_path / "q", with_pip=False)
    (pub / "public.txt").write_bytes(secret)
    (pub / "public.txt").chmod(0o644)
    venvfs("import", pub, "--name", "q")
    assert obj_mode(secret) == 0o444
    venvfs("store", "verify")
