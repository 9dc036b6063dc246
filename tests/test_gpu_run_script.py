"""``bench/gpu_run.sh`` (the one-command GPU run) checked without a GPU: syntax, dry run, summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu_run.sh")
SHAPES = ("8192x32000", "4096x128000", "65536x1024", "1048576x10")

sys.path.insert(0, os.path.join(REPO, "bench"))
import gpu_summary  # noqa: E402


def run_script(tmp_path, *args, env=None):
    path_dirs = [d for d in os.environ["PATH"].split(os.pathsep)
                 if not os.path.exists(os.path.join(d, "nvidia-smi"))]  # as on a machine with no driver
    full_env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
                "XSOFTMAX_GPU_VENV": str(tmp_path / "venv"), "PATH": os.pathsep.join(path_dirs),
                **(env or {})}
    full_env.pop("XSOFTMAX_CUDA_MAJOR", None)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=full_env,
                          timeout=300, cwd=str(tmp_path))


def test_gpu_run_script_is_executable_and_parses():
    assert os.access(SCRIPT, os.X_OK)
    res = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_gpu_run_dry_run_checks_every_step(tmp_path):
    res = run_script(tmp_path, "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "assuming CUDA major 12" in out  # no nvidia-smi on PATH
    assert "check arguments parse: check --backends cupy" in out
    for shape in SHAPES:
        assert (f"bench --backends cupy --engines fused,fused-row,reference --peers torch --shapes {shape} "
                f"--dtype float32,bfloat16") in out
        assert f"--json {tmp_path / 'out'}/bench-{shape}.json" in out
    assert '-m gpu or nvrtc tests/test_engine_cupy.py tests/test_engine_cupy_row.py' in out
    assert "bench/gpu_summary.py" in out
    steps = (tmp_path / "out" / "steps.tsv").read_text().splitlines()
    assert [s.split("\t")[0] for s in steps] == (
        ["install", "check", "tests"] + [f"bench-{s}" for s in
                                         ("8192x32000", "65536x1024", "1048576x10", "4096x128000")]
        + ["summary"]
    )
    assert all(s.split("\t")[1] == "dry-run" for s in steps)
    assert not (tmp_path / "venv").exists()  # a dry run installs nothing


def test_gpu_run_dry_run_by_environment_and_default_out(tmp_path):
    env = {"XSOFTMAX_GPU_DRY_RUN": "1"}
    res = run_script(tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env={k: v for k, v in {**os.environ, "PYTHON": sys.executable}
                                                 .items() if k != "OUT"})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "gpu-results" / "steps.tsv").exists()  # ./gpu-results without $OUT


def test_gpu_run_rejects_unknown_arguments_and_a_broken_cli(tmp_path):
    res = run_script(tmp_path, "--fast")
    assert res.returncode == 2 and "unknown argument --fast" in res.stderr
    # The dry run parses the bench arguments with the repository's CLI: a Python
    # without xsoftmax's dependencies makes it fail, not pass silently.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    res = run_script(tmp_path, "--dry-run", env={"PYTHON": str(fake)})
    assert res.returncode != 0


def _row(engine, median_ms, shape="8192x32000", dtype="float32", backend="cupy"):
    return {"backend": backend, "engine": engine, "kind": "xsoftmax", "shape": shape, "dtype": dtype,
            "device": "cuda", "median_ms": median_ms, "spread_ms": 0.01, "min_ms": median_ms,
            "repeat": 5, "gbps": 2000.0 / median_ms, "floor_ms": 0.5, "floor_gbps": 3000.0,
            "floor_ratio": median_ms / 0.5, "max_abs_err": 1e-7, "peak_bytes": 0}


def test_gpu_summary_merges_reports(tmp_path):
    pytest.importorskip("matplotlib")
    for shape, rows in (("8192x32000", [_row("fused", 1.5), _row("fused-row", 1.0),
                                        _row("peer:F.cross_entropy", 2.0, backend="torch")]),
                        ("65536x1024", [_row("fused", 0.4, shape="65536x1024")])):
        report = {"machine": {"gpu": "NVIDIA H100 80GB HBM3"}, "rows": rows, "floors": [],
                  "skipped": [f"cupy fused {shape} bfloat16: ValueError: no bfloat16"]}
        (tmp_path / f"bench-{shape}.json").write_text(json.dumps(report))
    (tmp_path / "steps.tsv").write_text("install\t0\t12\ncheck\t0\t9\n")
    assert gpu_summary.main([str(tmp_path)]) == 0
    merged = json.loads((tmp_path / "results.json").read_text())
    assert len(merged["rows"]) == 4 and len(merged["skipped"]) == 2
    text = (tmp_path / "summary.md").read_text()
    assert "GPU: NVIDIA H100 80GB HBM3" in text and "| install | 0 | 12 |" in text
    assert "fused-row is 1.50x the speed of fused." in text
    assert "fused-row is 2.00x the speed of peer:F.cross_entropy." in text
    assert (tmp_path / "results.png").stat().st_size > 0


def test_gpu_summary_with_no_rows(tmp_path):
    assert gpu_summary.main([str(tmp_path)]) == 0
    assert "No bench rows were measured." in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "results.png").exists()


# --- what the GPU run asks of xsoftmax bench / check, checked on the CPU ---


def test_bench_accepts_the_gpu_run_engines_and_dtypes():
    from xsoftmax._cli import build_parser
    from xsoftmax._cli.check import engines_for

    args = build_parser().parse_args(["bench", "--backends", "cupy", "--engines", "fused,fused-row,reference",
                                      "--peers", "torch", "--dtype", "float32,bfloat16"])
    assert args.engines == ["fused", "fused-row", "reference"] and args.dtype == ["float32", "bfloat16"]
    assert engines_for("cupy") == ["reference", "fused", "fused-row"]
    assert "fused-row" not in engines_for("numpy")


def test_bench_bfloat16_rows_are_torch_only():
    pytest.importorskip("torch")
    import numpy as np

    from xsoftmax._cli import bench

    peer = bench.make_peer("torch", (32, 50), "bfloat16")
    row = bench.measure_case(peer, (32, 50), "bfloat16", bench.floor("cpu", (32, 50), "float16", repeat=2),
                             repeat=2)
    assert row.dtype == "bfloat16" and row.max_abs_err < 0.1  # bfloat16 rounding, not a wrong answer
    scores, _ = peer.inputs()
    assert scores.dtype == np.float64 and np.all(scores == scores.astype(np.float32))
    with pytest.raises(ValueError, match="cupy has no bfloat16 arrays"):
        bench.make_case("cupy", "fused-row", (4, 5), "bfloat16")
    with pytest.raises(ValueError, match="peer naive runs on the CPU"):
        bench.make_peer("naive", (4, 5), "bfloat16")


def test_bench_torch_peer_device():
    from xsoftmax._cli import bench

    assert bench.peer_device("torch", None) == "cpu"
    assert bench.peer_device("naive", ["cupy"]) == "cpu"
    torch = pytest.importorskip("torch")
    assert bench.peer_device("torch", ["cupy"]) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_gpu_run_steps_on_a_stub_machine(tmp_path):
    # A real (not dry) run where nvidia-smi and the venv's Python are stubs that
    # log their calls: the CUDA major comes from nvidia-smi, every step runs once
    # with its timeout, a failing step is recorded and the run goes on.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 13.1 |'\n")
    venv_py = tmp_path / "venv" / "bin" / "python"
    venv_py.parent.mkdir(parents=True)
    calls = tmp_path / "calls.txt"
    marker = tmp_path / "torch-installed"
    venv_py.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        'case "$*" in *"-m pytest"*) exit 1;; esac\n'  # the GPU tests fail on this stub
        'case "$*" in *"import cupy, sys"*) exit 1;; esac\n'  # no CuPy yet: installed for CUDA 13
        # torch with CUDA is missing until pip has "installed" it
        f'case "$*" in *"import torch, sys"*) [ -e {marker} ] || {{ touch {marker}; exit 1; }};; esac\n'
        "exit 0\n"
    )
    smi.chmod(0o755)
    venv_py.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "XSOFTMAX_GPU_VENV": str(tmp_path / "venv")}
    full_env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env}
    res = subprocess.run(["bash", SCRIPT], capture_output=True, text=True, env=full_env, timeout=300,
                         cwd=str(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr  # the failing test step
    steps = {s.split("\t")[0]: s.split("\t")[1] for s in
             (tmp_path / "out" / "steps.tsv").read_text().splitlines()}
    assert steps.pop("tests") == "1" and set(steps.values()) == {"0"} and len(steps) == 7
    log = calls.read_text()
    assert "-m xsoftmax check --backends cupy" in log
    assert log.count("-m xsoftmax bench --backends cupy --engines fused,fused-row,reference "
                     "--peers torch") == 4
    assert "gpu_summary.py" in log
    assert (tmp_path / "out" / "nvidia-smi.txt").read_text().startswith("| NVIDIA-SMI")
    assert "-m pip install --quiet --disable-pip-version-check cupy-cuda13x[ctk]" in log
    assert "torch --index-url https://download.pytorch.org/whl/cu130" in log
