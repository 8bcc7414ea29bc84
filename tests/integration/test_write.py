"""Writable envs: real Python tooling (pip, uv, compileall, editors) inside a mounted env.

Every test mounts a real store, runs the real tool against the view, and
checks the result the way a user would (imports, console scripts, pip's own
view of the env) and the way the design promises (the writes land in that
env's writable layer, HOME/envs/NAME/upper; other envs and the store do not
change). Where a native venv can do the same thing, the result is compared
with it. Mounts are always unmounted by the fixture, even on failure.
"""
import base64
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, CACHE, kernel_has_passthrough, make_venv, run, tree_listing

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")

PYVER = f"python3.{sys.version_info[1]}"
SP = f"lib/{PYVER}/site-packages"

# Wheels these tests need beyond conftest's wheelhouse. Two resolutions,
# because an old and a new version of the same project cannot be in one.
WRITE_WHEELS_OLD = ["six==1.16.0", "pip==24.0"]
WRITE_WHEELS_NEW = ["six", "pip", "setuptools>=70", "wheel", "numpy", "markupsafe", "flask",
                    "requests", "charset-normalizer"]


@pytest.fixture(scope="session")
def wheels(wheelhouse):
    """CACHE/wheels-write: every wheel these tests install (downloaded once, then offline)."""
    wh = CACHE / "wheels-write"
    wh.mkdir(parents=True, exist_ok=True)
    stamp = wh / ".complete"
    if not stamp.exists():
        base = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", wh]
        for group in (WRITE_WHEELS_OLD, WRITE_WHEELS_NEW):
            p = run(base + ["--no-index", "--find-links", wh, "--find-links", wheelhouse] + group, check=False)
            if p.returncode != 0:
                run(base + group)
        stamp.write_text("ok\n")
    return wh


def wheel_versions(wh, project):
    """Versions of project in the wheel directory, oldest first."""
    vs = {f.name.split("-")[1] for f in wh.glob("*.whl") if f.name.split("-")[0].lower() == project}
    return sorted(vs, key=lambda v: tuple(int(x) if x.isdigit() else 0 for x in v.split(".")))


@pytest.fixture(scope="session")
def uv_bin():
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH: these tests need it (the dev venv has it)"
    return uv


# ---- helpers ---------------------------------------------------------------------------


