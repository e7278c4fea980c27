"""The hash grid's compiled CPU kernel (db3d/nerf/cpu_kernel.py, hash_interp.c): the same values bit
for bit as the tensor ops, its switch, and its loud fallback."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from db3d.nerf import cpu_kernel, encoding
from db3d.nerf.encoding import hash_grid_torch
from db3d.nerf.hash_layout import hash_grid_layout


def _encode(monkeypatch, mode: str, x, table, layout, create_graph: bool = False):
    """Features, and the table's gradient for a fixed random upstream gradient, with the kernel on or off."""
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, mode)
    t = table.detach().clone().requires_grad_(True)
    feats = hash_grid_torch(x, t, layout)
    upstream = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1), dtype=feats.dtype)
    (grad,) = torch.autograd.grad(feats, t, upstream, create_graph=create_graph)
    return feats, grad, t


@pytest.fixture
def kernel_available():
    if cpu_kernel.library() is None:  # the fallback test below covers that machine
        pytest.fail(f"the CPU kernel did not build here: {cpu_kernel.unavailable_reason()}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels, log2_rows, base, finest, features", [
    (8, 14, 16, 256, 2),  # the toy preset's grid
    (6, 10, 4, 96, 2),  # dense and hashed levels
    (3, 12, 2, 8, 2),  # dense levels only
    (4, 6, 8, 64, 1),  # hashed levels only, one feature
    (5, 9, 4, 64, 3),  # three features
    (3, 12, 16, 4_000_000, 2),  # resolution x 2^k past 2^31: the hash products in int64
])
def test_the_kernel_gives_the_tensor_ops_values_and_table_gradient_bit_for_bit(
        monkeypatch, kernel_available, dtype, levels, log2_rows, base, finest, features):
    layout = hash_grid_layout(levels, log2_rows, base, math.exp(math.log(finest / base) / (levels - 1)))
    gen = torch.Generator().manual_seed(levels)
    x = torch.rand(3000, 3, generator=gen, dtype=dtype)
    x[:30] = torch.randint(0, 2, (30, 3), generator=gen).to(dtype)  # cube corners: the far faces wrap
    x[30:40] = x[30:40] * 1.4 - 0.2  # outside [0, 1]: clamped
    table = (torch.rand(layout.offsets[-1], features, generator=gen, dtype=dtype) - 0.5) * 0.2
    calls = []
    monkeypatch.setattr(encoding._HashGridKernel, "apply", lambda *a: calls.append(1) or _apply(*a))
    ops_feats, ops_grad, _ = _encode(monkeypatch, "torch", x, table, layout)
    assert not calls  # switched off: the tensor ops
    feats, grad, _ = _encode(monkeypatch, "c", x, table, layout)
    assert calls  # switched on: the kernel
    assert torch.equal(feats, ops_feats)
    assert torch.equal(grad, ops_grad)


_apply = encoding._HashGridKernel.apply


def test_the_kernels_table_gradient_passes_gradcheck_and_double_backward(monkeypatch, kernel_available):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "c")
    small = hash_grid_layout(3, 6, 2, 2.0)
    x = torch.rand(40, 3, dtype=torch.float64)  # no gradient: the kernel's path
    table = torch.randn(small.offsets[-1], 2, dtype=torch.float64, requires_grad=True)
    fn = lambda t: hash_grid_torch(x, t, small).square()  # noqa: E731  (squared: a non-zero second derivative)
    assert torch.autograd.gradcheck(fn, (table,))
    assert torch.autograd.gradgradcheck(fn, (table,))
    # create_graph through the kernel gives the tensor ops' differentiable gradient
    feats, grad, t = _encode(monkeypatch, "c", x, table, small, create_graph=True)
    ops_feats, ops_grad, ops_t = _encode(monkeypatch, "torch", x, table, small, create_graph=True)
    torch.testing.assert_close(grad, ops_grad, rtol=0, atol=1e-12)
    (second,) = torch.autograd.grad((grad * feats.sum()).sum(), t)
    (ops_second,) = torch.autograd.grad((ops_grad * ops_feats.sum()).sum(), ops_t)
    torch.testing.assert_close(second, ops_second)


