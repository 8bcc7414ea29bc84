#!/usr/bin/env python3
"""Writable envs (issue 4): installs into a mounted env, large writes, absorb.

1. `pip install -r requirements.txt` from a local wheelhouse into a mounted
   env against the same install into a native venv; `uv pip install`
   likewise (warm uv cache). Rounds interleave native and mounted.
2. dd of 1 GiB (bs=1M) into the env's writable layer against the same file
   system natively: durable (conv=fsync) and page cache only.
3. absorb of a freshly installed large set (numpy, pandas, scipy, ...):
   time, bytes moved by hard link and bytes written; then the same set
   installed into a second env and absorbed: what it adds to the store.

Everything lives on a fresh loop-mounted ext4 (bench/common.py says why):
the native venvs, the store, and so the writable layers.

Usage: sudo bench/bench_write.py [--rounds N] [--quick]   (writes docs/benchmarks.md)
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from common import (BASE_PYTHON, BIG_SET, CACHE, REPO, VENVFS, LoopFs, halt_poll_ab, halt_poll_note, halt_polling, machine,
                    median, run, sync, table, update_doc, wheelhouse)

PIP_SET = ["requests", "flask", "numpy", "pandas", "django", "matplotlib"]


def tool(name):
    for cand in [shutil.which(name), REPO / "build-pyenv" / "bin" / name, CACHE / "tools" / "bin" / name]:
        if cand and Path(cand).exists():
            return str(cand)
    run([BASE_PYTHON, "-m", "venv", CACHE / "tools"])
    run([CACHE / "tools" / "bin" / "pip", "install", "-q", name])
    return str(CACHE / "tools" / "bin" / name)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_NO_CACHE_DIR="1")
    env.update(extra)
    return env


def timed(args, env=None):
    sync()
    t = time.perf_counter()
    run(args, env=env)
    return time.perf_counter() - t


def dd(path, fsync):
    """Seconds to write 1 GiB to path (bs=1M), durable or not."""
    args = ["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1024"] + (["conv=fsync"] if fsync else [])
    sync()
    t = time.perf_counter()
    run(args)
    dt = time.perf_counter() - t
    os.unlink(path)
    sync()
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller sets (a smoke test of the script)")
    args = ap.parse_args()
    pip_set = ["requests", "flask"] if args.quick else PIP_SET
    big_set = ["numpy", "requests"] if args.quick else BIG_SET
    wh = wheelhouse(sorted(set(pip_set + big_set)))
    uv = tool("uv")
    res = {}
    with LoopFs() as fs:
        store = fs / "store"
        mnt = fs / "mnt"
        mnt.mkdir()
        venv_env = dict(os.environ, VENVFS_HOME=str(store))
        req = fs / "requirements.txt"
        req.write_text("\n".join(pip_set) + "\n")
        run([BASE_PYTHON, "-m", "venv", fs / "base"])
        run([VENVFS, "import", fs / "base", "--name", "base"], env=venv_env)
        run([VENVFS, "mount", mnt, "--absorb-idle", "0", "--no-absorb-on-unmount"], env=venv_env)
        # the same installs through /dev/fuse: a second store, its daemon started with --no-uring
        store2, mnt2 = fs / "store-devfuse", fs / "mnt-devfuse"
        dev_env = dict(os.environ, VENVFS_HOME=str(store2))
        mnt2.mkdir()
        run([VENVFS, "import", fs / "base", "--name", "base"], env=dev_env)
        run([VENVFS, "mount", mnt2, "--no-uring", "--absorb-idle", "0", "--no-absorb-on-unmount"], env=dev_env)
        os.listdir(mnt)  # the transport is chosen at the first request
        transport = next(l.split()[1] for l in run([VENVFS, "stats", mnt], env=venv_env).stdout.splitlines()
                         if l.startswith("transport "))
        uv_cache = fs / "uv-cache"
        try:
            # uv's cache, warm: one untimed install
            run([uv, "venv", "-q", "--python", BASE_PYTHON, fs / "uvwarm"], env=clean_env())
            run([uv, "pip", "install", "-q", "--python", fs / "uvwarm" / "bin" / "python", "--no-index",
                 "--find-links", wh, "-r", req], env=clean_env(UV_CACHE_DIR=str(uv_cache)))
            steps = ["pip native", "pip mounted", "uv native", "uv native (copy)", "uv mounted"]
            dev_steps = ["pip mounted, /dev/fuse", "uv mounted, /dev/fuse"] if transport == "io_uring" else []
            steps += dev_steps
            hp = halt_poll_ab()  # the pip pair again with the guest's idle polling on (common.py)
            hp_steps = [f"pip native, halt-polling {hp // 1000} us", f"pip mounted, halt-polling {hp // 1000} us"] \
                if hp is not None else []
            res.update({k: [] for k in steps + hp_steps})
            for r in range(args.rounds):
                run([BASE_PYTHON, "-m", "venv", fs / f"n{r}"])
                for e in (f"p{r}", f"u{r}"):
                    run([VENVFS, "clone", "base", e], env=venv_env)
                    if dev_steps:
                        run([VENVFS, "clone", "base", e], env=dev_env)
                if hp_steps:
                    run([BASE_PYTHON, "-m", "venv", fs / f"hn{r}"])
                    run([VENVFS, "clone", "base", f"hp{r}"], env=venv_env)
                for e in (f"un{r}", f"uc{r}"):
                    run([uv, "venv", "-q", "--python", BASE_PYTHON, fs / e], env=clean_env())
                time.sleep(1.2)  # the mount shows new envs within a second
                pipargs = ["install", "-q", "--no-index", "--find-links", wh, "-r", req]
                pip_pair = {"pip native": fs / f"n{r}", "pip mounted": mnt / f"p{r}"}
                for k in (("pip native", "pip mounted") if r % 2 == 0 else ("pip mounted", "pip native")):
                    res[k].append(timed([pip_pair[k] / "bin" / "python", "-m", "pip", *pipargs], env=clean_env()))
                if dev_steps:
                    res["pip mounted, /dev/fuse"].append(
                        timed([mnt2 / f"p{r}" / "bin" / "python", "-m", "pip", *pipargs], env=clean_env()))
                for k, py in zip(hp_steps, [fs / f"hn{r}" / "bin" / "python", mnt / f"hp{r}" / "bin" / "python"]):
                    with halt_polling(hp):
                        res[k].append(timed([py, "-m", "pip", *pipargs], env=clean_env()))
                uvargs = ["pip", "install", "-q", "--no-index", "--find-links", wh, "-r", req]
                uvenv = clean_env(UV_CACHE_DIR=str(uv_cache))
                res["uv native"].append(timed([uv, *uvargs, "--python", fs / f"un{r}" / "bin" / "python"],
                                              env=uvenv))
                res["uv native (copy)"].append(timed([uv, *uvargs, "--python", fs / f"uc{r}" / "bin" / "python"],
                                                     env=clean_env(UV_CACHE_DIR=str(uv_cache),
                                                                   UV_LINK_MODE="copy")))
                res["uv mounted"].append(timed([uv, *uvargs, "--python", mnt / f"u{r}" / "bin" / "python"],
                                               env=uvenv))
                if dev_steps:
                    res["uv mounted, /dev/fuse"].append(
                        timed([uv, *uvargs, "--python", mnt2 / f"u{r}" / "bin" / "python"], env=uvenv))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()), flush=True)

            # 2. large writes
            dds = {"durable (conv=fsync), native": [], "durable (conv=fsync), mounted": [],
                   "page cache, native": [], "page cache, mounted": []}
            # durable writes swing 10-fold here from one run to the next (the
            # loop device's file on the host's disk, slowest where the image
            # has no blocks yet): two untimed writes at each place first, then
            # more rounds, either order, judged per round (below)
            for where in ("native", "mounted") * 2:
                dd(fs / "n0" / "big.bin" if where == "native" else mnt / "p0" / "big.bin", True)
            for r in range(max(args.rounds, 9)):
                for fsync in (True, False):
                    kind = "durable (conv=fsync)" if fsync else "page cache"
                    for where in (("native", "mounted") if r % 2 == 0 else ("mounted", "native")):
                        path = fs / "n0" / "big.bin" if where == "native" else mnt / "p0" / "big.bin"
                        dds[f"{kind}, {where}"].append(dd(path, fsync))
            print({k: [f"{1024 / x:.0f} MB/s" for x in v] for k, v in dds.items()}, flush=True)

            # 3. absorb of a large set, then the same set in a second env
            run([VENVFS, "clone", "base", "big1"], env=venv_env)
            run([VENVFS, "clone", "base", "big2"], env=venv_env)
            time.sleep(1.2)
            pipargs = ["install", "-q", "--no-index", "--find-links", wh, *big_set]
            absorbs = []
            for e in ("big1", "big2"):
                run([mnt / e / "bin" / "python", "-m", "pip", *pipargs], env=clean_env())
                upper_bytes = sum(p.stat().st_size for p in (store / "envs" / e / "upper").rglob("*")
                                  if p.is_file() and not p.is_symlink())
                du0 = json.loads(run([VENVFS, "store", "du", "--json"], env=venv_env).stdout)
                sync()
                t = time.perf_counter()
                out = run([VENVFS, "absorb", e], env=venv_env).stdout
                dt = time.perf_counter() - t
                du1 = json.loads(run([VENVFS, "store", "du", "--json"], env=venv_env).stdout)
                summary = out.strip().splitlines()[-1]
                absorbs.append((e, upper_bytes, dt, summary, du0, du1))
                print(e, f"{dt:.2f}s", summary, flush=True)
                run([mnt / e / "bin" / "python", "-c", "import numpy, requests"], env=clean_env())
        finally:
            run([VENVFS, "umount", mnt], env=venv_env, check=False)
            run([VENVFS, "umount", mnt2], env=dev_env, check=False)
            for m in (mnt, mnt2):
                subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)

    # ---- the report ----
    def row(k, base):
        v = res[k]
        return [k, f"{median(v):.2f}", f"{median(v) / median(res[base]):.2f}x",
                f"{median([a / b for a, b in zip(v, res[base])]):.2f}x", " ".join(f"{x:.2f}" for x in v)]

    rows = [row("pip native", "pip native"), row("pip mounted", "pip native"),
            row("uv native", "uv native"), row("uv native (copy)", "uv native"), row("uv mounted", "uv native"),
            ] + [row(k, "pip native" if k.startswith("pip") else "uv native") for k in dev_steps] \
        + [row(k, hp_steps[0]) for k in hp_steps]
    uvc = median(res["uv mounted"]) / median(res["uv native (copy)"])
    ddrows = []
    for kind in ("durable (conv=fsync)", "page cache"):
        nat, mo = dds[f"{kind}, native"], dds[f"{kind}, mounted"]
        ddrows.append([kind, f"{1024 / median(nat):.0f}", f"{1024 / median(mo):.0f}",
                       f"{median(nat) / median(mo):.0%}", f"{median([a / b for a, b in zip(nat, mo)]):.0%}",
                       " ".join(f"{1024 / x:.0f}" for x in nat) + " / " + " ".join(f"{1024 / x:.0f}" for x in mo)])
    absrows = []
    for e, ub, dt, summary, du0, du1 in absorbs:
        m = re.search(r"(\d+) absorbed.*; (.+) moved into the store without copying, (.+) written", summary)
        absrows.append([e, f"{ub / 1e6:.0f} MB", f"{dt:.2f}", m.group(1) if m else "?", m.group(2) if m else "?",
                        m.group(3) if m else "?",
                        f"{(du1['stored_bytes'] - du0['stored_bytes']) / 1e6:+.1f} MB"])
    # Targets are judged on the median of per-round ratios: each round times
    # both sides back to back (in alternating order), so a round the machine
    # slows down as a whole cancels out; the medians of each column are in
    # the tables too.
    pip_ratio = median([m / n for m, n in zip(res["pip mounted"], res["pip native"])])
    pip_cols = median(res["pip mounted"]) / median(res["pip native"])
    hp_note = ""
    if hp_steps:
        hp_ratio = median(res[hp_steps[1]]) / median(res[hp_steps[0]])
        hp_note = halt_poll_note("pip", "the pip pair", f"mounted **{hp_ratio:.2f}x** native")
    units = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}

    def nbytes(text):
        try:
            v, u = text.split()
            return float(v) * units[u]
        except (ValueError, KeyError):
            return float("inf")
    written_b, first_b = nbytes(absrows[0][5]), absorbs[0][1]
    dd_ratio = median([n / m for n, m in zip(dds["durable (conv=fsync), native"],
                                             dds["durable (conv=fsync), mounted"])])
    dd_cols = median(dds["durable (conv=fsync), native"]) / median(dds["durable (conv=fsync), mounted"])
    dev_note = (" (the daemon's default where the kernel has FUSE over io_uring); the \"/dev/fuse\" rows install "
                "into clones in a second store whose daemon was started with `--no-uring`") if dev_steps else ""
    body = f"""## Writable envs (issue 4)

