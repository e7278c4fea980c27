"""A frozen UNet called through TorchScript traces: the CPU speed option of long NeRF fits.

A diffusers UNet's forward runs hundreds of small modules; at the ToyWorld prior's size (the SDS
call of the toy preset: batch 4, 32 px, folded to 16) Python's own work between the kernels is a
quarter of the call. ``torch.jit.trace`` records the call's kernels once and replays them from C++:
the same kernels on the same inputs, so the output is bit-identical (tests/models/test_traced.py).
Measured on 2 cores, 1 thread: the toy preset's SDS UNet call 24.1 -> 17.8 ms; a trace costs
~0.7 s, so it pays after ~110 calls (``for_fit`` asks for TRACE_MIN_CALLS).

A trace is specific to what it recorded: the input shapes and dtypes (the UNet's forward branches on
them in Python) and the module's structure at that moment. So ``TracedUNet``
  - keeps one trace per (shape, dtype) signature of its inputs;
  - traces only calls that need no gradient, outside autocast, with the module in eval mode (any
    other call runs the module itself);
  - lives for one NeRF fit, over a UNet nothing changes during the fit (the trace shares the
    module's parameters, it copies none);
  - warns once and runs the module itself if tracing fails.
``torch.jit.trace`` is deprecated in favour of torch.compile / torch.export: on these machines
torch.compile took 37 s to compile the same call and ran it in 19.3 ms, and an exported program
(run by Python) in 23.2 ms. The switch is ``backbone.trace``; CUDA keeps the module (and
backbone.compile).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch
from torch import Tensor, nn

TRACE_MIN_CALLS = 200
"""Fits of fewer steps call the module itself (a trace costs ~0.7 s, ~110 of the calls it saves)."""


class _Forward(nn.Module):
    """The call Backbone.unet_output makes, as a module of tensors in and one tensor out."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class TracedUNet:
    """Stands in for a UNet where Backbone.unet_output takes one: ``unet(x, t, encoder_hidden_states=e).sample``."""

    def __init__(self, unet: nn.Module):
        self.unet = unet
        self.traces: dict[tuple, torch.jit.ScriptModule] = {}
        self.failed = False

    def parameters(self):
        return self.unet.parameters()

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor):
        inputs = (sample, timestep, encoder_hidden_states)
        if (self.failed or self.unet.training or torch.is_grad_enabled()
                or torch.is_autocast_enabled(sample.device.type)):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in inputs)
        trace = self.traces.get(key)
        if trace is None:
            try:
                with warnings.catch_warnings():  # the deprecation notice, and diffusers' shape branches
                    warnings.simplefilter("ignore", FutureWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    trace = torch.jit.trace(_Forward(self.unet), inputs, check_trace=False)
            except Exception as err:  # noqa: BLE001 - any failure: the module itself, said loudly
                warnings.warn(f"backbone.trace: could not trace the {type(self.unet).__name__} "
                              f"({type(err).__name__}: {err}); calling the module itself (set backbone.trace=false "
                              "to silence this)", RuntimeWarning, stacklevel=2)
                self.failed = True
                return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
            self.traces[key] = trace
        return SimpleNamespace(sample=trace(*inputs))


def for_fit(backbone, steps: int) -> TracedUNet | None:
    """The UNet a NeRF fit of `steps` SDS steps should call: traced (CPU, backbone.trace, no autocast,
    not compiled, at least TRACE_MIN_CALLS steps), or None for the backbone's own module (also for a
    backbone object without the switch, e.g. a test's closed-form denoiser)."""
    if (steps < TRACE_MIN_CALLS or not getattr(backbone, "trace_unet", False) or backbone.device.type != "cpu"
            or backbone.compile_unet or backbone.autocast_dtype is not None):
        return None
    return TracedUNet(backbone.unet)