def clean_env(**extra):
    """The environment for tools run in an env: nothing from the test runner's venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV", "CONDA"))}
    if os.environ.get("VIRTUAL_ENV"):
        vbin = os.path.join(os.environ["VIRTUAL_ENV"], "bin")
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != vbin)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_NO_CACHE_DIR="1")
    env.update(extra)
    return env


def log_tail(mnt, n=60):
    try:
        return "\n".join(mnt.log().splitlines()[-n:])
    except OSError as e:
        return f"(no daemon log: {e})"


def vrun(mnt, args, check=True, **kw):
    """run() in a mounted env; a failure shows the daemon log too."""
    kw.setdefault("env", clean_env())
    p = run(args, check=False, **kw)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\n"
            f"stderr:\n{p.stderr[-5000:]}\ndaemon log (tail):\n{log_tail(mnt)}")
    return p


def py(mnt, env_dir, code, check=True, **kw):
    return vrun(mnt, [Path(env_dir) / "bin" / "python", "-c", code], check=check, **kw)


def pip(mnt, env_dir, *args, check=True, **kw):
    return vrun(mnt, [Path(env_dir) / "bin" / "python", "-m", "pip", *args], check=check, **kw)


def offline(wh):
    return ["--no-index", "--find-links", str(wh)]


def upper(venvfs, name):
    return venvfs.home / "envs" / name / "upper"


def names_under(root):
    """Every path below root, relative."""
    root = Path(root)
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(str((Path(dirpath) / n).relative_to(root)))
    return out


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dist_infos(sp, project):
    norm = project.lower().replace("-", "_")
    return sorted(p.name for p in Path(sp).iterdir()
                  if p.name.endswith(".dist-info") and p.name.split("-")[0].lower().replace("-", "_") == norm)


def check_record(sp, distinfo):
    """Every file a RECORD lists is there with the hash it lists; returns the listed paths."""
    sp = Path(sp)
    listed = set()
    with open(sp / distinfo / "RECORD", newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            path, digest = row[0], row[1]
            p = os.path.normpath(sp / path)
            listed.add(p)
            assert os.path.lexists(p), f"{distinfo}/RECORD lists {path}, missing in the view"
            if digest:
                algo, want = digest.split("=", 1)
                got = base64.urlsafe_b64encode(hashlib.new(algo, Path(p).read_bytes()).digest()).rstrip(b"=")
                assert got.decode() == want, f"{path}: content does not match {distinfo}/RECORD"
    return listed


def assert_shebang_names(script, view):
    head = Path(script).read_text().splitlines()[:3]
    direct = head[0] == f"#!{view}/bin/python"
    trampoline = head[0] == "#!/bin/sh" and f'"{view}/bin/python"' in head[1]
    assert direct or trampoline, (script, head)


def make_project(root, name="editdemo", value=1):
    """A small local pyproject project (setuptools, src layout, one console script)."""
    root = Path(root)
    (root / "src" / name).mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        "[build-system]\nrequires = [\"setuptools>=70\", \"wheel\"]\n"
        "build-backend = \"setuptools.build_meta\"\n\n"
        f"[project]\nname = \"{name}\"\nversion = \"0.1\"\n\n"
        f"[project.scripts]\n{name} = \"{name}:main\"\n\n"
        "[tool.setuptools.packages.find]\nwhere = [\"src\"]\n")
    (root / "src" / name / "__init__.py").write_text(
        f"VALUE = {value}\n\ndef main():\n    print('{name}', VALUE)\n")
    return root


# ---- 1. pip install -r --------------------------------------------------------------------


def test_pip_install_requirements(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "app", ["six"], wheels)
    venvfs("import", src, "--name", "app")
    venvfs("clone", "app", "other")
    # the same install in a native venv, to compare with
    native = make_venv(tmp_path / "native" / "app", ["six"], wheels)
    req = tmp_path / "requirements.txt"
    req.write_text("numpy\nflask\nrequests\nmarkupsafe\n")
    pip(mnt, native, "install", "-q", *offline(wheels), "-r", req)

    mnt.mount()
    view = mnt.path / "app"
    pip(mnt, view, "install", "-q", *offline(wheels), "-r", req)
    vsp = view / SP

    # imports work, C extensions load from the view
    out = json.loads(py(mnt, view, (
        "import json, numpy, flask, requests, markupsafe, charset_normalizer\n"
        "import numpy._core._multiarray_umath as m\n"
        "from markupsafe import _speedups\n"
        "print(json.dumps([int(numpy.arange(10).sum()), m.__file__, _speedups.__file__, flask.__file__,"
        " str(markupsafe.escape('<a>'))]))")).stdout)
    assert out[0] == 45
    for f in out[1:4]:
        assert f.startswith(str(vsp) + "/"), f
    assert out[4] == "&lt;a&gt;"

    # console scripts run, and name the view's interpreter
    assert "Flask" in vrun(mnt, [view / "bin" / "flask", "--version"]).stdout
    vrun(mnt, [view / "bin" / "normalizer", "--version"])
    for s in ["flask", "normalizer", "f2py"]:
        assert_shebang_names(view / "bin" / s, view)

    # pip's own view of the env: as in the native venv, consistent, complete
    for cmd in (["list", "--format=freeze"], ["freeze", "--all"], ["check"]):
        assert pip(mnt, view, *cmd).stdout == pip(mnt, native, *cmd).stdout, cmd
    freeze = pip(mnt, view, "freeze").stdout.lower()
    for p in ["numpy==", "flask==", "requests==", "markupsafe==", "charset-normalizer=="]:
        assert p in freeze, p
    listed = {d["name"].lower(): d["version"] for d in json.loads(pip(mnt, view, "list", "--format=json").stdout)}
    meta = json.loads(py(mnt, view, "import json, importlib.metadata as m; print(json.dumps("
                                     "{d.metadata['Name'].lower(): d.version for d in m.distributions()}))").stdout)
    assert listed == meta
    for project in ["numpy", "flask", "requests", "markupsafe", "charset_normalizer", "werkzeug"]:
        (di,) = dist_infos(vsp, project)
        check_record(vsp, di)

    # the same files as a native install (bytecode and RECORD name the path: not compared)
    nsp = native / SP
    assert names_under(vsp) == names_under(nsp)
    for rel in sorted(names_under(nsp)):
        if (nsp / rel).is_file() and not rel.endswith((".pyc", "RECORD")):
            assert sha256(vsp / rel) == sha256(nsp / rel), rel

    # the installed files are in this env's writable layer
    up = upper(venvfs, "app")
    for rel in [f"{SP}/numpy/__init__.py", f"{SP}/flask/app.py", "bin/flask", "bin/normalizer"]:
        assert (up / rel).is_file(), rel
        assert (up / rel).read_bytes() == (view / rel).read_bytes(), rel
    so = next((up / SP / "numpy" / "_core").glob("_multiarray_umath*.so"))
    assert so.stat().st_size > 1_000_000

    # ...and nowhere else: the clone and a fresh mount of it see none of it
    oview = mnt.path / "other"
    for rel in [f"{SP}/numpy", f"{SP}/flask", "bin/flask", "bin/normalizer"]:
        assert not (oview / rel).exists(), rel
    r = py(mnt, oview, "import numpy", check=False)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr
    oup = upper(venvfs, "other")
    assert not oup.exists() or not any("numpy" in n or "flask" in n for n in names_under(oup))
    assert "numpy" not in pip(mnt, oview, "freeze").stdout.lower()

    # it stays after a remount
    mnt.umount()
    mnt.mount()
    py(mnt, view, "import numpy, flask, requests")
    assert "numpy" not in pip(mnt, oview, "freeze").stdout.lower()


# ---- 2. pip install -U ----------------------------------------------------------------------


@pytest.mark.parametrize("old_in", ["store", "upper"])
def test_pip_upgrade(tmp_path, venvfs, mnt, wheels, old_in):
    old, new = wheel_versions(wheels, "six")[0], wheel_versions(wheels, "six")[-1]
    assert old == "1.16.0" and new != old
    if old_in == "store":
        src = make_venv(tmp_path / "src" / "up", [f"six=={old}"], wheels)  # imported: store-backed
    else:
        src = make_venv(tmp_path / "src" / "up")
    venvfs("import", src, "--name", "up")
    mnt.mount()
    view = mnt.path / "up"
    vsp = view / SP
    if old_in == "upper":
        pip(mnt, view, "install", "-q", *offline(wheels), f"six=={old}")
    assert py(mnt, view, "import six; print(six.__version__)").stdout.strip() == old
    assert dist_infos(vsp, "six") == [f"six-{old}.dist-info"]

    pip(mnt, view, "install", "-q", "-U", *offline(wheels), "six")

    assert py(mnt, view, "import six; print(six.__version__)").stdout.strip() == new
    assert dist_infos(vsp, "six") == [f"six-{new}.dist-info"]
    assert not (vsp / f"six-{old}.dist-info").exists()
    listed = check_record(vsp, f"six-{new}.dist-info")
    assert f'__version__ = "{new}"' in (vsp / "six.py").read_text()
    # nothing of the old version is left: every six file in site-packages is the new RECORD's
    # (pip vendors a six of its own: pip/_vendor/six.py is not ours)
    leftovers = [n for n in names_under(vsp) if "six" in n.lower() and not n.startswith("pip/")
                 and not (vsp / n).is_dir() and os.path.normpath(vsp / n) not in listed]
    assert leftovers == []
    assert not any(n.startswith("~") for n in os.listdir(vsp))
    assert pip(mnt, view, "list", "--format=freeze").stdout.count("six==") == 1
    assert f"six=={new}" in pip(mnt, view, "freeze").stdout
    # the same after a remount
    mnt.umount()
    mnt.mount()
    assert py(mnt, view, "import six; print(six.__version__)").stdout.strip() == new
    assert dist_infos(vsp, "six") == [f"six-{new}.dist-info"]


# ---- 3. pip uninstall of a store package ----------------------------------------------------------


def test_pip_uninstall_store_package(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "un", ["six", "markupsafe"], wheels)
    venvfs("import", src, "--name", "un")
    venvfs("clone", "un", "keep")  # made before the uninstall
    mnt.mount()
    view = mnt.path / "un"
    vsp = view / SP
    before = names_under(vsp)
    assert names_under(src / SP) == before
    (six_di,) = dist_infos(vsp, "six")
    (ms_di,) = dist_infos(vsp, "markupsafe")

    pip(mnt, view, "uninstall", "-y", "six", "markupsafe")
    pip(mnt, src, "uninstall", "-y", "six", "markupsafe")  # the same, natively

    for mod in ["six", "markupsafe"]:
        r = py(mnt, view, f"import {mod}", check=False)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (mod, r.stderr)
    assert not (vsp / six_di).exists() and not (vsp / ms_di).exists()
    assert not (vsp / "six.py").exists() and not (vsp / "markupsafe").exists()
    top = os.listdir(vsp)
    assert not [n for n in top if "six" in n.lower() or "markupsafe" in n.lower() or n.startswith("~")], top
    after = names_under(vsp)
    assert after == names_under(src / SP), (sorted(after - names_under(src / SP)),
                                             sorted(names_under(src / SP) - after))
    assert not any(("six" in n or "markupsafe" in n.lower()) and not n.startswith("pip/") for n in after)
    assert "six" not in pip(mnt, view, "freeze", "--all").stdout.lower()
    pip(mnt, view, "check")

    # the store's copy is untouched: the clone still has and uses both
    keep = mnt.path / "keep"
    py(mnt, keep, "import six, markupsafe._speedups; assert six.PY3")
    assert names_under(keep / SP) == before
    venvfs("store", "verify")

    # the uninstall holds after a remount
    mnt.umount()
    mnt.mount()
    assert names_under(vsp) == after
    assert py(mnt, view, "import six", check=False).returncode != 0
    py(mnt, keep, "import six, markupsafe")


# ---- 4. pip install -e ----------------------------------------------------------------------


def test_pip_install_editable(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "ed")
    venvfs("import", src, "--name", "ed")
    proj = make_project(tmp_path / "proj")
    mnt.mount()
    view = mnt.path / "ed"
    # the build backend goes into the env itself (no build isolation: offline, and more writes)
    pip(mnt, view, "install", "-q", *offline(wheels), "setuptools>=70", "wheel")
    pip(mnt, view, "install", "-q", *offline(wheels), "--no-build-isolation", "-e", proj)

    assert py(mnt, view, "import editdemo; print(editdemo.VALUE)").stdout.strip() == "1"
    assert vrun(mnt, [view / "bin" / "editdemo"]).stdout.split() == ["editdemo", "1"]
    assert_shebang_names(view / "bin" / "editdemo", view)
    # editing the project is seen at once: the env points at the source
    init = proj / "src" / "editdemo" / "__init__.py"
    init.write_text(init.read_text().replace("VALUE = 1", "VALUE = 2") + "EXTRA = 'yes'\n")
    assert py(mnt, view, "import editdemo; print(editdemo.VALUE, editdemo.EXTRA)").stdout.split() == ["2", "yes"]
    assert py(mnt, view, "import editdemo; print(editdemo.__file__)").stdout.strip() == str(init)

    listed = json.loads(pip(mnt, view, "list", "--format=json").stdout)
    ed = [d for d in listed if d["name"] == "editdemo"]
    assert ed and ed[0].get("editable_project_location") == str(proj), ed
    assert "editdemo" in pip(mnt, view, "list", "-e").stdout
    assert f"-e {proj}" in pip(mnt, view, "freeze").stdout.splitlines()
    (di,) = dist_infos(view / SP, "editdemo")
    listed = check_record(view / SP, di)
    assert (upper(venvfs, "ed") / SP / di).is_dir()
    pip(mnt, view, "check")

    # and uninstalled again: nothing of it stays in the env, the project stays
    pip(mnt, view, "uninstall", "-y", "editdemo")
    assert py(mnt, view, "import editdemo", check=False).returncode != 0
    assert not any(os.path.lexists(p) for p in listed), [p for p in listed if os.path.lexists(p)]
    assert not [n for n in os.listdir(view / SP) if "editdemo" in n or n.startswith("~")]
    assert init.is_file()


# ---- 5. uv pip install / uninstall ---------------------------------------------------------------


def test_uv_pip_install_and_uninstall(tmp_path, venvfs, mnt, wheels, uv_bin):
    src = make_venv(tmp_path / "src" / "uvenv", ["six"], wheels)
    venvfs("import", src, "--name", "uvenv")
    venvfs("clone", "uvenv", "uvother")
    mnt.mount()
    view = mnt.path / "uvenv"
    vsp = view / SP
    uvenv = clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never", UV_NO_CONFIG="1",
                      UV_OFFLINE="1")
    uv = [uv_bin, "pip"]
    tgt = ["--python", str(view / "bin" / "python")]
    vrun(mnt, uv + ["install", *tgt, *offline(wheels), "flask", "numpy"], env=uvenv)

    py(mnt, view, "import flask, numpy, markupsafe._speedups; assert numpy.ones(3).sum() == 3")
    assert "Flask" in vrun(mnt, [view / "bin" / "flask", "--version"]).stdout
    assert_shebang_names(view / "bin" / "flask", view)
    for project in ["flask", "numpy", "werkzeug", "markupsafe"]:
        (di,) = dist_infos(vsp, project)
        assert (vsp / di / "INSTALLER").read_text().strip() == "uv"
        check_record(vsp, di)
    uvlist = vrun(mnt, uv + ["list", *tgt, "--format=freeze"], env=uvenv).stdout.lower()
    assert "flask==" in uvlist and "numpy==" in uvlist and "six==" in uvlist
    norm = lambda out: sorted(l.lower().replace("_", "-") for l in out.splitlines() if "==" in l)
    assert norm(pip(mnt, view, "list", "--format=freeze").stdout) == norm(uvlist)
    pip(mnt, view, "check")
    assert (upper(venvfs, "uvenv") / SP / "flask" / "__init__.py").is_file()
    assert not (mnt.path / "uvother" / SP / "flask").exists()

    # uninstall: a uv-installed package and the store-backed six
    vrun(mnt, uv + ["uninstall", *tgt, "flask", "six"], env=uvenv)
    for mod in ["flask", "six"]:
        r = py(mnt, view, f"import {mod}", check=False)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (mod, r.stderr)
    assert dist_infos(vsp, "flask") == [] and dist_infos(vsp, "six") == []
    assert not (vsp / "flask").exists() and not (vsp / "six.py").exists() and not (view / "bin" / "flask").exists()
    py(mnt, view, "import numpy, werkzeug")  # the rest stays
    uvlist = vrun(mnt, uv + ["list", *tgt, "--format=freeze"], env=uvenv).stdout.lower()
    assert "flask==" not in uvlist and "six==" not in uvlist and "numpy==" in uvlist
    py(mnt, mnt.path / "uvother", "import six")


# ---- 6. upgrading pip itself -------------------------------------------------------------------------


def test_pip_upgrades_itself(tmp_path, venvfs, mnt, wheels):
    old, new = "24.0", wheel_versions(wheels, "pip")[-1]
    assert new != old
    src = make_venv(tmp_path / "src" / "pipenv")
    run([src / "bin" / "python", "-m", "pip", "install", "-q", *offline(wheels), f"pip=={old}"], env=clean_env())
    venvfs("import", src, "--name", "pipenv")
    venvfs("clone", "pipenv", "pipclone")
    mnt.mount()
    view = mnt.path / "pipenv"
    vsp = view / SP
    assert vrun(mnt, [view / "bin" / "pip", "--version"]).stdout.startswith(f"pip {old} ")

    # what `python -m venv --upgrade-deps` does, from the local wheels
    pip(mnt, view, "install", "-q", "-U", *offline(wheels), "pip")

    for cmd in ([view / "bin" / "pip", "--version"], [view / "bin" / "python", "-m", "pip", "--version"],
                [view / "bin" / "pip3", "--version"]):
        out = vrun(mnt, cmd).stdout
        assert out.startswith(f"pip {new} from {vsp}/pip "), out
    assert dist_infos(vsp, "pip") == [f"pip-{new}.dist-info"]
    listed = check_record(vsp, f"pip-{new}.dist-info")
    stray = sorted(n for n in names_under(vsp / "pip") if not (vsp / "pip" / n).is_dir()
                   and os.path.normpath(vsp / "pip" / n) not in listed)
    assert stray == [], stray[:20]  # nothing of pip 24.0 is left
    assert not any(n.startswith("~") for n in os.listdir(vsp))
    # the new pip works
    pip(mnt, view, "install", "-q", *offline(wheels), "six")
    py(mnt, view, "import six")
    pip(mnt, view, "check")
    assert_shebang_names(view / "bin" / "pip", view)
    # the clone keeps its pip
    clone = mnt.path / "pipclone"
    assert vrun(mnt, [clone / "bin" / "pip", "--version"]).stdout.startswith(f"pip {old} from {clone / SP}/pip ")
    assert dist_infos(clone / SP, "pip") == [f"pip-{old}.dist-info"]


# ---- 7. compileall --------------------------------------------------------------------------


def test_compileall_then_imports_write_nothing(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "cc", ["six", "flask"], wheels)
    venvfs("import", src, "--name", "cc")
    mnt.mount()
    view = mnt.path / "cc"
    vsp = view / SP
    # a package installed without bytecode (writable layer), next to store packages
    pip(mnt, view, "install", "-q", "--no-compile", *offline(wheels), "requests")
    assert not (vsp / "requests" / "__pycache__").exists()

    vrun(mnt, [view / "bin" / "python", "-m", "compileall", "-q", vsp])
    # and forced over store packages: py_compile replaces their pycs by rename
    vrun(mnt, [view / "bin" / "python", "-m", "compileall", "-q", "-f", vsp / "flask", vsp / "six.py"])
    up = upper(venvfs, "cc")
    tag = f"cpython-3{sys.version_info[1]}"
    assert (up / SP / "requests" / "__pycache__" / f"__init__.{tag}.pyc").is_file()
    assert (up / SP / "flask" / "__pycache__" / f"app.{tag}.pyc").is_file()

    mods = "six, flask, flask.app, werkzeug, jinja2, requests, urllib3, idna, certifi, charset_normalizer"
    code = (f"import sys, {mods}\n"
            "import importlib.util as u\n"
            "for m in ['six', 'flask.app', 'requests', 'urllib3', 'idna']:\n"
            "    mod = sys.modules[m]\n"
            "    assert mod.__cached__ and mod.__spec__.cached, m\n")
    env = clean_env()
    assert "PYTHONDONTWRITEBYTECODE" not in env
    before_upper = tree_listing(up)
    before_stats = mnt.stats()
    py(mnt, view, code, env=env)
    py(mnt, view, code, env=env)
    after_stats = mnt.stats()
    assert tree_listing(up) == before_upper
    for op in ["create", "mkdir", "write", "setattr", "rename", "unlink"]:
        assert after_stats.get(op, 0) == before_stats.get(op, 0), (op, before_stats.get(op), after_stats.get(op))
    # Python really uses those pycs: a verbose import reads requests' from the writable layer's copy
    v = vrun(mnt, [view / "bin" / "python", "-v", "-c", "import requests, six, flask"], env=env).stderr
    assert f"matches {vsp}/requests/__init__.py" in v
    assert f"matches {vsp}/six.py" in v
    assert "could not create" not in v and "wrote " not in v


# ---- 8. editing a store file in one env ---------------------------------------------------------


def test_edit_store_file_is_private_to_the_env(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "ea", ["six", "idna"], wheels)
    venvfs("import", src, "--name", "ea")
    venvfs("clone", "ea", "eb")
    orig = sha256(src / SP / "six.py")
    orig_idna = {f: sha256(src / SP / "idna" / f) for f in ["__init__.py", "package_data.py"]}
    version = py(mnt, src, "import six; print(six.__version__)").stdout.strip()
    mnt.mount()
    a, b = mnt.path / "ea", mnt.path / "eb"
    # both have imported it (cached by the kernel and, if anything, by Python)
    for v in (a, b):
        assert py(mnt, v, "import six; print(six.__version__)").stdout.strip() == version
    assert os.stat(a / SP / "six.py").st_ino == os.stat(b / SP / "six.py").st_ino  # shared

    # 1. an edit that keeps the size: only the mtime tells Python its pyc is stale
    fake = "9" * len(version.split(".")[0]) + version[len(version.split(".")[0]):]
    text = (a / SP / "six.py").read_text()
    assert f'__version__ = "{version}"' in text
    with open(a / SP / "six.py", "r+") as f:
        f.write(text.replace(f'__version__ = "{version}"', f'__version__ = "{fake}"', 1))
    assert os.stat(a / SP / "six.py").st_size == len(text.encode())
    assert py(mnt, a, "import six; print(six.__version__)").stdout.strip() == fake
    # 2. an append (a new name)
    with open(a / SP / "six.py", "a") as f:
        f.write("VENVFS_MARKER = 42\n")
    assert py(mnt, a, "import six; print(six.VENVFS_MARKER, six.__version__)").stdout.split() == ["42", fake]
    assert py(mnt, a, "import six; print(six.VENVFS_MARKER)").stdout.strip() == "42"  # and from its new pyc

    # 3. how editors save: sed -i writes a new file and renames it over the store file
    run(["sed", "-i", r"$a SED_MARKER = 'sed'", a / SP / "idna" / "__init__.py"])
    # 4. a truncating rewrite (open(..., "w")) of another store file
    pd = a / SP / "idna" / "package_data.py"
    pd.write_text(pd.read_text().replace("__version__ = ", "__version__ = 'edited' or "))
    out = py(mnt, a, "import idna; print(idna.SED_MARKER, idna.package_data.__version__)").stdout.split()
    assert out == ["sed", "edited"]

    # the other env, the native venv and the store keep the original
    assert py(mnt, b, "import six; print(hasattr(six, 'VENVFS_MARKER'), six.__version__)").stdout.split() == \
        ["False", version]
    assert py(mnt, b, "import idna; print(hasattr(idna, 'SED_MARKER'), idna.package_data.__version__)"
              ).stdout.split() == ["False", py(mnt, src, "import idna; print(idna.__version__)").stdout.strip()]
    assert {f: sha256(b / SP / "idna" / f) for f in orig_idna} == orig_idna
    assert {f: sha256(src / SP / "idna" / f) for f in orig_idna} == orig_idna
    assert sha256(b / SP / "six.py") == orig
    assert os.stat(a / SP / "six.py").st_ino != os.stat(b / SP / "six.py").st_ino
    assert "VENVFS_MARKER" in (upper(venvfs, "ea") / SP / "six.py").read_text()
    assert not (upper(venvfs, "eb") / SP / "six.py").exists()
    venvfs("store", "verify")
    # ...also after a remount (nothing cached)
    mnt.umount()
    mnt.mount()
    assert sha256(b / SP / "six.py") == orig
    assert py(mnt, b, "import six; print(hasattr(six, 'VENVFS_MARKER'))").stdout.strip() == "False"
    assert py(mnt, a, "import six; print(six.VENVFS_MARKER)").stdout.strip() == "42"
    assert py(mnt, a, "import idna; print(idna.SED_MARKER)").stdout.strip() == "sed"
    assert {f: sha256(b / SP / "idna" / f) for f in orig_idna} == orig_idna


# ---- 9. durability across kill -9 ----------------------------------------------------------------


def test_writes_survive_kill9(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "dur", ["six", "idna"], wheels)
    venvfs("import", src, "--name", "dur")
    mnt.mount()
    view = mnt.path / "dur"
    vsp = view / SP
    (view / "notes.txt").write_text("written and closed\n")
    data = os.urandom(3 << 20)
    fd = os.open(view / "synced.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(view, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    pip(mnt, view, "install", "-q", *offline(wheels), "markupsafe")
    # changes to store content too: an edit, a removal, a directory rename
    with open(vsp / "six.py", "a") as f:
        f.write("DURABLE = 1\n")
    (vsp / "idna" / "codec.py").unlink()
    os.rename(vsp / "idna", vsp / "idna_moved")
    py(mnt, view, "import markupsafe._speedups, six; assert six.DURABLE == 1")
    before = tree_listing(view)

    pid = mnt.pid()
    os.kill(pid, signal.SIGKILL)
    for _ in range(250):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    time.sleep(0.2)
    with pytest.raises(OSError):
        os.listdir(mnt.path)  # dead: ENOTCONN
    mnt.mount()  # venvfs mount clears the dead mount itself

    assert os.listdir(mnt.path) == ["dur"]
    after = tree_listing(view)
    missing = sorted(set(before) - set(after))
    extra = sorted(set(after) - set(before))
    differ = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not missing and not extra and not differ, (missing[:10], extra[:10], differ[:10])
    assert (view / "synced.bin").read_bytes() == data
    assert (view / "notes.txt").read_text() == "written and closed\n"
    py(mnt, view, "import markupsafe._speedups, six; assert six.DURABLE == 1")
    assert not (vsp / "idna").exists() and (vsp / "idna_moved" / "core.py").is_file()
    assert not (vsp / "idna_moved" / "codec.py").exists()
    pip(mnt, view, "check")
    venvfs("store", "verify")


# ---- 10. concurrent installs -----------------------------------------------------------------------


def test_concurrent_pip_installs_in_two_envs(tmp_path, venvfs, mnt, wheels):
    src = make_venv(tmp_path / "src" / "ca", ["six"], wheels)
    venvfs("import", src, "--name", "ca")
    venvfs("clone", "ca", "cb")  # shares every store file (and directory) with ca
    mnt.mount()
    a, b = mnt.path / "ca", mnt.path / "cb"
    jobs = {
        a: ["flask"],
        b: ["requests", "numpy"],
    }
    procs = {v: subprocess.Popen([v / "bin" / "python", "-m", "pip", "install", "-q", *offline(wheels), *pkgs],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
             for v, pkgs in jobs.items()}
    for v, p in procs.items():
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, f"{v.name}: pip exited {p.returncode}\n{err[-4000:]}\n{log_tail(mnt)}"

    fa = pip(mnt, a, "freeze").stdout.lower()
    fb = pip(mnt, b, "freeze").stdout.lower()
    assert "flask==" in fa and "werkzeug==" in fa and "six==" in fa
    assert "requests==" not in fa and "numpy==" not in fa and "urllib3==" not in fa
    assert "requests==" in fb and "numpy==" in fb and "urllib3==" in fb and "six==" in fb
    assert "flask==" not in fb and "werkzeug==" not in fb and "markupsafe==" not in fb
    py(mnt, a, "import flask, six")
    py(mnt, b, "import requests, numpy, six; assert numpy.arange(4).sum() == 6")
    assert py(mnt, a, "import numpy", check=False).returncode != 0
    assert py(mnt, b, "import flask", check=False).returncode != 0
    for v, projects in ((a, ["flask", "werkzeug", "jinja2"]), (b, ["requests", "numpy", "urllib3"])):
        for project in projects:
            (di,) = dist_infos(v / SP, project)
            check_record(v / SP, di)
        pip(mnt, v, "check")
    ua, ub = names_under(upper(venvfs, "ca")), names_under(upper(venvfs, "cb"))
    assert any(n.startswith(f"{SP}/flask/") for n in ua) and not any("numpy" in n for n in ua)
    assert any(n.startswith(f"{SP}/numpy/") for n in ub) and not any("flask" in n for n in ub)
    assert int(mnt.stats().get("write.errors", 0)) == 0


# ---- 11. large writes ---------------------------------------------------------------------


def test_large_writes_go_straight_to_the_layer(tmp_path, venvfs, mnt, wheels):
    """A file of the writable layer is read and written by the kernel itself
    (FUSE passthrough, Linux 6.9+ as root): no write request reaches the
    daemon, and the data is all there, in the layer and through the mount."""
    base = make_venv(tmp_path / "base", with_pip=False)
    venvfs("import", base, "--name", "big")
    mnt.mount()
    f = mnt.path / "big" / "data.bin"
    before = mnt.stats().get("write", 0)
    chunk = os.urandom(1 << 20)
    with open(f, "wb") as out:
        for _ in range(64):
            out.write(chunk)
        os.fsync(out.fileno())
    with open(f, "r+b") as rw:  # a second open of the same file, read and write
        rw.seek(10)
        rw.write(b"hello")
    data = f.read_bytes()
    assert len(data) == 64 << 20 and data[10:15] == b"hello" and data[15:4096] == chunk[15:4096]
    assert (upper(venvfs, "big") / "data.bin").read_bytes() == data
    writes = mnt.stats().get("write", 0) - before
    if kernel_has_passthrough() and "passthrough refused" not in mnt.log():
        assert writes == 0, f"{writes} write requests went through the daemon"
    else:
        assert writes >= 64


def test_more_files_than_descriptors(tmp_path, venvfs, mnt):
    """Each file of a writable layer the kernel caches holds a descriptor in
    the daemon; past 3/4 of its limit, the daemon asks the kernel to forget
    files and directories (fs/inode.c, fd_pressure()). Writing, listing and
    reading three times as many as it may hold open works. (A burst of
    lookups much faster than the kernel's forgets under a small limit can
    still meet EMFILE: docs/design.md, descriptors.)"""
    base = make_venv(tmp_path / "base", with_pip=False)
    venvfs("import", base, "--name", "many")
    mnt.mount("--max-fds", "4096")
    d = mnt.path / "many" / "lib" / "data"
    d.mkdir()
    n = 10000
    for i in range(n):  # 10,000 files in one directory, 2,000 in 2,000 more
        (d / f"f{i}.txt").write_text(str(i))
    for i in range(2000):
        (d / f"d{i}").mkdir()
        (d / f"d{i}" / "f.txt").write_text(str(i))
    assert sorted(os.listdir(d)) == sorted([f"f{i}.txt" for i in range(n)] + [f"d{i}" for i in range(2000)])
    assert all((d / f"f{i}.txt").read_text() == str(i) for i in range(n))
    assert all((d / f"d{i}" / "f.txt").read_text() == str(i) for i in range(2000))
    assert "asked the kernel to forget" in mnt.log()
    assert "out of file descriptors" not in mnt.log(), mnt.log()[-3000:]
    assert int(mnt.stats()["nodes"]) < 4096


def test_creates_out_of_descriptors_leave_nothing(tmp_path, venvfs, mnt):
    """A create the daemon cannot answer (no descriptor left for the new
    file's node) fails, and leaves no empty file behind: nothing a caller
    was told failed may appear anyway."""
    base = make_venv(tmp_path / "base", with_pip=False)
    venvfs("import", base, "--name", "e")
    # a daemon whose hard limit is low: a create's file descriptor is had,
    # the one for its node is not
    mnt.path.mkdir(parents=True, exist_ok=True)
    run(["prlimit", "--nofile=150:150", BIN, "mount", mnt.path,
         *os.environ.get("VENVFS_TEST_MOUNT_ARGS", "").split()],
        env=dict(os.environ, VENVFS_HOME=str(venvfs.home)))
    mnt.mounted = True
    d = mnt.path / "e" / "data"
    d.mkdir()
    held, failed = [], []

    def create(name):
        try:
            held.append(open(d / name, "w"))
        except OSError as e:
            assert e.errno in (24, 23), e  # EMFILE, ENFILE
            failed.append(name)

    try:
        for i in range(2000):  # every open file holds a descriptor in the daemon
            create(f"held{i}")
            if failed:
                break
        assert failed, "the daemon never ran out of descriptors"
        # at the limit, one descriptor freed at a time: a create then
        # fails either at its file or at its node, whichever comes short
        for i in range(30):
            held.pop(0).close()
            create(f"more{i}")
            create(f"again{i}")
    finally:
        for f in held:
            f.close()
    names = set(os.listdir(upper(venvfs, "e") / "data"))
    assert not names & set(failed), sorted(names & set(failed))[:5]
