#!/usr/bin/env python3
"""venvfs mount, create and clone against native venvs (issue 3).

One run, one fresh loop-mounted ext4 (see bench/common.py), one store and one
venvfs mount; every competitor is measured in the same run, rounds interleave
the competitors (their order rotates from round to round), tables report
medians. Sections:

  create     an env of ~100 distributions from a requirements file (pip freeze
             of the native venv, which was imported): python -m venv + pip,
             virtualenv + pip, uv venv + uv pip (warm cache), cp -al of the
             native venv, venvfs create
  disk       du -s of the store before and after N more envs (create, clone)
  import     the heavy import, warm and cold: native venv vs the same env
             through the mount (and libfuse's passthrough_ll over the native
             venv if $PASSTHROUGH_LL names its binary; never built here),
             each run paired with a native run next to it
  pagecache  ten processes running the heavy import at once: /proc/meminfo
             Cached growth from a dropped cache, for ten envs through the
             mount, ten native copies, one native env
  find       find ENV and ls -lR ENV, cold: native vs view
  thousand   one daemon serving 1,000 envs: start-up, daemon RSS over scans

Usage: sudo bench/bench_mount.py [--rounds N] [--import-rounds N] [--only SECTION[,SECTION]] [--quick]
(writes the "mount" section of docs/benchmarks.md and docs/benchmarks-mount.png;
--quick uses tiny sizes, only to check that the script works end to end)
"""
import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (BASE_PYTHON, BIG_SET, CACHE, REPO, VENVFS, LoopFs, drop_caches, halt_poll_ab, halt_poll_note,
                    halt_polling, machine, make_venv, median, run, sync, table, timed, tree_stats, update_doc, wheelhouse)

# BIG_SET and these, with their dependencies: about 100 distributions.
EXTRA_SET = ["boto3", "sqlalchemy", "pytest", "black", "httpx", "pydantic", "fastapi", "celery", "rich",
             "typer", "jupyter-core", "pyyaml", "jsonschema", "tqdm", "attrs", "alembic", "redis", "isort",
             "flake8", "coverage", "uvicorn", "gunicorn", "cryptography"]
HEAVY = "import numpy, pandas, scipy.linalg, matplotlib.pyplot, django, flask, requests"
SMALL_SET = ["six", "idna", "certifi"]  # the env cloned 1,000 times
QUICK_SET = ["flask", "requests", "six", "attrs"]
QUICK_IMPORT = "import flask, requests"
FRESH = "venvfs view, daemon started after drop_caches"
SECTIONS = ["create", "disk", "import", "pagecache", "find", "thousand"]
PNG = REPO / "docs" / "benchmarks-mount.png"
DEVNULL = subprocess.DEVNULL


def quiet(args, **kw):
    """Time a command whose output is thrown away (find, ls -lR)."""
    return timed(args, capture_output=False, stdout=DEVNULL, stderr=subprocess.PIPE, **kw)


def fmt_t(s):
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def baseline(name):
    """The native venv timed under the same idle setting as competitor name."""
    return "native venv" + name[name.index(", halt-polling"):] if ", halt-polling" in name else "native venv"


def rotate(items, r):
    r %= len(items)
    return items[r:] + items[:r]


def mounted(path):
    """In the mount table, even if its daemon died (os.path.ismount says no then)."""
    path = os.path.realpath(path)
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


def du_bytes(*paths):
    """GNU du -s: disk blocks, a file with several links counted once per invocation."""
    return [int(line.split()[0]) for line in run(["du", "-s", "-B1", *paths]).stdout.splitlines()]


def cached_kb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1])


def resident_bytes(paths):
    """Page cache held by these files (fincore), 0 if fincore is missing."""
    if not shutil.which("fincore") or not paths:
        return 0
    total = 0
    paths = [str(p) for p in paths]
    for i in range(0, len(paths), 2000):
        out = run(["fincore", "-b", "-n", "-o", "RES", *paths[i:i + 2000]], check=False).stdout
        total += sum(int(x) for x in out.split() if x.isdigit())
    return total


def raise_nofile():
    """As many open files as allowed: fs.nr_open, else (no CAP_SYS_RESOURCE) the hard limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        n = int(Path("/proc/sys/fs/nr_open").read_text())
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_id(binary):
    """Which venvfs was measured: its binary's hash and time, the commit of the sources."""
    st = os.stat(binary)
    with open(binary, "rb") as f:
        h = hashlib.sha256(f.read()).hexdigest()[:12]
    head = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False).stdout.strip() or "?"
    dirty = run(["git", "-C", REPO, "status", "--porcelain", "--", "store", "fs", "tools", "meson.build"],
                check=False).stdout.split("\n")
    dirty = sorted({line[3:] for line in dirty if line.strip()})
    src = f"sources at {head}" + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else "")
    return h, f"sha256 {h}... built {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))}; {src}"


def snapshot_binary():
    """Run every step from a copy of the venvfs binary taken now: a rebuild during
    the run (make, meson compile) must not mix two builds into one table."""
    global VENVFS
    src = VENVFS
    snap = CACHE / "venvfs-measured"
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.unlink(missing_ok=True)
    shutil.copy2(src, snap)
    VENVFS = str(snap)
    return src


def tool(name):
    """virtualenv and uv: from PATH or tests/run's build-pyenv, else installed once from PyPI."""
    for cand in [shutil.which(name), REPO / "build-pyenv" / "bin" / name, CACHE / "tools" / "bin" / name]:
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    run([BASE_PYTHON, "-m", "venv", CACHE / "tools"])
    run([CACHE / "tools" / "bin" / "pip", "install", "-q", "virtualenv", "uv"])
    return str(CACHE / "tools" / "bin" / name)


