#!/usr/bin/env python3
"""What the daemon holds per node, for one or more venvfs binaries (issue 15).

The case of the issue: an editor or `find` scanning every env of a store. One
small venv (six, idna, certifi, with pip and setuptools) is imported and
cloned 999 times; each binary in turn mounts the store, the page cache is
dropped, `find MNT` walks all 1,000 envs, and the daemon's counters
(`venvfs stats`) give its RSS, its heap in use and its nodes by kind. Rounds
alternate the binaries; the table reports medians.

Usage: sudo bench/bench_nodes.py [--rounds N] [--bin LABEL=PATH ...]
(default: one binary, build/tools/venvfs; writes the "nodes" section of
docs/benchmarks.md)
"""
import argparse
import os
import time
from pathlib import Path

from common import VENVFS, LoopFs, drop_caches, machine, make_venv, median, run, table, update_doc, wheelhouse

SMALL_SET = ["six", "idna", "certifi"]
FIELDS = ["nodes", "nodes_dir", "nodes_file", "nodes_shared", "rss_kb", "heap_in_use_kb", "rendered_kb", "listed_kb",
          "node_bytes_dir", "node_bytes_file"]


def stats(binary, mnt, env):
    out = {}
    for line in run([binary, "stats", mnt], env=env).stdout.splitlines():
        k, _, v = line.partition(" ")
        if k in FIELDS:
            out[k] = int(v.split()[0])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--envs", type=int, default=1000)
    ap.add_argument("--bin", action="append", default=[], help="LABEL=PATH of a venvfs binary (repeatable)")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bin] or [["build", VENVFS]]
    wh = wheelhouse(SMALL_SET)
    res = {label: [] for label, _ in bins}
    with LoopFs() as fs:
        home = fs / "store"
        env = dict(os.environ, VENVFS_HOME=str(home))
        small = make_venv(fs / "small", SMALL_SET, wh)
        first = bins[0][1]
        run([first, "import", "-q", small, "--name", "small"], env=env)
        for i in range(a.envs - 1):
            run([first, "clone", "small", f"e{i:04d}"], env=env)
        mnt = fs / "mnt"
        mnt.mkdir()
        for r in range(a.rounds):
            for label, binary in bins[r % len(bins):] + bins[:r % len(bins)]:
                run([binary, "mount", mnt], env=env)
                try:
                    drop_caches()
                    t = time.perf_counter()
                    run(["find", mnt], stdout=open(os.devnull, "w"), capture_output=False)
                    s = stats(binary, mnt, env)
                    s["scan_s"] = time.perf_counter() - t
                finally:
                    run([binary, "umount", mnt], env=env, check=False)
                res[label].append(s)
                print(f"round {r + 1} {label}: {s}", flush=True)
    rows = []
    for label, _ in bins:
        m = {k: median([s[k] for s in res[label] if k in s]) for k in res[label][0]}
        per_node = m["rss_kb"] * 1024 / m["nodes"]
        rows.append([label, f"{m['scan_s']:.1f}", f"{m['nodes']:,.0f}", f"{m.get('nodes_dir', 0):,.0f}",
                     f"{m['rss_kb']:,.0f}", f"{m['heap_in_use_kb']:,.0f}", f"{per_node:,.0f}",
                     f"{m.get('rendered_kb', 0):,.0f}", f"{m.get('listed_kb', 0):,.0f}",
                     f"{m.get('node_bytes_dir', 0):.0f} / {m.get('node_bytes_file', 0):.0f}"])
    labels = " ".join(f"--bin {label}=..." for label, _ in bins)
    body = f"""## Bytes per node (issue 15)

`sudo bench/bench_nodes.py {labels}`: {a.envs} envs (one small venv cloned), each
daemon mounts the store, `find MNT` after `drop_caches`, then `venvfs stats`; {a.rounds} rounds alternating the
daemons, medians. Machine: {machine()}.

{table(["daemon", "scan s", "nodes", "of which dirs", "RSS kB", "heap in use kB", "RSS bytes per node",
        "templates kept kB", "listings kept kB", "node struct bytes (dir / file)"], rows)}
"""
    update_doc("nodes", body)
    print(body)


if __name__ == "__main__":
    main()
