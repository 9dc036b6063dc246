"""A GPU backend that cannot run fails at once, with the reason, on every entry point (issue 16, part 2).

No machine of this project has a CUDA device, and a machine that has one
must still run these tests: the missing device is simulated by replacing
CuPy's ``getDeviceCount``.
"""

from __future__ import annotations

import pytest

import xsoftmax as xs
import xsoftmax._backend as backend_module
from xsoftmax._cli import main

cupy = pytest.importorskip("cupy")

INSUFFICIENT = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


class FakeCUDARuntimeError(RuntimeError):
    """What CuPy raises (``cupy_backends.cuda.api.runtime.CUDARuntimeError``), without needing CUDA."""


@pytest.fixture
def no_device(monkeypatch):
    """CuPy imports, but the CUDA runtime finds no driver: as on this project's CPU-only machines."""

    def get_device_count():
        raise FakeCUDARuntimeError(INSUFFICIENT)

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", get_device_count)
    monkeypatch.setattr(backend_module, "_has_cuda_driver", lambda: False)


def test_set_backend_and_use_backend_raise_at_once(no_device):
    reason = xs.available_backends()["cupy"]
    assert reason == "no CUDA driver or device found (no NVIDIA driver is installed on this machine)"
    before = xs.get_backend()
    with pytest.raises(ValueError) as exc:
        xs.set_backend("cupy")
    assert str(exc.value) == f"backend 'cupy' is not usable here: {reason}; see xsoftmax.available_backends()"
    assert xs.get_backend() == before
    with pytest.raises(ValueError, match="backend 'cupy' is not usable here: no CUDA driver or device found"):
        with xs.use_backend("cupy"):
            pytest.fail("the block must not run")
    assert xs.get_backend() == before


def test_an_old_driver_is_told_apart_from_no_driver(monkeypatch, no_device):
    monkeypatch.setattr(backend_module, "_has_cuda_driver", lambda: True)
    reason = xs.available_backends()["cupy"]
    assert reason.startswith("no CUDA device: the NVIDIA driver is older than CuPy's CUDA runtime")
    assert "cudaErrorInsufficientDriver" in reason and "update the driver" in reason


def test_zero_devices(monkeypatch):
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    assert xs.available_backends()["cupy"] == "no CUDA driver or device found (cudaGetDeviceCount returned 0)"
    with pytest.raises(ValueError, match="cudaGetDeviceCount returned 0"):
        xs.set_backend("cupy")


def test_other_cuda_errors_keep_cupys_words():
    reason = backend_module.cuda_error_reason(FakeCUDARuntimeError("cudaErrorDevicesUnavailable: busy"))
    assert reason == "no CUDA device: cudaErrorDevicesUnavailable: busy"


def test_this_machines_reason_is_translated():
    """What the test skips print here: no raw 'insufficient driver' where no driver is installed."""
    reason = xs.available_backends()["cupy"]
    if reason == "ok":
        pytest.skip("a CUDA device is present")
    if not backend_module._has_cuda_driver():
        assert reason.startswith("no CUDA driver or device found"), reason
        assert "insufficient" not in reason.lower()


@pytest.mark.parametrize("argv, prefix", [
    (["train", "--backend", "cupy"], "xsoftmax train: error: backend 'cupy' is not usable here: "),
    (["bench", "--backends", "cupy"], "xsoftmax bench: no backend to measure: cupy: "),
    (["check", "--backends", "cupy"], "xsoftmax check: no backend to check: cupy: "),
])
def test_command_lines_print_one_line_and_exit_2(no_device, capsys, argv, prefix):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert "no CUDA driver or device found" in err
