"""Dataset-scale audit: peak memory at 2,000 vs 20,000 images, throughput at 1 and 2 processes, and the
mixed-precision / ``torch.compile`` knobs of the GPU recipe.

Every measurement runs ``xcf audit`` as a child process (cached digits models) and reads the child's own
peak resident memory from ``os.wait4`` and its throughput and phase shares from ``summary.json``:

1. **memory**: ``--data digits-shifted`` (test digits under nine one-pixel shifts) with 2,000 and 20,000
   images, diffeomorphic counterfactuals, with oneDNN's per-shape kernel cache on (default) and off.
   Streaming should keep the peak flat.
2. **throughput**: the 450 test digits with all four methods, as 1 process with 1 thread, 1 process with
   2 threads, and 2 processes of 1 thread under ``torchrun`` (gloo).  Images per second of the whole
   run (setup included) and the share of the batch loop in data loading, search, metrics and writing.
3. **precision / compile**: 450 test digits, diffeomorphic and adversarial methods, fp32 vs bf16 autocast
   of the classifier vs ``torch.compile`` of the classifier; images per second and how many
   counterfactuals stay valid.

Usage::

    python benchmarks/bench_stream.py [--out bench-stream] [--skip memory,throughput,knobs]

Writes ``bench-stream/results.json`` and prints a Markdown table per part.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], out: Path, env_extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{output[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "summary": summary}


def audit_cmd(out: Path, *args: str, threads: int = 1) -> list[str]:
    return [sys.executable, "-m", "xcf", "audit", "--out", str(out), "--overwrite", "--no-progress",
            "--threads", str(threads), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(root: Path) -> list[dict]:
    """The second pair disables oneDNN's primitive cache, which keeps compiled kernels per input shape (the
    search's active set takes many batch sizes): bounded, but it grows over the first batches."""
    rows = []
    for n, cache in ((2000, "default"), (20000, "default"), (2000, "0"), (20000, "0")):
        out = root / f"memory-{n}-{cache}"
        env = {} if cache == "default" else {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": cache}
        r = run(audit_cmd(out, "--data", "digits-shifted", "--images", str(n), "--methods", "diffeomorphic",
                          "--steps", "20", "--batch-size", "250", threads=2), out, env)
        t = r["summary"]["throughput"]
        rows.append({"images": n, "oneDNN cache": cache, "peak_rss_mib": round(r["peak_rss_mib"], 1),
                     "wall_s": round(r["wall_s"], 1),
                     "images_per_s": round(t["images_per_s"], 1),
                     "store_mib": round(sum(p.stat().st_size for p in (out / "store" / "shards").iterdir()) / 2**20, 1)})
        print(rows[-1], flush=True)
    return rows


def _row(name: str, r: dict) -> dict:
    t = r["summary"]["throughput"]
    m = r["summary"]["metrics"]
    return {"setting": name, "processes": t["processes"], "images": t["images"], "wall_s": round(r["wall_s"], 1),
            "images_per_s": round(t["images_per_s"], 2), "loop_images_per_s": round(t["loop_images_per_s"], 2),
            **{f"share_{k}": round(v, 4) for k, v in t["shares"].items()},
            "peak_rss_mib": round(r["peak_rss_mib"], 1),
            "validity": {k: round(v["validity"], 4) for k, v in m.items()}}


def throughput(root: Path) -> list[dict]:
    base = ["--data", "digits-test", "--batch-size", "45"]
    rows = []
    for name, threads in (("1 process, 1 thread", 1), ("1 process, 2 threads", 2)):
        out = root / f"throughput-{threads}t"
        rows.append(_row(name, run(audit_cmd(out, *base, threads=threads), out)))
        print(rows[-1], flush=True)
    out = root / "throughput-2p"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "xcf", "audit", "--out", str(out),
           "--overwrite", "--no-progress", "--threads", "1", *base]
    rows.append(_row("2 processes (torchrun, gloo), 1 thread each", run(cmd, out, {"OMP_NUM_THREADS": "1"})))
    print(rows[-1], flush=True)
    return rows


def knobs(root: Path) -> list[dict]:
    base = ["--data", "digits-test", "--batch-size", "150", "--methods", "diffeomorphic,adversarial"]
    rows = []
    for name, extra in (("fp32", []), ("bf16 autocast", ["--precision", "bf16"]), ("torch.compile", ["--compile"])):
        out = root / f"knobs-{name.split()[0].replace('.', '')}"
        rows.append(_row(name, run(audit_cmd(out, *base, *extra, threads=2), out)))
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-stream")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: memory, throughput, knobs")
    args = p.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results_path = root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for part, fn in (("throughput", throughput), ("knobs", knobs), ("memory", memory)):
        if part in skip:
            continue
        results[part] = fn(root)
        results_path.write_text(json.dumps(results, indent=2))
        print(f"\n## {part}\n\n{markdown(results[part])}\n", flush=True)


if __name__ == "__main__":
    main()
