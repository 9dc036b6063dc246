"""``xsoftmax bench`` and the measurement code it shares with ``bench/`` (tiny shapes)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import xsoftmax as xs
from xsoftmax._cli import bench, main, plotting
from xsoftmax._cli import timing as _timing
from xsoftmax._cli.check import enable_jax_float64, engines_for, oracle_softmax_loss

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROW_SCHEMA = {
    "backend": str,
    "engine": str,
    "kind": str,
    "shape": str,
    "dtype": str,
    "case": str,
    "device": str,
    "median_ms": float,
    "spread_ms": float,
    "min_ms": float,
    "repeat": int,
    "gbps": float,
    "floor_ms": float,
    "floor_gbps": float,
    "floor_ratio": float,
    "max_abs_err": float,
    "peak_bytes": (int, type(None)),
}


# --------------------------------------------------------------------------- _timing


def test_timing_summary_median_and_iqr():
    t = _timing.summarize([0.004, 0.001, 0.002, 0.003, 0.100])
    assert t.median == 0.003
    assert t.min == 0.001
    assert t.spread == pytest.approx(0.002)  # IQR ignores the 0.1 s outlier
    assert _timing.summarize([0.5]).spread == 0.0
    with pytest.raises(ValueError, match="repeat"):
        _timing.summarize([])


def test_bandwidth_counts_read_and_write():
    assert _timing.pass_bytes((1000, 250), 4) == 2 * 1000 * 250 * 4
    assert _timing.bandwidth_gbps(2_000_000_000, 0.5) == 4.0


def test_measure_calls_warmup_then_repeats():
    calls = []
    t = _timing.measure(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(calls) == 5 and len(t.times) == 3
    with pytest.raises(ValueError, match="repeat"):
        _timing.measure(lambda: None, repeat=0)
    with pytest.raises(ValueError, match="device"):
        _timing.measure(lambda: None, repeat=1, device="tpu")


def test_cuda_timing_reads_cuda_events(monkeypatch):
    """The CuPy path reports cupyx.profiler.benchmark's GPU (event) times, not its host times."""
    seen = {}

    def fake_benchmark(fn, *, n_repeat, n_warmup):
        seen.update(fn=fn, n_repeat=n_repeat, n_warmup=n_warmup)
        return types.SimpleNamespace(
            gpu_times=np.array([[0.003, 0.001, 0.002]]), cpu_times=np.array([9.0, 9.0, 9.0])
        )

    profiler = types.ModuleType("cupyx.profiler")
    profiler.benchmark = fake_benchmark
    monkeypatch.setitem(sys.modules, "cupyx", types.ModuleType("cupyx"))
    monkeypatch.setitem(sys.modules, "cupyx.profiler", profiler)

    def work():
        return None

    t = _timing.measure(work, repeat=3, device="cuda", warmup=4)
    assert seen == {"fn": work, "n_repeat": 3, "n_warmup": 4}
    assert t.times == (0.003, 0.001, 0.002) and t.median == 0.002


def test_cuda_pool_peak_counts_only_live_allocations():
    peak = _timing.PoolPeak()
    peak.malloc_postprocess(mem_ptr=1, mem_size=100, size=90, device_id=0, pmem_id=0)
    peak.malloc_postprocess(mem_ptr=2, mem_size=50, size=50, device_id=0, pmem_id=0)
    peak.free_postprocess(mem_ptr=1, mem_size=100, device_id=0, pmem_id=0)
    peak.malloc_postprocess(mem_ptr=3, mem_size=10, size=10, device_id=0, pmem_id=0)
    peak.free_postprocess(mem_ptr=99, mem_size=512, device_id=0, pmem_id=0)  # allocated before
    assert peak.peak == 150 and peak.current == 60


def test_host_peak_bytes_sees_numpy_buffers():
    nbytes = 1 << 20
    peak = _timing.peak_bytes(lambda: np.ones(nbytes, dtype=np.uint8))
    assert nbytes <= peak < 2 * nbytes
    assert _timing.peak_bytes(lambda: None, device="dask") is None


def test_copy_floor_on_host():
    t = _timing.copy_floor("cpu", (64, 32), "float32", repeat=3)
    assert len(t.times) == 3 and t.median > 0
    with pytest.raises(ValueError, match="copy="):
        _timing.copy_floor("dask", (4, 4), "float32", repeat=1)


# --------------------------------------------------------------------------- cases