class Mount:
    """A venvfs mount of one store. umount() may be called any number of times and
    leaves nothing mounted, even if the daemon died."""

    def __init__(self, home, path, *args):
        self.env = dict(os.environ, VENVFS_HOME=str(home))
        self.path = Path(path)
        self.args = args

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return timed([VENVFS, "mount", self.path, *self.args], env=self.env)

    def transport(self):
        os.listdir(self.path)  # the transport is chosen at the first request
        out = run([VENVFS, "stats", self.path], env=self.env).stdout
        return next((l.split()[1] for l in out.splitlines() if l.startswith("transport ")), "?")

    def umount(self):
        if mounted(self.path):
            run([VENVFS, "umount", self.path], env=self.env, check=False)
        if mounted(self.path):
            run(["fusermount3", "-u", "-z", self.path], check=False)

    def stats(self):
        d = {}
        for line in run([VENVFS, "stats", self.path], env=self.env).stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] != "op" and parts[1].isdigit():
                d[parts[0]] = int(parts[1])
        try:  # the daemon's anonymous and file-backed resident memory
            for line in Path(f"/proc/{d['pid']}/status").read_text().splitlines():
                if line.startswith(("RssAnon:", "RssFile:")):
                    d[line.split(":")[0]] = int(line.split()[1])
        except (KeyError, OSError):
            pass
        return d


class Passthrough(Mount):
    """libfuse's example passthrough_ll over a directory (the binary is given, never built)."""

    def __init__(self, binary, source, path):
        self.binary, self.source, self.path = binary, Path(source), Path(path)

    def mount(self):
        self.path.mkdir(parents=True, exist_ok=True)
        # It keeps an O_PATH fd open for every inode the kernel knows: with a
        # day-long timeout, every file and directory of the venv that was seen.
        return timed([self.binary, "-o", f"source={self.source},cache=always,timeout=86400", self.path],
                     preexec_fn=raise_nofile)

    def umount(self):
        if mounted(self.path):
            run(["fusermount3", "-u", "-z", self.path], check=False)


