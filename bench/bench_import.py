#!/usr/bin/env python3
"""venvfs import against cp -a, on the large venv of issue 2.

Rounds interleave: cp -a of the venv; a first import into an empty store;
a re-import when everything is already stored. Each step starts after a
sync, so dirty pages of the previous step are not charged to the next.
cp -a does not make its copy durable; venvfs import does (syncfs before
objects become visible), so "cp -a + sync" is shown too.

Usage: sudo bench/bench_import.py [--rounds N]   (writes docs/benchmarks.md)
"""
import argparse
import os
import shutil
import time

from common import (BIG_SET, VENVFS, LoopFs, machine, make_venv, median, run, sync, table, timed,
                    tree_stats, update_doc, wheelhouse)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    wh = wheelhouse(BIG_SET)
    with LoopFs() as fs:
        src = make_venv(fs / "src", BIG_SET, wh)
        files, size = tree_stats(src)
        env = dict(os.environ, VENVFS_HOME=str(fs / "store"))
        res = {"cp -a": [], "cp -a + sync": [], "import": [], "re-import": []}
        for r in range(args.rounds):
            shutil.rmtree(fs / "copy", ignore_errors=True)
            shutil.rmtree(fs / "store", ignore_errors=True)
            sync()
            time.sleep(1)
            t0 = time.perf_counter()
            run(["cp", "-a", src, fs / "copy"])
            t1 = time.perf_counter()
            sync()
            t2 = time.perf_counter()
            res["cp -a"].append(t1 - t0)
            res["cp -a + sync"].append(t2 - t0)
            time.sleep(1)
            res["import"].append(timed([VENVFS, "import", "-q", src, "--name", "big"], env=env))
            sync()
            time.sleep(1)
            res["re-import"].append(timed([VENVFS, "import", "-q", src, "--name", "big"], env=env))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()), flush=True)
        du = run([VENVFS, "store", "du", "--json"], env=env).stdout.strip()
    cp = median(res["cp -a"])
    rows = [[k, f"{median(v):.2f}", f"{median(v) / cp:.2f}x", " ".join(f"{x:.2f}" for x in v)]
            for k, v in res.items()]
    body = f"""## Import (issue 2)

`bench/bench_import.py --rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}, {machine()}.
The venv: {', '.join(BIG_SET)} and their dependencies, installed by pip:
{files} files, {size / 1e6:.0f} MB, on a fresh loop-mounted ext4 (see bench/common.py for why).

{table(["step", "median s", "vs cp -a", "all rounds (s)"], rows)}

Per-round ratios (each step against `cp -a` of the same round): import {", ".join(f"{a / b:.2f}" for a, b in zip(res["import"], res["cp -a"]))} (median {median([a / b for a, b in zip(res["import"], res["cp -a"])]):.2f}x); re-import {", ".join(f"{a / b:.2f}" for a, b in zip(res["re-import"], res["cp -a"]))}.

Targets: import at most 1.2x `cp -a`, re-import at most 0.2x.
First import: {median(res['import']) / cp:.2f}x `cp -a` ({median(res['import']) / median(res['cp -a + sync']):.2f}x `cp -a` followed by `sync`);
re-import: {median(res['re-import']) / cp:.2f}x.

`venvfs store du --json` after the runs: `{du}`
"""
    print(body)
    update_doc("import", body)


if __name__ == "__main__":
    main()
