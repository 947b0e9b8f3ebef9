import doctest

import pytest
import torch

import flatlab.analysis.memory
from flatlab.analysis import peak_memory, state_bytes


def test_peak_replays_allocations_and_frees_in_order():
    def f():
        a = torch.empty(4000, dtype=torch.uint8)
        b = torch.empty(2000, dtype=torch.uint8)
        del a
        c = torch.empty(100, dtype=torch.uint8)
        return b, c

    m = peak_memory(f)
    assert m.peak == 6000  # a and b at once
    assert m.retained == 2100


def test_a_temporary_held_between_kernels_counts():
    x = torch.zeros(1000)  # 4,000 bytes

    def with_temporary():
        y = x * 2.0  # held across the next kernel
        x.add_(y)

    def in_place():
        x.mul_(3.0)

    # (a Python scalar operand may add a 0-d tensor of a few bytes)
    assert 4000 <= peak_memory(with_temporary).peak < 4100
    assert peak_memory(in_place).peak < 100


def test_state_bytes_counts_every_buffer():
    w = torch.zeros(10, requires_grad=True)
    v = torch.zeros(3, 4, requires_grad=True)
    opt = torch.optim.SGD([w, v], lr=0.1, momentum=0.9)
    assert state_bytes(opt) == 0
    (w.sum() + v.sum()).backward()
    opt.step()
    assert state_bytes(opt) == (10 + 12) * 4  # one momentum buffer per tensor
    assert state_bytes(opt, [w]) == 40


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="CPU or a CUDA"):
        peak_memory(lambda: None, "meta")


def test_doctest():
    assert doctest.testmod(flatlab.analysis.memory, extraglobs={"torch": torch}, verbose=False).failed == 0