class Bench:
    def __init__(self, args, fs):
        self.args, self.fs, self.quick = args, fs, args.quick
        self.rounds = args.rounds
        self.import_rounds = args.import_rounds
        self.home = fs / "store"
        self.env = dict(os.environ, VENVFS_HOME=str(self.home))
        self.pyenv = dict(os.environ, MPLBACKEND="Agg", MPLCONFIGDIR=str(fs / "mplconfig"))
        self.heavy = QUICK_IMPORT if args.quick else HEAVY
        self.packages = QUICK_SET if args.quick else BIG_SET + EXTRA_SET
        self.mounts = []  # everything mounted, unmounted in main()'s finally
        self.problems = []
        self.res = {}
        self.halt_poll = {}  # competitor name -> guest_halt_poll_ns to time it with
        self.native = self.mnt = self.view = self.pt = None

    def venvfs(self, *args, env=None, **kw):
        return run([VENVFS, *args], env=env or self.env, **kw)

    def add_mount(self, m):
        self.mounts.append(m)
        return m

    def problem(self, text):
        text = " ".join(text.split())
        print("PROBLEM: " + text, flush=True)
        self.problems.append(text)

    def wait_for(self, path, what, timeout=10):
        end = time.time() + timeout
        while not os.path.exists(path):
            if time.time() > end:
                self.problem(f"{what}: {path} did not appear within {timeout} s")
                return False
            time.sleep(0.05)
        return True

    def time_all(self, comps, r, times, args_of, before=None):
        """One round: each competitor once, in rotated order. A failing
        passthrough_ll is dropped with a note (it is optional); a failing venvfs
        or native run stops the section."""
        for name, d in rotate(comps, r):
            if before:
                before(name)
            try:
                with halt_polling(self.halt_poll.get(name)):
                    times[name].append(timed(args_of(d), env=self.pyenv, capture_output=False, stdout=DEVNULL,
                                             stderr=subprocess.PIPE))
            except SystemExit as e:
                if not name.startswith("passthrough_ll"):
                    raise
                err = str(e)
                if "Too many open files" in err:
                    err = (f"`{err.split(' failed')[0]}`: Too many open files (passthrough_ll holds an fd for every "
                           f"inode the kernel keeps; its RLIMIT_NOFILE could be at most "
                           f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]} here)")
                self.problem(f"passthrough_ll dropped from the rest of this section: {err[:600]}")
                comps.remove((name, d))
                del times[name]

    def time_pairs(self, comps, r, times, ratios, args_of, before=None):
        """One round of paired runs: each competitor back to back with its
        baseline (the native venv under the same idle setting), the two in an
        order that alternates, the competitors in an order rotated each round.
        ratios[name] gets competitor / baseline of the pair: the machine's
        drift, slow over seconds, is mostly the same for both."""
        dirs = dict(comps)
        others = [c for c in comps if not c[0].startswith("native venv")]
        for i, (name, d) in enumerate(rotate(others, r)):
            pair = [(baseline(name), dirs[baseline(name)]), (name, d)]
            if (r + i) % 2:
                pair.reverse()
            got = {}
            for n, dd in pair:
                if n not in times:  # a passthrough_ll that failed (time_all)
                    break
                self.time_all([(n, dd)], 0, times, args_of, before)
                if n in times:
                    got[n] = times[n][-1]
            if len(got) == 2:
                ratios.setdefault(name, []).append(got[name] / got[baseline(name)])

    def py(self, env_dir, code, **kw):
        return run([Path(env_dir) / "bin" / "python", "-c", code], env=self.pyenv, **kw)

    # ---- shared setup -------------------------------------------------------------------

    def setup_big(self, wh):
        """The native venv, imported as env "big"; its pip freeze; the mount."""
        fs = self.fs
        t = time.perf_counter()
        self.native = make_venv(fs / "native", self.packages, wh)
        print(f"native venv: {time.perf_counter() - t:.1f} s", flush=True)
        self.files, self.size = tree_stats(self.native)
        site = next(self.native.glob("lib/python3.*/site-packages"))
        self.dists = len(list(site.glob("*.dist-info")))
        self.reqs = fs / "reqs.txt"
        self.reqs.write_text(run([self.native / "bin" / "python", "-m", "pip", "freeze"]).stdout)
        self.nreqs = len(self.reqs.read_text().split())
        t = time.perf_counter()
        self.import_out = self.venvfs("import", "-q", self.native, "--name", "big").stdout.strip()
        print(f"venvfs import: {time.perf_counter() - t:.1f} s", flush=True)
        self.mnt = self.add_mount(Mount(self.home, fs / "mnt"))
        self.mnt.mount()
        self.view = self.mnt.path / "big"
        self.res["transport"] = self.mnt.transport()
        # untimed: matplotlib builds its font cache once
        self.py(self.native, self.heavy)

    def passthrough(self):
        binary = os.environ.get("PASSTHROUGH_LL")
        if not binary:
            return None
        if self.pt is None:
            self.pt = self.add_mount(Passthrough(binary, self.native, self.fs / "pt"))
            try:
                self.pt.mount()
                if not mounted(self.pt.path):
                    self.problem(f"passthrough_ll ({binary}) exited without mounting; left out")
            except SystemExit as e:
                self.problem(f"passthrough_ll ({binary}) did not mount; left out: {str(e)[:600]}")
        return self.pt.path if mounted(self.pt.path) else None

    # ---- sections ---------------------------------------------------------------------------

    def sec_create(self, wh):
        fs, reqs = self.fs, self.reqs
        venv, uv = tool("virtualenv"), tool("uv")
        uvenv = dict(os.environ, UV_CACHE_DIR=str(fs / "uv-cache"), UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
        pip = lambda d: [d / "bin" / "pip", "install", "-q", "--no-index", "--find-links", wh, "-r", reqs]
        uvpip = lambda d: [uv, "pip", "install", "-q", "-p", d / "bin" / "python", "--no-index", "--find-links", wh,
                           "-r", reqs]
        steps = {
            "python -m venv + pip install": lambda d: [([BASE_PYTHON, "-m", "venv", d], None), (pip(d), None)],
            "virtualenv + pip install": lambda d: [([venv, "-q", "-p", BASE_PYTHON, d], None), (pip(d), None)],
            "uv venv + uv pip install (warm cache)": lambda d: [([uv, "venv", "-q", "-p", BASE_PYTHON, d], uvenv),
                                                                (uvpip(d), uvenv)],
            "cp -al of the native venv": lambda d: [(["cp", "-al", self.native, d], None)],
            "venvfs create": lambda d: [([VENVFS, "create", d.name, "--python", BASE_PYTHON, "-r", reqs], self.env)],
        }
        # Untimed warm-ups: uv's cache, virtualenv's app data; venvfs makes the
        # interpreter's venv skeleton on its first create (timed, shown apart).
        for cmd, e in steps["uv venv + uv pip install (warm cache)"](fs / "warm-uv"):
            run(cmd, env=e)
        run([venv, "-q", "-p", BASE_PYTHON, fs / "warm-virtualenv"])
        for d in ["warm-uv", "warm-virtualenv"]:
            shutil.rmtree(fs / d)
        sync()
        first = timed(steps["venvfs create"](fs / "first")[0][0], env=self.env)
        self.venvfs("rm", "first")
        times = {k: [] for k in steps}
        names = list(steps)
        for r in range(self.rounds):
            for name in rotate(names, r):
                d = fs / (f"created{r}" if name == "venvfs create" else "c-" + re.sub(r"\W+", "-", name))
                sync()
                time.sleep(1)
                t = time.perf_counter()
                for cmd, e in steps[name](d):
                    run(cmd, env=e)
                times[name].append(time.perf_counter() - t)
                if name != "venvfs create":
                    shutil.rmtree(d)
            print(f"create round {r + 1}: " + ", ".join(f"{k} {fmt_t(v[-1])}" for k, v in times.items()), flush=True)
        # the created envs work through the mount, with the native venv's distributions
        probe = ("import importlib.metadata as m, json; print(json.dumps(sorted("
                 "(d.metadata['Name'].lower().replace('_', '-'), d.version) for d in m.distributions() "
                 "if d.metadata['Name'].lower() not in ('pip', 'setuptools', 'wheel'))))")
        check = self.mnt.path / "created0"
        if self.wait_for(check / "pyvenv.cfg", "created env in the mount"):
            nat = json.loads(self.py(self.native, probe).stdout)
            got = self.py(check, probe, check=False)
            if got.returncode:
                self.problem(f"python in {check} failed: {got.stderr.strip()[-500:]}")
            elif json.loads(got.stdout) != nat:
                self.problem(f"{check} has other distributions than the native venv: "
                             f"{sorted(set(map(tuple, json.loads(got.stdout))) ^ set(map(tuple, nat)))[:10]}")
            imp = self.py(check, self.heavy, check=False)
            if imp.returncode:
                self.problem(f"`{self.heavy}` in {check} failed: {imp.stderr.strip()[-500:]}")
        self.venvfs("rm", *[f"created{r}" for r in range(self.rounds)])
        self.res["create"] = {"times": times, "first": first}

    def sec_disk(self):
        n = 3 if self.quick else 20
        out = {"n": n}
        for kind in ["create", "clone"]:
            before = du_bytes(self.home)[0]
            ts = []
            for i in range(n):
                args = (["create", f"disk-{kind}{i}", "--python", BASE_PYTHON, "-r", self.reqs] if kind == "create"
                        else ["clone", "big", f"disk-{kind}{i}"])
                ts.append(timed([VENVFS, *args], env=self.env))
            sync()
            after = du_bytes(self.home)[0]
            out[kind] = {"before": before, "after": after, "per_env": (after - before) / n, "times": ts}
            print(f"disk: {n} x {kind}: store {before} -> {after} bytes, {(after - before) / n / 1024:.1f} KiB per env",
                  flush=True)
        out["native"] = du_bytes(self.native)[0]
        run(["cp", "-al", self.native, self.fs / "disk-cpal"])
        out["cpal"] = du_bytes(self.native, self.fs / "disk-cpal")[1]
        shutil.rmtree(self.fs / "disk-cpal")
        out["store_du"] = self.venvfs("store", "du", "--json").stdout.strip()
        self.venvfs("rm", *[f"disk-{k}{i}" for k in ["create", "clone"] for i in range(n)])
        self.res["disk"] = out

    def sec_import(self):
        comps = [("native venv", self.native), ("venvfs view", self.view)]
        if self.mnt.transport() == "io_uring":  # the same view again through /dev/fuse (fs/uring.c)
            dev = self.add_mount(Mount(self.home, self.fs / "mnt-devfuse", "--no-uring"))
            dev.mount()
            comps.append(("venvfs view, /dev/fuse", dev.path / "big"))
        if self.passthrough():
            comps.append(("passthrough_ll over the native venv", self.pt.path))
        ns = halt_poll_ab()
        if ns is not None:  # the same two again with the guest's idle polling on (common.py)
            tag = f", halt-polling {ns // 1000} us"
            comps += [("native venv" + tag, self.native), ("venvfs view" + tag, self.view)]
            self.halt_poll = {"native venv" + tag: ns, "venvfs view" + tag: ns}
        # cold only: a daemon started after the caches are dropped, which has
        # checked no object yet (the view's daemon hashes each one once,
        # fs/inode.c checked_before(), so its cold rows show a daemon that
        # has served the env before, as one mounted for days has)
        fresh = self.add_mount(Mount(self.home, self.fs / "mnt-fresh"))
        fresh.mount()
        cold_comps = comps + [(FRESH, fresh.path / "big")]

        def cold_start(name):
            if name == FRESH:
                fresh.umount()
            drop_caches()
            if name == FRESH:
                fresh.mount()

        out, pairs = {}, {}
        for r in range(2):  # 2 untimed runs each; also checks that each works
            self.time_all(cold_comps, r, {name: [] for name, _ in cold_comps},
                          lambda d: [d / "bin" / "python", "-c", self.heavy])
        for mode in ["warm", "cold"]:
            cs = cold_comps if mode == "cold" else comps
            t = {name: [] for name, _ in cs}
            ratios = {}
            for r in range(self.import_rounds):
                self.time_pairs(cs, r, t, ratios, lambda d: [d / "bin" / "python", "-c", self.heavy],
                                cold_start if mode == "cold" else None)
                print(f"import {mode} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ratios.items()),
                      flush=True)
            out[mode], pairs[mode] = t, ratios
        self.res["import"] = out
        self.res["import_pairs"] = pairs

    def sec_pagecache(self):
        k = 3 if self.quick else 10
        fs = self.fs
        for i in range(k):
            self.venvfs("clone", "big", f"pc{i}")
            run(["cp", "-a", self.native, fs / f"copy{i}"])
        sync()
        clones = [self.mnt.path / f"pc{i}" for i in range(k)]
        copies = [fs / f"copy{i}" for i in range(k)]
        for d in clones:
            self.wait_for(d / "pyvenv.cfg", "cloned env in the mount")
        for d in clones + copies:  # untimed: each env works
            self.py(d, self.heavy)
        scen = [(f"{k} envs through the mount (clones of one env)", clones),
                (f"{k} native copies (cp -a)", copies),
                (f"1 native env, {k} processes", [self.native] * k),
                (f"1 env through the mount, {k} processes", [self.view] * k)]
        img = self.fs_img
        objects = [p for p in (self.home / "objects").rglob("*") if p.is_file()]
        res = {name: {"mb": [], "wall": [], "img": [], "store": []} for name, _ in scen}
        for r in range(self.rounds):
            for name, dirs in rotate(scen, r):
                drop_caches()
                time.sleep(0.5)
                c0 = cached_kb()
                t = time.perf_counter()
                procs = []
                try:
                    for d in dirs:
                        procs.append(subprocess.Popen([d / "bin" / "python", "-c", self.heavy], env=self.pyenv,
                                                      stdout=DEVNULL, stderr=subprocess.PIPE))
                    for p in procs:
                        if p.wait():
                            self.problem(f"pagecache: {name}: import failed: {p.stderr.read().decode()[-300:]}")
                finally:
                    for p in procs:
                        if p.poll() is None:
                            p.kill()
                            p.wait()
                        p.stderr.close()
                wall = time.perf_counter() - t
                c1 = cached_kb()
                res[name]["mb"].append((c1 - c0) * 1024 / 1e6)
                res[name]["wall"].append(wall)
                res[name]["img"].append(resident_bytes([img]) / 1e6)
                res[name]["store"].append(resident_bytes(objects) / 1e6)
            print(f"pagecache round {r + 1}: " + ", ".join(f"{n} {v['mb'][-1]:.0f} MB" for n, v in res.items()),
                  flush=True)
        for i in range(k):
            shutil.rmtree(fs / f"copy{i}")
        self.venvfs("rm", *[f"pc{i}" for i in range(k)])
        self.res["pagecache"] = {"k": k, "res": res}

    def sec_find(self):
        comps = [("native venv", self.native), ("venvfs view", self.view)]
        if self.passthrough():
            comps.append(("passthrough_ll over the native venv", self.pt.path))
        out = {}
        for cmd in [["find"], ["ls", "-lR"]]:
            t = {name: [] for name, _ in comps}
            for r in range(self.rounds):
                self.time_all(comps, r, t, lambda d: cmd + [d], lambda name: drop_caches())
            label = " ".join(cmd)
            print(f"{label} cold: " + ", ".join(f"{k} {median(v):.3f}s" for k, v in t.items()), flush=True)
            out[label] = t
        self.res["find"] = out

    def sec_thousand(self, wh):
        fs = self.fs
        n = 30 if self.quick else 1000
        home = fs / "store1k"
        env = dict(os.environ, VENVFS_HOME=str(home))
        small = make_venv(fs / "small", SMALL_SET, wh)
        sfiles, ssize = tree_stats(small)
        self.venvfs("import", "-q", small, "--name", "small", env=env)
        t = time.perf_counter()
        for i in range(n - 1):
            self.venvfs("clone", "small", f"e{i:04d}", env=env)
        clone_s = (time.perf_counter() - t) / (n - 1)
        print(f"thousand: {n} envs, {clone_s * 1000:.1f} ms per clone", flush=True)
        m = self.add_mount(Mount(home, fs / "mnt1k"))
        starts = {"warm": {"mount": [], "ls": []}, "cold": {"mount": [], "ls": []}}
        rss_start = []
        for r in range(self.rounds):
            for mode in rotate(["warm", "cold"], r):
                if mode == "cold":
                    drop_caches()
                starts[mode]["mount"].append(m.mount())
                t = time.perf_counter()
                names = run(["ls", m.path]).stdout.split()
                starts[mode]["ls"].append(time.perf_counter() - t)
                if len(names) != n:
                    self.problem(f"thousand: ls {m.path} right after mount listed {len(names)} envs, not {n}")
                rss_start.append(m.stats().get("rss_kb"))
                m.umount()
            print(f"thousand start round {r + 1}: " + ", ".join(
                f"{k} mount {fmt_t(v['mount'][-1])} + ls {fmt_t(v['ls'][-1])}" for k, v in starts.items()), flush=True)
        m.mount()
        run(["ls", m.path])
        trace = [("after start", None, m.stats())]
        for i in range(11):
            drop_caches()
            t = quiet(["find", m.path])
            trace.append(("after the full scan" if i == 0 else f"after repeated scan {i}", t, m.stats()))
            print(f"thousand scan {i + 1}: {t:.2f} s, rss {trace[-1][2].get('rss_kb')} kB", flush=True)
        entries = int(run(["sh", "-c", f"find '{m.path}' | wc -l"]).stdout)
        m.umount()
        self.res["thousand"] = {"n": n, "clone_s": clone_s, "starts": starts, "rss_start": rss_start,
                                "trace": trace, "entries": entries, "small_files": sfiles, "small_size": ssize}


# ---- report ------------------------------------------------------------------------------------


def ok(cond):
    return "met" if cond else "**not met**"


def report(b, args, argv, dt):
    res = b.res
    parts = [f"""## Mount (issue 3)

`bench/bench_mount.py{(' ' + ' '.join(argv)) if argv else ''}`, {time.strftime('%Y-%m-%d')}, {machine()}; the whole run took {dt / 60:.0f} min.
Everything below was measured in this one run, on a fresh loop-mounted ext4 (see bench/common.py),
with one venvfs mount serving the store; rounds interleave the competitors (order rotated each round), figures are medians of {b.rounds} rounds unless said otherwise.
venvfs: `{args.src_bin}`, copied at the start and run from the copy, {args.build}.{args.rebuilt}
Load average (1 min) at the start and the end of the run: {args.load[0]:.1f}, {args.load[1]:.1f} (other work on the machine shows as noise)."""]
    if args.quick:
        parts.append("**--quick: tiny sizes, only to check that the script works; not the issue's figures.**")
    if b.native is not None:
        parts.append(f"""The env: {', '.join(b.packages)} and their dependencies, installed by pip from a local wheelhouse
into a native venv: {b.dists} distributions ({b.nreqs} in `pip freeze`, plus pip and setuptools), {b.files} files, {b.size / 1e6:.0f} MB;
imported into the store as env `big` (`{b.import_out}`).""")
    targets = []

    def missing(sec, key):
        if key in args.only:
            parts.append("Failed in this run: see the problems below.")
            targets.append(f"- {sec}: not measured (the section failed)")
        else:
            parts.append(f"Not run in this pass (`--only {','.join(args.only)}`).")
            targets.append(f"- {sec}: not measured in this pass")

    # create
    parts.append("### Create an env from a requirements file")
    if "create" in res:
        c = res["create"]
        vf = median(c["times"]["venvfs create"])
        rows = [[k, fmt_t(median(v)), f"{median(v) / vf:.0f}x", " ".join(fmt_t(x) for x in v)]
                for k, v in c["times"].items()]
        if "disk" in res:
            v = res["disk"]["create"]["times"]
            rows.append([f"venvfs create, {len(v)} back to back (disk section, no sync or pause between)",
                         fmt_t(median(v)), f"{median(v) / vf:.1f}x", f"min {fmt_t(min(v))}, max {fmt_t(max(v))}"])
        parts.append(f"""`-r reqs.txt` is `pip freeze` of the native venv ({b.nreqs} pins); pip and uv install offline from the same
wheelhouse (`--no-index --find-links`), uv with its cache on the same file system, warmed by one untimed run
(uv links files from its cache and, unlike pip, compiles no bytecode). `cp -al` is a reference point only (its
scripts still name the native venv's path). `venvfs create` composes the env in the store from the packages the
import put there; it shows at once in the mount. Its first run for an interpreter also makes that interpreter's
venv skeleton: {fmt_t(c['first'])} (not in the table). Each timed step starts after a `sync` and a 1 s pause
(so dirty pages of the previous step are not charged to it).

{table(["how", "median", "x venvfs create", "all rounds"], rows)}""")
        targets.append(f"- `venvfs create` under 10 ms: {fmt_t(vf)}, {ok(vf < 0.010)}" + (
            f" ({fmt_t(median(res['disk']['create']['times']))} back to back)" if "disk" in res else ""))
    else:
        missing("create under 10 ms", "create")

    parts.append("### Disk taken by each additional env")
    if "disk" in res:
        d = res["disk"]
        rows = [[f"venvfs {k} (x{d['n']})", f"{d[k]['before']:,}", f"{d[k]['after']:,}",
                 f"{d[k]['per_env'] / 1024:.1f} KiB", fmt_t(median(d[k]['times']))] for k in ["create", "clone"]]
        rows.append(["cp -al of the native venv (x1)", "", "", f"{d['cpal'] / 1024:.0f} KiB", ""])
        rows.append(["the native venv itself (cp -a: as much again)", "", "", f"{d['native'] / 1e6:.0f} MB", ""])
        parts.append(f"""`du -s -B1` of the whole store directory (GNU du counts a file with several links once) before and after
{d['n']} more envs, divided by {d['n']}; `cp -al` extra measured as `du -s native copy`.

{table(["env", "store before (bytes)", "store after (bytes)", "per env", "median time per env"], rows)}

`venvfs store du --json` afterwards: `{d['store_du']}`""")
        worst = max(d["create"]["per_env"], d["clone"]["per_env"])
        targets.append(f"- under 64 KiB per extra env: create {d['create']['per_env'] / 1024:.1f} KiB, "
                       f"clone {d['clone']['per_env'] / 1024:.1f} KiB, {ok(worst < 64 * 1024)}")
    else:
        missing("under 64 KiB per extra env", "disk")

    parts.append("### Heavy import")
    if "import" in res:
        im, pairs = res["import"], res["import_pairs"]
        rows = []
        # each row against the native venv timed under the same idle setting
        nat = {m: median(im[m]["native venv"]) for m in im}
        for m in im:
            for k, v in im[m].items():
                pr = pairs[m].get(k)
                rows.append([m, k, f"{median(v):.3f}", f"{median(v) / median(im[m][baseline(k)]):.2f}x",
                             f"**{median(pr):.3f}x** ({len(pr)})" if pr else "",
                             f"{min(v):.3f} - {max(v):.3f}"])
        hp = [k for k in im["warm"] if k.startswith("venvfs view, halt-polling")]
        hp_note = ""
        if hp:
            hw, hc = (median(pairs[m][hp[0]]) for m in ("warm", "cold"))
            hp_note = halt_poll_note("the importing process", "the native venv and the view",
                                     f"venvfs **{hw:.2f}x** warm and **{hc:.2f}x** cold against the native venv")
        uring_note = (" (the daemon's default where the kernel has FUSE over io_uring); the \"/dev/fuse\" row is "
                      "the same view through a second daemon started with `--no-uring`"
                      if any(k.endswith("/dev/fuse") for k in im["warm"]) else "")
        parts.append(f"""`python -c "{b.heavy}"` with MPLBACKEND=Agg. Warm: after 2 untimed runs each;
cold: `sync; echo 3 > /proc/sys/vm/drop_caches` before each run. Runs are paired: in each of {b.import_rounds} rounds,
every competitor runs back to back with the native venv (under the same idle setting), the two in an order that
alternates, the competitors in an order rotated each round; a pair's ratio is competitor / native of that pair.
The targets are judged on the median of those paired ratios (set before the run, as the machine's speed drifts by
more than the targets' margins within minutes, and a pair's two runs share the drift); the ratio of the medians of
all runs is shown too. The native venv and the store are on the same loop
file system; the view is the env imported from that venv, served over {res.get('transport', '?')}{uring_note}.
The view's daemon stays mounted through the run, as one does for days: it hashes each object the first time it serves
it and not again while the object's file is unchanged (docs/design.md, "Caching"), so its cold rows show a daemon that
has served the env before. The row "{FRESH}" is the same view through a daemon mounted anew after each drop, which has
checked no object yet (the first use after a reboot).{'' if os.environ.get('PASSTHROUGH_LL') else ' ($PASSTHROUGH_LL not set: no passthrough_ll row.)'}

{table(["cache", "env", "median s", "vs native (medians)", "median of paired ratios (pairs)", "range (s)"], rows)}{hp_note}""")
        for m, lim in (("warm", 1.05), ("cold", 1.15)):
            pr = median(pairs[m]["venvfs view"])
            col = median(im[m]["venvfs view"]) / nat[m]
            targets.append(f"- {m} import at most {lim:.2f}x native: {pr:.3f}x (median of {len(pairs[m]['venvfs view'])} "
                           f"paired ratios; ratio of medians {col:.3f}x), {ok(pr <= lim)}")
    else:
        missing("warm import at most 1.05x native, cold at most 1.15x", "import")

    parts.append("### Page cache of ten envs running the heavy import at once")
    if "pagecache" in res:
        p = res["pagecache"]
        one = median(p["res"][f"1 native env, {p['k']} processes"]["mb"])
        rows = [[k, f"{median(v['mb']):.0f}", f"{min(v['mb']):.0f}", f"{median(v['mb']) / one:.2f}x", f"{median(v['img']):.0f}",
                 f"{median(v['store']):.0f}", f"{median(v['wall']):.2f}", " ".join(f"{x:.0f}" for x in v["mb"])]
                for k, v in p["res"].items()]
        parts.append(f"""Growth of `Cached` in /proc/meminfo from a dropped cache (`drop_caches` = 3) to the end of {p['k']} concurrent
`python -c "{b.heavy}"`. Every row includes the interpreter and its standard library. The loop device
caches its backing image file too (on the root file system), and that share is counted in `Cached` as well: it is
shown apart (fincore of the image), as is the page cache of the store's object files (what the daemon read to
serve the mount, also counted in `Cached`, next to the mount's own pages). `Cached` is machine-wide: file
activity of anything else running meanwhile lands in it too, hence the spread between rounds.

{table(["envs", "Cached growth MB", "min MB", "vs 1 native env", "of which loop image MB", "of which store objects MB", "wall s", "all rounds (MB)"], rows)}""")
        k = p["k"]
        ten = median(p["res"][f"{k} envs through the mount (clones of one env)"]["mb"])
        copies = median(p["res"][f"{k} native copies (cp -a)"]["mb"])
        mins = {n: min(v["mb"]) for n, v in p["res"].items()}
        targets.append(f"- {k} envs about one env's page cache: {ten:.0f} MB through the mount vs {one:.0f} MB for one "
                       f"native env ({ten / one:.2f}x) and {copies:.0f} MB for {k} native copies (smallest rounds: "
                       f"{mins[f'{k} envs through the mount (clones of one env)']:.0f}, "
                       f"{mins[f'1 native env, {k} processes']:.0f} and {mins[f'{k} native copies (cp -a)']:.0f} MB); "
                       f"{ok(ten <= 1.25 * one)} (taken as medians within 1.25x of one env)")
    else:
        missing("10 envs about one env's page cache", "pagecache")

    parts.append("### find and ls -lR, cold")
    if "find" in res:
        f = res["find"]
        rows = []
        worst = 0
        for cmd, t in f.items():
            nat = median(t["native venv"])
            for k, v in t.items():
                rows.append([f"`{cmd} ENV`", k, f"{median(v):.3f}", f"{median(v) / nat:.2f}x", " ".join(f"{x:.3f}" for x in v)])
            worst = max(worst, median(t["venvfs view"]) / nat)
        parts.append(f"""`drop_caches` before each run; output to /dev/null.

{table(["command", "env", "median s", "vs native", "all rounds (s)"], rows)}""")
        targets.append(f"- find / ls -lR cold at most 1.5x native: " + ", ".join(
            f"{cmd} {median(t['venvfs view']) / median(t['native venv']):.2f}x" for cmd, t in f.items()) + f", {ok(worst <= 1.5)}")
    else:
        missing("find / ls -lR cold at most 1.5x native", "find")

    parts.append("### One daemon serving 1,000 envs")
    if "thousand" in res:
        th = res["thousand"]
        st = th["starts"]
        rows = [[mode, fmt_t(median(v["mount"])), fmt_t(median(v["ls"])),
                 fmt_t(median([a + l for a, l in zip(v["mount"], v["ls"])])),
                 " ".join(fmt_t(a + l) for a, l in zip(v["mount"], v["ls"]))] for mode, v in st.items()]
        trows = [[what, "" if t is None else f"{t:.2f}", s.get("rss_kb"), s.get("RssAnon", "?"), s.get("RssFile", "?"),
                  s.get("heap_in_use_kb", "?"), s.get("nodes"), s.get("envs_loaded")] for what, t, s in th["trace"]]
        rss = [s.get("rss_kb") for _, _, s in th["trace"][1:]]
        heap = [s.get("heap_in_use_kb") or 0 for _, _, s in th["trace"][1:]]
        parts.append(f"""A store of {th['n']} envs: one small venv ({', '.join(SMALL_SET)} with pip and setuptools: {th['small_files']} files,
{th['small_size'] / 1e6:.1f} MB) imported, then cloned {th['n'] - 1} times ({th['clone_s'] * 1000:.1f} ms per `venvfs clone`).
Start-up: `venvfs mount` (returns when the mount serves) and the first `ls MNT`, from an unmounted store;
cold: after `drop_caches`. Daemon RSS right after start was {', '.join(str(x) for x in th['rss_start'])} kB over the start-ups.

{table(["page cache", "venvfs mount", "first ls", "together", "all rounds (together)"], rows)}

Then one mount: `find MNT > /dev/null` ({th['entries']:,} entries) eleven times, each after `drop_caches` so the kernel
forgets its inodes and every scan goes to the daemon; RSS from `venvfs stats`:

{table(["when", "scan s", "rss kB", "of which anon kB", "of which file kB", "heap in use kB", "nodes", "envs loaded"], trows)}

`nodes` is read after each scan; the kernel forgets every inode at the next `drop_caches`. `heap in use` is what
the daemon's allocations hold (glibc `mallinfo2()`: in-use chunks plus mmapped ones); RSS counts only the pages of it
that were ever written, so RSS can rise towards it while what the daemon holds stays the same.""")
        su = median([a + l for a, l in zip(st["warm"]["mount"], st["warm"]["ls"])])
        suc = median([a + l for a, l in zip(st["cold"]["mount"], st["cold"]["ls"])])
        tail = rss[-6:]  # the last five scans
        flat = tail[-1] <= 1.01 * tail[0]
        targets.append(f"- {th['n']:,} envs: start-up under 100 ms: {fmt_t(su)} with a warm page cache, {ok(su < 0.1)}; "
                       f"{fmt_t(suc)} after drop_caches, {ok(suc < 0.1)}. RSS flat over repeated scans: {rss[0]:,} kB after "
                       f"the first scan, {rss[-1]:,} kB after the last ({(rss[-1] / rss[0] - 1) * 100:+.1f}%), "
                       f"{(tail[-1] / tail[0] - 1) * 100:+.2f}% over the last five scans; "
                       f"{'flat' if flat else '**still growing**'} over the last five (under 1%). Heap in use "
                       f"{heap[0]:,} kB after the first scan, {heap[-1]:,} kB after the last "
                       f"({(heap[-1] / max(heap[0], 1) - 1) * 100:+.2f}%), {ok(heap[-1] <= 1.01 * heap[0])}")
    else:
        missing("1,000 envs: start-up under 100 ms, RSS flat", "thousand")

    parts.append("### Targets\n\n" + "\n".join(targets))
    if b.problems:
        parts.append("### Problems seen in this run\n\n" + "\n".join(f"- {p}" for p in b.problems))
    if PNG.exists() and b.plotted:
        parts.append(f"![create times, import ratios, page cache](benchmarks-mount.png)")
    return "\n\n".join(parts) + "\n"


PLOT = r"""
import json, sys, textwrap
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.load(sys.stdin)
wrap = lambda names: ["\n".join(textwrap.wrap(n, 24)) for n in names]
charts = [k for k in ("create", "import", "find", "pagecache", "rss") if k in d]
cols = min(3, len(charts))
rows = (len(charts) + cols - 1) // cols
fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
for ax in axes.flat[len(charts):]:
    ax.axis("off")
for ax, k in zip(axes.flat, charts):
    v = d[k]
    if k == "create":
        ax.barh(wrap(v), list(v.values()), color=["C0"] * (len(v) - 1) + ["C3"])
        ax.set_xscale("log"); ax.set_xlabel("seconds (median, log scale)"); ax.set_title("create an env from requirements")
        ax.axvline(0.010, color="g", ls="--", lw=1, label="target 10 ms"); ax.invert_yaxis(); ax.legend(fontsize=7)
        for i, x in enumerate(v.values()):
            ax.text(x, i, f" {x * 1000:.1f} ms" if x < 1 else f" {x:.1f} s", va="center", fontsize=8)
        ax.set_xlim(right=max(v.values()) * 8)
        ax.tick_params(axis="y", labelsize=7)
    elif k in ("import", "find"):
        names = list(v); groups = list(v[names[0]])
        w = 0.8 / len(names)
        for i, n in enumerate(names):
            xs = [j + i * w for j in range(len(groups))]
            ax.bar(xs, [v[n][g] for g in groups], w, label=n)
            for x, g in zip(xs, groups):
                ax.text(x, v[n][g], f"{v[n][g]:.2f}x", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([j + w * (len(names) - 1) / 2 for j in range(len(groups))], groups)
        ax.axhline(1, color="k", lw=0.8)
        if k == "import":
            ax.axhline(1.05, color="g", ls="--", lw=1, label="targets 1.05x warm, 1.15x cold")
            ax.axhline(1.15, color="g", ls="--", lw=1)
            ax.set_title("heavy import, vs native venv")
        else:
            ax.axhline(1.5, color="g", ls="--", lw=1, label="target 1.5x"); ax.set_title("cold find / ls -lR, vs native venv")
        ax.set_ylabel("time ratio (" + ("median of paired runs" if k == "import" else "medians") + ")")
        ax.legend(fontsize=7, loc="lower right")
    elif k == "pagecache":
        ax.barh(wrap(v), list(v.values()), color="C2"); ax.invert_yaxis()
        for i, x in enumerate(v.values()):
            ax.text(x, i, f" {x:.0f}", va="center", fontsize=8)
        ax.set_xlim(right=max(v.values()) * 1.15)
        ax.set_xlabel("Cached growth, MB (median)"); ax.set_title("page cache, concurrent heavy imports")
        ax.tick_params(axis="y", labelsize=7)
    elif k == "rss":
        ax.plot(range(len(v["kb"])), [x / 1024 for x in v["kb"]], marker="o"); ax.set_ylim(0, max(v["kb"]) / 1024 * 1.2)
        ax.set_xlabel("full scans (0 = right after start)"); ax.set_ylabel("daemon RSS, MiB")
        ax.set_title(f"one daemon, {v['n']:,} envs: RSS")
fig.tight_layout()
fig.savefig(sys.argv[1], dpi=100)
"""


def plot(b):
    """Bar charts into docs/benchmarks-mount.png with whichever interpreter has matplotlib."""
    res, d = b.res, {}
    if "create" in res:
        d["create"] = {k: median(v) for k, v in res["create"]["times"].items()}
    if "import" in res:
        pairs = res["import_pairs"]
        d["import"] = {k: {m: median(pairs[m][k]) for m in pairs} for k in pairs["warm"] if "halt-polling" not in k}
    if "find" in res:
        f = res["find"]
        d["find"] = {k: {c: median(f[c][k]) / median(f[c]["native venv"]) for c in f}
                     for k in f["find"] if k != "native venv"}
    if "pagecache" in res:
        d["pagecache"] = {k: median(v["mb"]) for k, v in res["pagecache"]["res"].items()}
    if "thousand" in res:
        d["rss"] = {"n": res["thousand"]["n"], "kb": [s.get("rss_kb") for _, _, s in res["thousand"]["trace"]]}
    if not d:
        return False
    for py in [sys.executable, "/usr/bin/python3"]:
        if os.path.exists(py) and run([py, "-c", "import matplotlib"], check=False).returncode == 0:
            p = run([py, "-c", PLOT, PNG], input=json.dumps(d), check=False)
            if p.returncode == 0:
                print(f"plot: {PNG}")
                return True
            print(f"plot failed with {py}:\n{p.stderr}")
            return False
    print("plot skipped: matplotlib cannot be imported (python3-matplotlib provides it for /usr/bin/python3)")
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 5, --quick 2)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated: " + ",".join(SECTIONS))
    ap.add_argument("--import-rounds", type=int, default=None,
                    help="paired runs per competitor in the heavy import section (default 3 x --rounds)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script end to end")
    argv = sys.argv[1:]
    args = ap.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section {bad}; sections: {','.join(SECTIONS)}")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.import_rounds is None:
        args.import_rounds = 3 * args.rounds
    t_start = time.perf_counter()
    args.load = [os.getloadavg()[0]]
    args.src_bin = snapshot_binary()
    h0, args.build = build_id(VENVFS)
    pkgs = (QUICK_SET if args.quick else BIG_SET + EXTRA_SET) + SMALL_SET
    wh = wheelhouse(pkgs)
    b = None
    loop = LoopFs()
    with loop as fs:
        b = Bench(args, fs)
        b.fs_img = loop.img
        try:
            if set(args.only) - {"thousand"}:
                b.setup_big(wh)
            for sec in SECTIONS:
                if sec in args.only:
                    try:  # a failing section is reported; the others still run
                        getattr(b, "sec_" + sec)(*([wh] if sec in ("create", "thousand") else []))
                    except (Exception, SystemExit) as e:
                        b.res.pop(sec, None)
                        b.problem(f"section {sec} failed: {type(e).__name__}: {str(e)[:1500]}")
        finally:
            for m in reversed(b.mounts):
                m.umount()
            left = [str(m.path) for m in b.mounts if mounted(m.path)]
            if left:
                print(f"still mounted: {left}", file=sys.stderr)
    args.load.append(os.getloadavg()[0])
    h1, now = build_id(args.src_bin)
    args.rebuilt = f" {args.src_bin} was rebuilt during the run ({now}); not measured here." if h1 != h0 else ""
    b.plotted = plot(b)
    body = report(b, args, argv, time.perf_counter() - t_start)
    print(body)
    update_doc("mount", body)


if __name__ == "__main__":
    main()
