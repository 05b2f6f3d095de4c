"""Device choice, compute dtype and MFU peaks, with torch.cuda's functions faked (this machine has no GPU).

Only the lowest layer is faked (GPU count, the driver's set-device call, the device name); the real
``torch.cuda.set_device`` still runs, with its own argument checks.
"""
from __future__ import annotations

import pytest
import torch

from midigen.device import autocast, bf16_peak_for, compute_dtype, peak_flops
from midigen.errors import UsageError
from midigen.train.train import pick_device

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two CUDA GPUs as far as midigen can tell; returns the list of indices the driver was told to use."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", chosen.append, raising=False)
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    return chosen


def _torchrun(monkeypatch, rank: int, local_rank: int, world: int = 4, local_world: int = 2) -> None:
    for k, v in zip(TORCHRUN_VARS, (rank, world, local_rank, local_world)):
        monkeypatch.setenv(k, str(v))


def test_one_gpu_without_torchrun_gets_an_index(fake_gpus):
    from midigen.train.distributed import Dist

    for name in ("auto", "cuda"):
        device = pick_device(name, Dist())
        assert device == torch.device("cuda", 0)
    assert fake_gpus == [0, 0]


def test_explicit_gpu_index_is_used(fake_gpus):
    from midigen.train.distributed import Dist

    assert pick_device("cuda:1", Dist()) == torch.device("cuda", 1)
    assert fake_gpus == [1]
    with pytest.raises(UsageError, match="cuda:5.*2 CUDA GPU"):
        pick_device("cuda:5", Dist())


def test_torchrun_process_takes_its_local_rank(fake_gpus, monkeypatch, capsys):
    from midigen.train.distributed import Dist

    _torchrun(monkeypatch, rank=3, local_rank=1)
    assert pick_device("auto", Dist()) == torch.device("cuda", 1)
    assert pick_device("cuda:0", Dist()) == torch.device("cuda", 1)  # torchrun decides, with a warning
    assert "LOCAL_RANK" in capsys.readouterr().err
    assert fake_gpus == [1, 1]
    _torchrun(monkeypatch, rank=2, local_rank=2)
    with pytest.raises(UsageError, match="LOCAL_RANK 2"):
        pick_device("auto", Dist())


def test_cpu_needs_no_gpu(monkeypatch):
    from midigen.train.distributed import Dist

    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    assert pick_device("cpu", Dist()) == torch.device("cpu")
    with pytest.raises(UsageError, match="'device'"):
        pick_device("tpu", Dist())


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L4", 121e12), ("NVIDIA A10", 125e12),
    ("NVIDIA GeForce RTX 4090", 165.2e12),
    # not in the table: no figure rather than a guess
    ("NVIDIA A10G", None), ("NVIDIA H800", None), ("NVIDIA L40S", None), ("NVIDIA GeForce RTX 4090 D", None),
    ("Tesla V100-SXM2-16GB", None), ("", None),
])
def test_bf16_peak_by_gpu_name(name, peak):
    assert bf16_peak_for(name) == peak


def test_mfu_peak_only_for_a_known_gpu_in_bf16(monkeypatch):
    names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA A10G"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: names[torch.device(d).index])
    assert peak_flops(torch.device("cuda", 0), torch.bfloat16) == 989e12
    assert peak_flops(torch.device("cuda", 1), torch.bfloat16) is None  # unknown GPU: MFU omitted
    assert peak_flops(torch.device("cuda", 0), torch.float32) is None  # the table is bf16 peaks
    assert peak_flops(torch.device("cpu"), torch.bfloat16) is None


def test_one_compute_dtype_policy(monkeypatch):
    cpu = torch.device("cpu")
    assert compute_dtype(cpu, "float32") == torch.float32
    assert compute_dtype(cpu, "bfloat16") == torch.bfloat16
    with pytest.raises(UsageError, match="float16"):
        compute_dtype(cpu, "float16")
    # auto: bf16 only where the device does it natively (a GPU that would emulate it runs float32)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert compute_dtype(torch.device("cuda", 0), "auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert compute_dtype(torch.device("cuda", 0), "auto") == torch.bfloat16
    with autocast(cpu, torch.bfloat16):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.float32):
        assert not torch.is_autocast_enabled("cpu")