def test_positions_that_need_a_gradient_take_the_tensor_ops(monkeypatch, kernel_available):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "c")
    monkeypatch.setattr(encoding._HashGridKernel, "apply", lambda *a: pytest.fail("the kernel has no position gradient"))
    layout = hash_grid_layout(3, 8, 4, 2.0)
    x = torch.rand(50, 3, requires_grad=True)
    table = torch.randn(layout.offsets[-1], 2, requires_grad=True)
    hash_grid_torch(x, table, layout).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_fit_is_the_same_with_and_without_the_kernel(monkeypatch, kernel_available, tmp_path):
    from db3d.core.cameras import sample_random_cameras
    from db3d.core.config import NeRFConfig
    from db3d.method.fit import ReconTerm, fit_nerf
    from db3d.nerf.io import load_field

    nerf = NeRFConfig(n_samples=16, n_levels=6, log2_hashmap_size=12, max_resolution=128, hidden_dim=16,
                      occupancy_resolution=16, occupancy_every=4, checkpoint_every=0)
    gen = torch.Generator().manual_seed(0)
    cams = sample_random_cameras(3, 16, (0.0, 30.0), (1.6, 1.8), (50.0, 50.0), gen)
    images = torch.rand(3, 3, 16, 16, generator=gen)
    fields = {}
    for mode in ("torch", "c"):
        monkeypatch.setenv(cpu_kernel.ENV_SWITCH, mode)
        ckpt = fit_nerf(tmp_path / mode, "k", nerf, 16, 12, 0, torch.device("cpu"),
                        recon=ReconTerm(images=images, cameras=cams))
        fields[mode] = load_field(tmp_path / mode / "field.safetensors").state_dict()
        assert ckpt.steps == 12
    assert all(torch.equal(fields["torch"][k], fields["c"][k]) for k in fields["torch"])


def test_without_a_compiler_it_warns_once_and_uses_the_tensor_ops(monkeypatch, tmp_path):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "c")
    monkeypatch.setenv("DB3D_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: None)
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_failure", None)
    layout = hash_grid_layout(3, 8, 4, 2.0)
    x, table = torch.rand(50, 3), torch.randn(layout.offsets[-1], 2)
    with pytest.warns(RuntimeWarning, match="no C compiler found.*DB3D_HASHGRID_KERNEL=torch"):
        feats = hash_grid_torch(x, table, layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        again = hash_grid_torch(x, table, layout)
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "torch")
    assert torch.equal(feats, hash_grid_torch(x, table, layout)) and torch.equal(again, feats)


def test_a_nan_position_raises_instead_of_reading_outside_the_table(monkeypatch, kernel_available):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "c")
    layout = hash_grid_layout(8, 14, 16, 1.4)
    table = torch.randn(layout.offsets[-1], 2, requires_grad=True)
    x = torch.rand(10, 3)
    x[3, 1] = float("nan")
    with pytest.raises(RuntimeError, match="a position is NaN"):
        hash_grid_torch(x, table, layout)


def test_the_switch_takes_c_or_torch_only(monkeypatch):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "cuda")
    with pytest.raises(ValueError, match="DB3D_HASHGRID_KERNEL='cuda'"):
        cpu_kernel.enabled()


def test_the_library_is_built_once_into_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("DB3D_CACHE", str(tmp_path))
    first = cpu_kernel._build()
    assert first.parent == tmp_path / "kernels" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert cpu_kernel._build() == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [first.name]  # no temporary left behind


def test_doctor_says_where_the_kernel_is_or_why_not(monkeypatch, tmp_path):
    from db3d.cli.doctor import _cpu_kernel_status

    monkeypatch.setenv("DB3D_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_failure", None)
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "c")
    assert _cpu_kernel_status().startswith(f"built: {tmp_path / 'kernels'}")
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "torch")
    assert _cpu_kernel_status().startswith("off")
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "c")
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_compiler", lambda: None)
    assert "not available (RuntimeError: no C compiler found" in _cpu_kernel_status()