`bench/bench_write.py --rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}, {machine()}.
Native venvs, the store and so the writable layers share one fresh loop-mounted ext4.

### Installing into a mounted env

`-r requirements.txt` of {', '.join(pip_set)} (and dependencies) from a local wheelhouse
(`--no-index --find-links`); pip compiles bytecode, uv does not. Mounted envs are clones of an
imported `python -m venv`; native ones fresh venvs. uv's cache is warm and on the same file system:
natively uv hardlinks from it; into a mount it cannot (another file system) and copies, so
"uv native (copy)" (`UV_LINK_MODE=copy`) is the like-for-like comparison. Each round times pip native
and pip mounted back to back, alternating which goes first. The mount is served over
{transport}{dev_note}.

{table(["install", "median s", "vs native", "median of per-round ratios", "all rounds (s)"], rows)}

uv mounted against uv native with copies: {uvc:.2f}x.{hp_note}

### Writing 1 GiB

`dd if=/dev/zero bs=1M count=1024` into a mounted env's writable layer and natively: two untimed
durable writes at each place first (the loop image's file gets its blocks on the host's disk), then
{len(dds["page cache, native"])} rounds, alternating which side goes first.

{table(["writes", "native MB/s", "mounted MB/s", "mounted / native", "median of per-round ratios",
        "all rounds MB/s (native / mounted)"], ddrows)}

### Absorb

pip installs {', '.join(big_set)} into a mounted env (a clone of the imported venv), then
`venvfs absorb` (through the daemon); then the same into a second env.

{table(["env", "installed (writable layer)", "absorb s", "distributions", "moved by hard link", "written", "store on disk, change"], absrows)}

"Written" is scripts kept as templates (they name the env's path), the RECORDs that hash them, and
manifests; every other file, bytecode included (kept as pip wrote it: docs/design.md, Bytecode), moves
into the store by hard link, with no data copied. Files the store has already (numpy's `.so` imported
with the first env, ...) are neither moved nor written. The second env's packages are ones the store
has, compiled in the first env: it takes those, and nothing moves or is written. "Store on disk" is
`stored_bytes` of `venvfs store du`: the whole store directory, writable layers included, so absorbing
the second env frees its copies.

### Targets

Judged on the median of per-round ratios (both sides timed back to back in each round, in alternating order);
the ratio of the column medians is given beside it.

- pip install at most 1.3x native: {pip_ratio:.2f}x (column medians {pip_cols:.2f}x), {"met" if pip_ratio <= 1.3 else "**not met**"}; uv: {median(res["uv mounted"]) / median(res["uv native"]):.2f}x native (hardlinks), {uvc:.2f}x native copying
- 1 GiB writes at least 70% of native: durable {dd_ratio:.0%} (column medians {dd_cols:.0%}), {"met" if dd_ratio >= 0.7 else "**not met**"}; page cache only {median(dds["page cache, native"]) / median(dds["page cache, mounted"]):.0%}
- absorb on one file system without copying: {absrows[0][4]} moved by hard link, {absrows[0][5]} written (templates, manifests) in {absrows[0][2]} s, {"met" if written_b <= 0.01 * first_b else "**not met**"} (written under 1% of the {absrows[0][1]} installed)
"""
    print(body)
    update_doc("write", body)


if __name__ == "__main__":
    main()