def test_naive_peer_matches_oracle():
    scores, y = bench.host_inputs((16, 7), "float64", seed=3)
    loss, d = bench.naive_softmax_loss(scores.copy(), y)
    want_loss, want_d = oracle_softmax_loss(scores, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(d, want_d, rtol=1e-10, atol=1e-14)


def test_max_abs_err_sees_a_wrong_gradient():
    case = bench.make_case("numpy", "reference", (40, 9), "float64")
    loss, d = case.result()
    assert bench.max_abs_err(case, (loss, d), block=50) < 1e-12  # several oracle blocks
    d[17, 3] += 1e-3
    assert bench.max_abs_err(case, (loss, d), block=50) == pytest.approx(1e-3)
    assert bench.max_abs_err(case, (loss + 0.5, d - 0), block=50) >= 0.5


@pytest.mark.parametrize("peer", list(bench.PEERS))
def test_peers_compute_the_same_loss(peer):
    pytest.importorskip(bench.PEERS[peer][0])
    case = bench.make_peer(peer, (12, 5), "float32")
    assert bench.max_abs_err(case, case.result()) < 1e-5


def test_measure_case_row_is_consistent():
    case = bench.make_case("numpy", "reference", (32, 16), "float32")
    fl = bench.floor("cpu", (32, 16), "float32", repeat=3)
    row = bench.measure_case(case, (32, 16), "float32", fl, repeat=3)
    assert row.floor_ratio == pytest.approx(row.median_ms / row.floor_ms)
    assert row.gbps == pytest.approx(2 * 32 * 16 * 4 / (row.median_ms * 1e-3) / 1e9)
    assert row.max_abs_err < 1e-5
    assert row.peak_bytes >= 32 * 16 * 4  # the gradient it returns, at least


def test_plan_default_and_explicit_selection():
    status = {b: "ok" for b in ("numpy", "torch", "jax", "dask", "array_api_strict")}
    status["cupy"] = "no CUDA device: pretend"
    pairs, peers, skipped = bench.plan(status)
    backends = {b for b, _ in pairs}
    assert "numpy" in backends and not backends & set(bench.NOT_BY_DEFAULT)
    assert set(engines_for("numpy")) == {e for b, e in pairs if b == "numpy"}
    assert "cupy: no CUDA device: pretend" in skipped
    assert all(any(line.startswith(f"{b}: ") for line in skipped) for b in bench.NOT_BY_DEFAULT)
    installed = [p for p in bench.PEERS if importlib.util.find_spec(bench.PEERS[p][0])]
    assert peers == installed  # the default run brings every installed peer
    pairs, peers, _ = bench.plan(status, backends=["dask"], engines=["reference"])
    assert pairs == [("dask", "reference")] and peers == []  # explicit backends: peers only on request
    assert bench.plan(status, backends=["numpy"], peers=["naive"])[1] == ["naive"]
    # fused-out only on request, and only where the fused engine takes out=
    assert all(e != "fused-out" for _, e in bench.plan(status)[0])
    pairs, _, _ = bench.plan(status, backends=["numpy", "dask"], engines=["fused", "fused-out"])
    assert pairs == [("numpy", "fused"), ("numpy", "fused-out"), ("dask", "fused")]


def test_fused_out_row_reuses_one_buffer():
    """``fused-out``: the fused engine into one out= buffer, the same numbers, no new gradient."""
    case = bench.make_case("numpy", "fused-out", (64, 300), "float32")
    first = case.fn()[1]
    assert case.fn()[1] is first  # the same buffer, every call
    fl = bench.floor("cpu", (64, 300), "float32", repeat=3)
    row = bench.measure_case(case, (64, 300), "float32", fl, repeat=3)
    assert row.engine == "fused-out" and row.max_abs_err < 1e-5
    assert row.peak_bytes < 64 * 300 * 4 / 2  # scratch only: the gradient is not allocated


# --------------------------------------------------------------------------- CLI


def _validate_report(report: dict) -> None:
    assert set(report) >= {"machine", "rows", "floors", "skipped", "options", "seconds"}
    machine = report["machine"]
    assert machine["cpu"] and isinstance(machine["cpu_count"], int)
    assert "gpu" in machine and machine["versions"]["numpy"] == np.__version__
    assert report["rows"]
    for row in report["rows"]:
        assert set(row) == set(ROW_SCHEMA)
        for key, kind in ROW_SCHEMA.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert row["median_ms"] > 0 and row["floor_ms"] > 0 and row["gbps"] > 0


def test_cli_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main([
        "bench", "--backends", "numpy", "--shapes", "64x10,32x100", "--repeat", "2", "--peers", "naive",
        "--json", str(out_json), "--plot", str(out_png),
    ])
    assert rc == 0
    captured = capsys.readouterr()
    report = json.loads(out_json.read_text())
    _validate_report(report)
    got = {(r["backend"], r["engine"], r["shape"]) for r in report["rows"]}
    want = {("numpy", e, s) for e in engines_for("numpy") for s in ("64x10", "32x100")}
    want |= {("numpy", bench.PEERS["naive"][1], s) for s in ("64x10", "32x100")}
    assert got == want
    for row in report["rows"]:
        assert row["max_abs_err"] < 1e-5
    assert {(f["device"], f["shape"]) for f in report["floors"]} == {("cpu", "64x10"), ("cpu", "32x100")}
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    # progress on stderr, the table on stdout
    assert "[1/" in captured.err and "x floor" in captured.out
    assert "median ms" in captured.out.splitlines()[0]


def test_cli_reports_skipped_backends(tmp_path, capsys, monkeypatch):
    status = dict(xs.available_backends(), torch="not installed (pretend)")
    monkeypatch.setattr(xs, "available_backends", lambda: status)
    out_json = tmp_path / "b.json"
    rc = main(["bench", "--backends", "numpy,torch", "--engines", "reference", "--shapes", "8x4",
               "--repeat", "1", "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "skipped torch: not installed (pretend)" in out
    report = json.loads(out_json.read_text())
    assert [r["engine"] for r in report["rows"]] == ["reference"]
    assert "torch: not installed (pretend)" in report["skipped"]


def test_cli_rejects_bad_options(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--shapes", "64by10"])
    assert exc.value.code == 2
    for bad in (["--backends", "numpy,tensorflow"], ["--peers", "mxnet"], ["--dtype", "int8"]):
        with pytest.raises(SystemExit):
            main(["bench", *bad])
    assert "choose from torch, xsoftmax.torch, jax, xsoftmax.jax, naive" in capsys.readouterr().err
    assert main(["bench", "--repeat", "0"]) == 2
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["bench", "--plot", "x.png"]) == 2
    assert "pip install 'xsoftmax[plot]'" in capsys.readouterr().err


@pytest.mark.distributed
def test_cli_dask_rows_run_on_a_local_cluster(tmp_path):
    if xs.available_backends()["dask"] != "ok":
        pytest.skip("dask: " + xs.available_backends()["dask"])
    pytest.importorskip("distributed")
    out_json = tmp_path / "dask.json"
    rc = main(["bench", "--backends", "dask", "--shapes", "64x10", "--repeat", "1", "--json", str(out_json)])
    assert rc == 0
    report = json.loads(out_json.read_text())
    _validate_report(report)
    assert {r["engine"] for r in report["rows"]} == set(engines_for("dask"))
    for row in report["rows"]:
        assert row["device"] == "dask" and row["peak_bytes"] is None and row["max_abs_err"] < 1e-5


def test_console_script_in_a_subprocess(tmp_path):
    out_json = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "xsoftmax", "bench", "--backends", "numpy", "--shapes", "16x8",
         "--repeat", "1", "--dtype", "float32,float64", "--json", str(out_json)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    _validate_report(report)
    assert {r["dtype"] for r in report["rows"]} == {"float32", "float64"}
    assert "numpy" in proc.stdout and "copy floor cpu" in proc.stdout


def test_pytest_benchmark_suite_reports_bandwidth_and_floor(tmp_path):
    """``pytest bench --benchmark-only`` on tiny shapes: groups and extra_info as documented."""
    pytest.importorskip("pytest_benchmark")
    root = Path(__file__).resolve().parents[1]
    out_json = tmp_path / "suite.json"
    env = dict(os.environ, XSOFTMAX_BENCH_BACKENDS="numpy", XSOFTMAX_BENCH_PEERS="naive",
               XSOFTMAX_BENCH_SHAPES="32x16", XSOFTMAX_BENCH_LAYER_SHAPES="8x6x4")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
         "--benchmark-max-time=0.01", f"--benchmark-json={out_json}",
         "bench/test_bench_loss.py", "bench/test_bench_layers.py"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out_json.read_text())["benchmarks"]
    loss = [r for r in results if r["group"] == "softmax_loss 32x16 float32"]
    assert {r["extra_info"]["engine"] for r in loss} == set(engines_for("numpy")) | {bench.PEERS["naive"][1]}
    for r in loss:
        assert {"gbps", "floor_ratio", "floor_ms", "max_abs_err"} <= set(r["extra_info"])
    groups = {r["group"] for r in results}
    assert {f"{op} 8x6x4 float32" for op in ("affine_forward", "affine_backward", "relu_forward",
                                             "relu_backward")} <= groups
    relu = next(r for r in results if r["group"].startswith("relu_backward"))
    affine = next(r for r in results if r["group"].startswith("affine_forward"))
    assert "floor_ratio" in relu["extra_info"] and "gflops" in affine["extra_info"]


def _load_numpy_floor() -> types.ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "numpy_floor.py"
    spec = importlib.util.spec_from_file_location("numpy_floor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("block_rows,threads", [(1, 1), (7, 2), (64, 3)])
def test_numpy_floor_bare_pass_is_the_softmax_loss(block_rows, threads):
    """``bench/numpy_floor.py`` times real work: its bare call sequence gives the loss and gradient."""
    floor = _load_numpy_floor()
    rng = np.random.default_rng(3)
    s = rng.standard_normal((50, 10), dtype=np.float32)
    y = rng.integers(0, 10, 50)
    loss, d = floor.bare_pass(s, y, block_rows, threads)
    ref_loss, ref_d = oracle_softmax_loss(s, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-7)


def test_numpy_floor_prints_engine_and_bare_ratios(capsys, monkeypatch):
    floor = _load_numpy_floor()
    monkeypatch.delenv(floor.NUM_THREADS_ENV, raising=False)  # main() sets it: restored after
    floor.main(["--shape", "64x10", "--block-rows", "8,64", "--threads", "2", "--repeat", "2"])
    out = capsys.readouterr().out
    assert "64x10 float32, 2 threads" in out
    assert "NumPy engine (fused)" in out
    assert out.count("bare calls") == 2 and "x floor" in out


def _row(backend, engine, shape, gbps, ratio, dtype="float32"):
    return bench.Row(backend=backend, engine=engine, kind="xsoftmax", shape=shape, dtype=dtype, device="cpu",
                     median_ms=1.0, spread_ms=0.1, min_ms=0.9, repeat=3, gbps=gbps, floor_ms=0.5,
                     floor_gbps=20.0, floor_ratio=ratio, max_abs_err=0.0, peak_bytes=None)


def test_plot_of_one_shape_is_a_bar_chart_and_of_several_a_line_chart():
    """One shape on log axes would be lone dots: a bar per backend/engine, fastest on top, values printed."""
    pytest.importorskip("matplotlib")
    plt = plotting.pyplot()
    rows = [_row("numpy", "fused", "4096x1000", 8.0, 2.5), _row("torch", "reference", "4096x1000", 1.0, 20.0),
            _row("jax", "reference", "4096x1000", 2.0, 10.0)]
    fig = bench.figure(rows)
    bw, ratio = fig.axes
    assert [round(p.get_width(), 6) for p in bw.patches] == [1.0, 2.0, 8.0]  # bottom to top
    assert [round(p.get_width(), 6) for p in ratio.patches] == [20.0, 10.0, 2.5]
    assert [t.get_text() for t in bw.get_yticklabels()] == ["torch reference", "jax reference", "numpy fused"]
    assert bw.get_xscale() == "linear" and "4096x1000" in fig._suptitle.get_text()
    assert any("copy floor" in t.get_text() for t in bw.get_legend().get_texts())
    plt.close(fig)
    lines = bench.figure(rows + [_row("numpy", "fused", "4096x10000", 9.0, 2.2)])
    assert lines.axes[0].get_xscale() == "log" and not lines.axes[0].patches
    plt.close(lines)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("case", bench.CASES)
def test_cases_of_issue_15_match_the_oracle(backend, case):
    pytest.importorskip(backend)
    if backend == "jax":
        enable_jax_float64()
    unit = bench.make_case(backend, "reference", (40, 9), "float64", case=case)
    assert unit.case == case and (case == "plain" or unit.engine == f"reference[{case}]")
    loss, d = unit.result()
    assert d.shape == (40, 9)  # K-dim gradients come back as the oracle's rows
    assert bench.max_abs_err(unit, (loss, d), block=50) < 1e-12
    d = d.copy()  # (a JAX result is read-only)
    d[5, 2] += 1e-3  # the check sees a wrong gradient in every case
    assert bench.max_abs_err(unit, (loss, d), block=50) == pytest.approx(1e-3)


def test_kdim_case_is_a_kdim_batch_of_the_same_rows():
    scores, y = bench.host_inputs((16, 5), "float64", seed=1)
    s, yk, rows, rows_y, options = bench.case_inputs("kdim", scores, y)
    assert s.shape == (2, 5, 8) and yk.shape == (2, 8) and options == {}
    np.testing.assert_array_equal(np.moveaxis(s, 1, -1).reshape(16, 5), rows)
    with pytest.raises(ValueError, match="divisible by 8"):
        bench.case_inputs("kdim", scores[:7], y[:7])
    with pytest.raises(ValueError, match="case must be one of"):
        bench.make_case("numpy", "fused", (8, 3), "float32", case="mixup")
    with pytest.raises(ValueError, match="in-memory backends"):
        bench.make_case("dask", "fused", (8, 3), "float32", case="probs")


def test_cli_case_rows_in_table_and_json(tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    assert main([
        "bench", "--backends", "numpy", "--engines", "fused", "--shapes", "64x16", "--repeat", "1",
        "--case", "plain,probs,zloss-softcap,kdim", "--json", str(out_json),
    ]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for label in ("fused[probs]", "fused[zloss-softcap]", "fused[kdim]"):
        assert label in out
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["case"] for r in rows] == ["plain", "probs", "zloss-softcap", "kdim"]
    assert all(r["max_abs_err"] < 1e-5 for r in rows)
