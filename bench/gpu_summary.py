"""Merge the per-shape JSON of ``bench/gpu_run.sh`` into results.json, results.png and summary.md.

Usage: ``python bench/gpu_summary.py OUTDIR``. Reads every ``bench-*.json``
(``xsoftmax bench --json``) and ``steps.tsv`` in OUTDIR. The summary lists,
per shape and dtype, each engine's median time, GB/s and ratio to the copy
floor, and the speed of ``fused-row`` against ``fused`` and against the
torch peer, measured in the same run on the same device.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any


def merge(outdir: str) -> dict[str, Any]:
    """Every bench report in ``outdir`` as one: the first machine, all rows, floors and skips."""
    merged: dict[str, Any] = {"machine": None, "rows": [], "floors": [], "skipped": [], "sources": []}
    for path in sorted(glob.glob(os.path.join(outdir, "bench-*.json"))):
        with open(path) as fh:
            report = json.load(fh)
        merged["machine"] = merged["machine"] or report.get("machine")
        for key in ("rows", "floors", "skipped"):
            merged[key] += report.get(key, [])
        merged["sources"].append(os.path.basename(path))
    return merged


def _steps(outdir: str) -> list[list[str]]:
    path = os.path.join(outdir, "steps.tsv")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip()]


def summary(merged: dict[str, Any], steps: list[list[str]]) -> str:
    """Markdown: the machine, each step's status, one table per (shape, dtype), the fused-row speedups."""
    machine = merged["machine"] or {}
    lines = ["# xsoftmax GPU run", ""]
    gpu = machine.get("gpu") or "unknown GPU"
    lines.append(f"GPU: {gpu}; machine: {json.dumps({k: v for k, v in machine.items() if k != 'gpu'})}")
    lines += ["", "| step | exit status | seconds |", "|---|---|---|"]
    lines += [f"| {' | '.join(s)} |" for s in steps]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in merged["rows"]:
        groups.setdefault((row["shape"], row["dtype"]), []).append(row)
    if not groups:
        lines += ["", "No bench rows were measured."]
    for (shape, dtype), rows in groups.items():
        lines += ["", f"## {shape} {dtype}", "",
                  "| engine | median ms | GB/s | x floor | max err |", "|---|---|---|---|---|"]
        by_engine = {}
        for r in rows:
            by_engine[r["engine"]] = r
            err = "n/a" if r.get("max_abs_err") is None else f"{r['max_abs_err']:.1e}"
            lines.append(f"| {r['backend']} {r['engine']} | {r['median_ms']:.3f} | {r['gbps']:.0f} | "
                         f"{r['floor_ratio']:.2f} | {err} |")
        row_fused = by_engine.get("fused-row")
        for other in ("fused", "peer:F.cross_entropy"):
            if row_fused and other in by_engine:
                speedup = by_engine[other]["median_ms"] / row_fused["median_ms"]
                lines.append(f"\nfused-row is {speedup:.2f}x the speed of {other}.")
    if merged["skipped"]:
        lines += ["", "Skipped or failed:"] + [f"- {s}" for s in merged["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/gpu_summary.py OUTDIR", file=sys.stderr)
        return 2
    outdir = argv[0]
    merged = merge(outdir)
    with open(os.path.join(outdir, "results.json"), "w") as fh:
        json.dump(merged, fh, indent=2)
    text = summary(merged, _steps(outdir))
    with open(os.path.join(outdir, "summary.md"), "w") as fh:
        fh.write(text)
    if merged["rows"]:
        from xsoftmax._cli.bench import Row, plot

        plot([Row(**r) for r in merged["rows"]], os.path.join(outdir, "results.png"))
    print(f"wrote results.json, summary.md{', results.png' if merged['rows'] else ''} in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
