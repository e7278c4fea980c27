"""backbone.trace (db3d/models/traced.py): a frozen UNet's no-grad calls through TorchScript traces
give the module's own outputs bit for bit, and a NeRF fit with them the same field."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from db3d.core.config import compose
from db3d.method.fit import SDSTerm, fit_nerf
from db3d.models import traced
from db3d.nerf.io import load_field


def _inputs(bb, batch: int):
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, bb.unet.config.in_channels, bb.unet.config.sample_size, bb.unet.config.sample_size,
                    generator=gen)
    return x, torch.randint(0, 1000, (batch,), generator=gen), bb.encode_prompts(["a sks toy"] * batch)


def test_traced_calls_equal_the_module_one_trace_per_input_shape_and_none_with_gradients(tiny_sd):
    unet = traced.TracedUNet(tiny_sd.unet)
    with torch.no_grad():
        for batch in (2, 3, 2):
            x, t, emb = _inputs(tiny_sd, batch)
            assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample,
                               tiny_sd.unet(x, t, encoder_hidden_states=emb).sample)
    assert len(unet.traces) == 2  # batch 2 traced once, then replayed
    x, t, emb = _inputs(tiny_sd, 4)
    x.requires_grad_(True)
    unet(x, t, encoder_hidden_states=emb).sample.sum().backward()  # a gradient call runs the module itself
    assert x.grad is not None and len(unet.traces) == 2
    # the trace shares the module's weights: a change to them is seen, nothing is stale
    with torch.no_grad():
        x, t, emb = _inputs(tiny_sd, 2)
        before = unet(x, t, encoder_hidden_states=emb).sample
        weight = tiny_sd.unet.conv_out.bias
        saved = weight.clone()
        try:
            weight.add_(1.0)
            after = unet(x, t, encoder_hidden_states=emb).sample
            assert torch.equal(after, tiny_sd.unet(x, t, encoder_hidden_states=emb).sample)
            assert not torch.equal(after, before)
        finally:
            weight.copy_(saved)


def test_a_module_that_cannot_be_traced_warns_once_and_runs_itself():
    class Untraceable(torch.nn.Module):
        def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True):
            if torch.jit.is_tracing():
                raise RuntimeError("data-dependent control flow")
            return type("Out", (), {"sample": sample * 2})()

    unet = traced.TracedUNet(Untraceable().eval())
    x, t, emb = torch.ones(1, 3, 4, 4), torch.zeros(1), torch.zeros(1, 1, 4)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="could not trace"):
        out = unet(x, t, encoder_hidden_states=emb).sample
    assert torch.equal(out, x * 2) and unet.failed and not unet.traces
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next call neither warns nor tries again
        assert torch.equal(unet(x, t, encoder_hidden_states=emb).sample, x * 2)


def test_a_fit_only_traces_when_long_on_the_cpu_and_asked(tiny_sd):
    assert traced.for_fit(tiny_sd, traced.TRACE_MIN_CALLS) is not None
    assert traced.for_fit(tiny_sd, traced.TRACE_MIN_CALLS - 1) is None
    assert traced.for_fit(replace(tiny_sd, trace_unet=False), traced.TRACE_MIN_CALLS) is None
    assert traced.for_fit(replace(tiny_sd, autocast_dtype=torch.bfloat16), traced.TRACE_MIN_CALLS) is None


def test_a_fit_through_the_traced_unet_gives_the_same_field(tmp_path, tiny_sd, monkeypatch):
    nerf = compose(["preset=smoke", "nerf.steps=6", "nerf.checkpoint_every=6"]).nerf
    term = SDSTerm(backbone=tiny_sd, prompt="a sks toy", guidance_scale=7.5, t_min=0.02, t_max=0.98)
    fields, calls, real = {}, [], traced.TracedUNet.__call__
    monkeypatch.setattr(traced.TracedUNet, "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    for trace in (False, True):
        monkeypatch.setattr(traced, "TRACE_MIN_CALLS", 0 if trace else 10**9)
        calls.clear()
        ckpt = fit_nerf(tmp_path / str(trace), "k", nerf, 32, 6, 0, torch.device("cpu"), sds=term)
        assert len(calls) == (6 if trace else 0)
        fields[trace] = load_field(ckpt.field_file).state_dict()
    assert fields[True].keys() == fields[False].keys()
    assert all(torch.equal(fields[True][k], fields[False][k]) for k in fields[False])
