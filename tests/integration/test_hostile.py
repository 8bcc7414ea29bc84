"""Hostile content: what export, object reads and template rendering refuse.

A store may be written by several users (CI accounts of one group), and an
env may be exported by another user than the one who imported it (root).
Each test plants what such a user could (a setuid file, a device node, a
changed byte in an object or a template, a symlink in an object's place or
in a fan-out directory's) and checks that nobody else gets it: export grants
nothing the files did not have, copies nothing it has not checked against
its object's name, and nothing under objects/ is followed through a symlink.
"""
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from conftest import make_venv, run

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root")
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


@pytest.fixture(scope="module")
def six_venv(tmp_path_factory, wheelhouse):
    """A venv with pip (console scripts: templates) and six (a package)."""
    return make_venv(tmp_path_factory.mktemp("hostile") / "v", ["six"], wheelhouse)


def site_packages(venv):
    return next(Path(venv).glob("lib/python3.*/site-packages"))


def copy_venv(six_venv, dest):
    shutil.copytree(six_venv, dest, symlinks=True)
    return dest


def object_holding(home, data):
    """The store object whose content is data."""
    for p in (home / "objects").rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size == len(data) and p.read_bytes() == data:
            return p
    raise AssertionError("no object holds these bytes")


def template_holding(home, needle):
    """The template object (VFSTPL1) whose bytes contain needle."""
    for p in (home / "objects").rglob("*"):
        if p.is_file() and not p.is_symlink():
            b = p.read_bytes()
            if b.startswith(b"VFSTPL1\0") and needle in b:
                return p
    raise AssertionError(f"no template holds {needle!r}")


def rewrite(obj, old, new):
    """Change an object in place, as its owner could (chmod, then write)."""
    assert len(old) == len(new)
    data = obj.read_bytes()
    assert old in data
    obj.chmod(0o644)
    obj.write_bytes(data.replace(old, new))


def no_trace_of_export(dest):
    """A failed export leaves neither DIR nor its temp directory."""
    return not dest.exists() and not [n for n in os.listdir(dest.parent) if "venvfs-export" in n]


# ---- export grants nothing the files did not have ----------------------------------


