"""bf16 decisions follow the CPU's flags: 'auto' never picks emulated bf16, 'on' there warns once."""

from __future__ import annotations

import logging

import pytest
import torch

from notellm.model import runtime
from notellm.model.runtime import use_bf16

CPU = torch.device("cpu")


@pytest.fixture
def flags(monkeypatch):
    """Fake the CPU's bf16 flags: ``flags(avx512_bf16, amx)``."""
    def fake(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(runtime, "_warned", False)
    return fake


@pytest.mark.parametrize("avx512_bf16,amx", [(True, False), (False, True), (True, True)])
def test_auto_trains_in_bf16_where_the_cpu_computes_it(flags, avx512_bf16, amx):
    flags(avx512_bf16, amx)
    assert use_bf16("auto", CPU, training=True)
    assert not use_bf16("auto", CPU)  # embedding stays float32: a vector must not depend on its batch


def test_auto_stays_float32_on_an_avx2_only_cpu(flags, caplog):
    flags(False, False)
    with caplog.at_level(logging.WARNING):
        assert not use_bf16("auto", CPU, training=True)
        assert not use_bf16("auto", CPU)
    assert not caplog.records


def test_on_without_native_bf16_warns_once_with_the_cost(flags, caplog):
    flags(False, False)
    with caplog.at_level(logging.WARNING):
        assert use_bf16("on", CPU, training=True)
        assert use_bf16("on", CPU)
    assert len(caplog.records) == 1
    assert "49 s in float32" in caplog.records[0].getMessage()


def test_on_with_native_bf16_is_silent(flags, caplog):
    flags(True, True)
    with caplog.at_level(logging.WARNING):
        assert use_bf16("on", CPU, training=True)
    assert not caplog.records
    assert not use_bf16("off", CPU, training=True)