@root_only
def test_export_drops_setuid_and_creates_no_devices(tmp_path, venvfs, six_venv):
    venv = copy_venv(six_venv, tmp_path / "v")
    shutil.copy("/bin/true", venv / "bin" / "suid")
    os.chmod(venv / "bin" / "suid", 0o4755)
    shutil.copy("/bin/true", venv / "bin" / "sgid")
    os.chmod(venv / "bin" / "sgid", 0o2755)
    (venv / "shared").mkdir()
    os.chmod(venv / "shared", 0o2775)  # setgid directory: kept (the exporter's own group)
    os.mknod(venv / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(venv / "loop", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(venv / "fifo", 0o640)
    s = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(venv)  # socket paths are limited to 108 bytes
    try:
        s.bind("sock")
    finally:
        os.chdir(cwd)
        s.close()
    venvfs("import", venv, "--name", "v")

    dest = tmp_path / "out"
    p = venvfs("export", "v", dest)
    mode = lambda rel: os.lstat(dest / rel).st_mode
    assert stat.S_IMODE(mode("bin/suid")) == 0o755
    assert stat.S_IMODE(mode("bin/sgid")) == 0o755
    assert stat.S_IMODE(mode("shared")) == 0o2775
    assert not os.path.lexists(dest / "null") and not os.path.lexists(dest / "loop")
    lines = [l for l in p.stderr.splitlines() if "device" in l]
    assert len(lines) == 2, p.stderr
    assert any(f"{dest}/null" in l for l in lines) and any(f"{dest}/loop" in l for l in lines), p.stderr
    # FIFOs and sockets, as cp -a by an ordinary user makes them
    assert stat.S_ISFIFO(mode("fifo")) and stat.S_IMODE(mode("fifo")) == 0o640
    assert stat.S_ISSOCK(mode("sock"))
    run([dest / "bin" / "python", "-c", "import six"])

    # only when asked for
    dest2 = tmp_path / "out2"
    p = venvfs("export", "v", dest2, "--devices")
    assert "device" not in p.stderr, p.stderr
    assert os.stat(dest2 / "null", follow_symlinks=False).st_rdev == os.makedev(1, 3)
    assert stat.S_ISCHR(os.lstat(dest2 / "null").st_mode)
    assert stat.S_ISBLK(os.lstat(dest2 / "loop").st_mode)
    assert os.lstat(dest2 / "loop").st_rdev == os.makedev(7, 0)
    assert stat.S_IMODE(os.lstat(dest2 / "bin" / "suid").st_mode) == 0o755


@needs_fuse
def test_export_drops_setuid_of_writable_layer(tmp_path, venvfs, mnt, six_venv):
    venvfs("import", six_venv, "--name", "v")
    mnt.mount()
    tool = mnt.path / "v" / "bin" / "tool"
    shutil.copy("/bin/true", tool)
    os.chmod(tool, 0o6755)
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o6755
    mnt.umount()
    dest = tmp_path / "out"
    venvfs("export", "v", dest)
    assert stat.S_IMODE(os.stat(dest / "bin" / "tool").st_mode) == 0o755


# ---- export checks every byte it copies ---------------------------------------------


@pytest.mark.parametrize("dest_exists", [False, True])
def test_export_of_a_damaged_object_fails(tmp_path, venvfs, six_venv, dest_exists):
    venvfs("import", six_venv, "--name", "v")
    six_py = site_packages(six_venv) / "six.py"
    obj = object_holding(venvfs.home, six_py.read_bytes())
    rewrite(obj, b"import functools", b"import functoolZ")
    dest = tmp_path / "out"
    if dest_exists:
        dest.mkdir()  # an empty directory: export may replace it, and must leave it on failure
    p = venvfs("export", "v", dest, check=False)
    assert p.returncode == 1
    err = p.stderr
    assert str(obj.relative_to(venvfs.home)) in err, err
    assert str(six_py.relative_to(six_venv)) in err and "store verify" in err, err
    assert "does not match" in err, err
    if dest_exists:
        assert dest.is_dir() and not os.listdir(dest)
        dest.rmdir()
    assert no_trace_of_export(dest)


def test_export_of_damaged_bytecode_fails(tmp_path, venvfs, six_venv):
    """Bytecode is rewritten on export (its header, its paths): checked before."""
    venvfs("import", six_venv, "--name", "v")
    # the stored pyc of six names the canonical path it is normalised to
    pyc = next((site_packages(six_venv) / "__pycache__").glob("six.*.pyc")).read_bytes()
    cands = [p for p in (venvfs.home / "objects").rglob("*")
             if p.is_file() and p.read_bytes()[:4] == pyc[:4] and b"/@venvfs/site-packages/six.py" in p.read_bytes()]
    assert len(cands) == 1
    rewrite(cands[0], b"add_metaclass", b"add_metaclasZ")
    dest = tmp_path / "out"
    p = venvfs("export", "v", dest, check=False)
    assert p.returncode == 1 and "does not match" in p.stderr and "store verify" in p.stderr, p.stderr
    assert "six." in p.stderr and str(cands[0].relative_to(venvfs.home)) in p.stderr, p.stderr
    assert no_trace_of_export(dest)


# ---- nothing under objects/ is followed through a symlink ------------------------------


def test_export_refuses_a_symlinked_template(tmp_path, venvfs, six_venv):
    """A template object replaced by a symlink to a planted file is not rendered."""
    venvfs("import", six_venv, "--name", "v")
    tpl = template_holding(venvfs.home, b"sys.exit(main())")
    planted = tmp_path / "planted"
    planted.write_bytes(tpl.read_bytes().replace(b"sys.exit(main())", b"sys.exit(evil())"))
    tpl.unlink()
    tpl.symlink_to(planted)
    dest = tmp_path / "out"
    p = venvfs("export", "v", dest, check=False)
    assert p.returncode == 1 and "symbolic link" in p.stderr, p.stderr
    assert str(tpl.relative_to(venvfs.home)) in p.stderr, p.stderr
    assert no_trace_of_export(dest)


def fanout_moved_away(venvfs, six_venv, tmp_path):
    """Env v; the fan-out directory of six.py's object moved out of the
    store, a symlink to it in its place. Returns six.py, the object, where
    the fan-out directory went."""
    venvfs("import", six_venv, "--name", "v")
    six_py = site_packages(six_venv) / "six.py"
    obj = object_holding(venvfs.home, six_py.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(obj.parent, elsewhere)
    shutil.rmtree(obj.parent)
    obj.parent.symlink_to(elsewhere)
    return six_py, obj, elsewhere


def test_export_refuses_a_symlinked_fanout_directory(tmp_path, venvfs, six_venv):
    """A fan-out directory replaced by a symlink to planted objects is not followed."""
    six_py, obj, elsewhere = fanout_moved_away(venvfs, six_venv, tmp_path)
    planted = elsewhere / obj.name
    planted.chmod(0o644)
    planted.write_bytes(six_py.read_bytes().replace(b"import functools", b"import functoolZ"))
    dest = tmp_path / "out"
    p = venvfs("export", "v", dest, check=False)
    assert p.returncode == 1 and "symbolic link" in p.stderr, p.stderr
    assert no_trace_of_export(dest)


@needs_fuse
def test_mount_refuses_a_symlinked_fanout_directory(tmp_path, venvfs, mnt, six_venv):
    """Even to the very same bytes: the daemon never leaves the store."""
    six_py, obj, elsewhere = fanout_moved_away(venvfs, six_venv, tmp_path)
    mnt.mount()
    with pytest.raises(OSError) as e:
        (mnt.path / "v" / six_py.relative_to(six_venv)).read_bytes()
    assert e.value.errno == 5  # EIO


# ---- templates are checked against their name -------------------------------------------


@needs_fuse
def test_damaged_template_is_eio(tmp_path, venvfs, mnt, six_venv):
    """A console script template edited by its owner is served to nobody."""
    venvfs("import", six_venv, "--name", "v")
    tpl = template_holding(venvfs.home, b"sys.exit(main())")
    rewrite(tpl, b"sys.exit(main())", b"sys.exit(evil())")
    mnt.mount()
    scripts = [n for n in os.listdir(mnt.path / "v" / "bin") if n.startswith("pip")]
    assert scripts
    bad = 0
    for name in scripts:
        try:
            data = (mnt.path / "v" / "bin" / name).read_bytes()
            assert b"evil" not in data
        except OSError as e:
            assert e.errno == 5  # EIO
            bad += 1
    assert bad >= 1
    assert str(tpl.relative_to(venvfs.home / "objects")) in mnt.log(), mnt.log()[-2000:]
    assert "does not match" in mnt.log()
    assert int(mnt.stats()["damaged_objects"]) >= 1
    mnt.umount()

    dest = tmp_path / "out"
    p = venvfs("export", "v", dest, check=False)
    assert p.returncode == 1 and "does not match" in p.stderr and "store verify" in p.stderr, p.stderr
    assert "bin/pip" in p.stderr, p.stderr
    assert no_trace_of_export(dest)


def package_manifest(home, env, pkg):
    """The object of env's package manifest for pkg."""
    for line in (home / "envs" / env / "env").read_text().splitlines():
        f = line.split(" ")
        if f[0] == "package" and f[2] == pkg:
            oid = f[1]
            return home / "objects" / oid[:2] / oid[2:]
    raise AssertionError(f"env {env} has no package {pkg}")


@needs_fuse
def test_missing_package_manifest_is_eio_not_absent(tmp_path, venvfs, mnt, six_venv):
    """Files of a package whose manifest is gone read as damaged: a tool
    that saw them vanish would take the package for one not installed."""
    venvfs("import", six_venv, "--name", "v")
    package_manifest(venvfs.home, "v", "six").unlink()
    mnt.mount()
    six_py = mnt.path / "v" / (site_packages(six_venv) / "six.py").relative_to(six_venv)
    with pytest.raises(OSError) as e:
        six_py.read_bytes()
    assert e.value.errno == 5, e.value  # EIO, not ENOENT
    assert "six" in mnt.log()
    r = venvfs("store", "verify", check=False)
    assert r.returncode != 0 and "six" in (r.stdout + r.stderr)


def test_verify_reports_what_the_layout_never_makes(tmp_path, venvfs, six_venv):
    """A fan-out directory or an object replaced by a symlink: named by verify."""
    six_py, obj, elsewhere = fanout_moved_away(venvfs, six_venv, tmp_path)
    r = venvfs("store", "verify", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"objects/{obj.parent.name} is not a directory" in out, out
    obj.parent.unlink()
    shutil.copytree(elsewhere, obj.parent)
    (obj.parent / "ffffffffffffffffffffffffffffff").symlink_to("/etc/passwd")
    r = venvfs("store", "verify", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and f"objects/{obj.parent.name}/ffffffffffffffffffffffffffffff is not a regular file" in out, out


# ---- nothing under HOME is followed through a symlink ------------------------------------


def planted_outside(tmp_path, name, content=b""):
    """A file outside the store, where a symlink in the store points."""
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    p = out / name
    p.write_bytes(content)
    return p


def assert_names_link(text, path):
    assert f"{path} is a symbolic link, which the store layout never makes" in text, text


@needs_fuse
def test_mount_follows_no_symlink_under_home(tmp_path, venvfs, mnt, six_venv):
    """views, run/env-NAME.lock and envs/NAME/work made symlinks: the daemon
    appends to, creates and writes through none of them (the env is still
    served, read-only where its work directory is refused; the log names
    each)."""
    venvfs("import", six_venv, "--name", "v")
    venvfs("import", six_venv, "--name", "w")
    home = venvfs.home
    views = planted_outside(tmp_path, "views", b"")
    (home / "envs" / "v" / "views").symlink_to(views)
    (home / "run").mkdir(exist_ok=True)
    lock = tmp_path / "outside" / "lock"
    (home / "run" / "env-v.lock").symlink_to(lock)
    work = tmp_path / "outside" / "work"
    work.mkdir()
    shutil.rmtree(home / "envs" / "w" / "work")
    (home / "envs" / "w" / "work").symlink_to(work)

    mnt.mount()
    cfg = mnt.path / "v" / "pyvenv.cfg"
    assert b"home" in cfg.read_bytes()
    # an env without its work directory takes no change: EIO, and a
    # copy-up never goes through the link
    for change in (lambda: (mnt.path / "w" / "new.txt").write_text("mine\n"),
                   lambda: open(mnt.path / "w" / "pyvenv.cfg", "a").write("# edited\n")):
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == 5, e.value
    os.listdir(mnt.path / "w")
    mnt.umount()

    assert views.read_bytes() == b"", "the daemon appended to a file outside the store"
    assert not lock.exists(), "the daemon created a lock file outside the store"
    assert os.listdir(work) == []
    log = mnt.log()
    assert_names_link(log, home / "envs" / "v" / "views")
    assert_names_link(log, home / "run" / "env-v.lock")
    assert_names_link(log, home / "envs" / "w" / "work")


@needs_fuse
def test_mount_refuses_a_symlinked_log_or_run(tmp_path, venvfs, mnt, six_venv):
    """log/mount.log or run/ made a symlink: the daemon writes nothing through it."""
    venvfs("import", six_venv, "--name", "v")
    home = venvfs.home
    log = planted_outside(tmp_path, "mount.log", b"")
    (home / "log" / "mount.log").symlink_to(log)
    p = venvfs("mount", mnt.path, check=False)
    mnt.mounted = p.returncode == 0
    assert p.returncode == 1, p.stderr
    assert_names_link(p.stderr, home / "log" / "mount.log")
    assert log.read_bytes() == b""

    (home / "log" / "mount.log").unlink()
    run = tmp_path / "outside" / "run"
    run.mkdir()
    shutil.rmtree(home / "run", ignore_errors=True)
    (home / "run").symlink_to(run)
    p = venvfs("mount", mnt.path, check=False)
    mnt.mounted = p.returncode == 0
    assert p.returncode == 1, p.stderr
    assert_names_link(p.stderr, home / "run")
    assert os.listdir(run) == []


def env_moved_outside(venvfs, tmp_path, name):
    """envs/NAME moved out of the store, a file planted in its layer, and a
    symlink to it in its place. Returns where it went."""
    elsewhere = tmp_path / f"outside-{name}"
    shutil.move(venvfs.home / "envs" / name, elsewhere)
    (elsewhere / "upper" / "planted.py").write_text("print('planted')\n")
    (venvfs.home / "envs" / name).symlink_to(elsewhere)
    return elsewhere


def test_symlinked_env_is_never_followed(tmp_path, venvfs, six_venv):
    """envs/NAME itself a symlink to an env planted elsewhere: listed as
    unreadable, not exported, not a reason for gc to delete what it names,
    reported by verify, removable."""
    venvfs("import", six_venv, "--name", "v")
    venvfs("import", six_venv, "--name", "x")
    home = venvfs.home
    elsewhere = env_moved_outside(venvfs, tmp_path, "x")

    p = venvfs("ls")
    assert "x" in p.stdout and "unreadable" in p.stdout, p.stdout
    assert_names_link(p.stdout, home / "envs" / "x")
    dest = tmp_path / "out"
    p = venvfs("export", "x", dest, check=False)
    assert p.returncode == 1, p.stderr
    assert_names_link(p.stderr, home / "envs" / "x")
    assert not dest.exists()
    p = venvfs("gc", check=False)
    assert p.returncode == 1 and "x" in p.stderr, p.stderr
    p = venvfs("store", "verify", check=False)
    assert p.returncode != 0
    assert "envs/x is a symbolic link" in p.stdout + p.stderr, p.stdout + p.stderr
    venvfs("rm", "x")
    assert elsewhere.is_dir() and (elsewhere / "upper" / "planted.py").exists()
    venvfs("store", "verify")


@needs_fuse
def test_mount_does_not_serve_a_symlinked_env(tmp_path, venvfs, mnt, six_venv):
    venvfs("import", six_venv, "--name", "x")
    home = venvfs.home
    elsewhere = env_moved_outside(venvfs, tmp_path, "x")
    mnt.mount()
    with pytest.raises(OSError) as e:
        os.listdir(mnt.path / "x")
    assert e.value.errno == 5  # EIO
    mnt.umount()
    assert_names_link(mnt.log(), home / "envs" / "x")


def test_verify_reports_symlinks_in_envs_run_and_log(tmp_path, venvfs, six_venv):
    venvfs("import", six_venv, "--name", "v")
    home = venvfs.home
    target = planted_outside(tmp_path, "t")
    (home / "envs" / "v" / "views").symlink_to(target)
    shutil.rmtree(home / "envs" / "v" / "work")
    (home / "envs" / "v" / "work").symlink_to(tmp_path / "outside")
    (home / "run").mkdir(exist_ok=True)
    (home / "run" / "env-v.lock").symlink_to(target)
    (home / "log" / "mount.log").symlink_to(target)
    p = venvfs("store", "verify", check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    for rel in ["envs/v/views", "envs/v/work", "run/env-v.lock", "log/mount.log"]:
        assert f"{rel} is a symbolic link" in out, out


def test_absorb_refuses_a_symlinked_env_lock(tmp_path, venvfs, six_venv):
    """`venvfs absorb` without a daemon takes run/env-NAME.lock: never through a symlink."""
    venvfs("import", six_venv, "--name", "v")
    home = venvfs.home
    (home / "run").mkdir(exist_ok=True)
    lock = tmp_path / "outside-lock"
    (home / "run" / "env-v.lock").symlink_to(lock)
    p = venvfs("absorb", "v", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert_names_link(p.stderr, home / "run" / "env-v.lock")
    assert not lock.exists()
