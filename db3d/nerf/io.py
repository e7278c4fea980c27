"""Save and load a NeRFField: safetensors with its FieldConfig as JSON metadata (written atomically)."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import Tensor

from db3d.core.artifacts import atomic_write
from db3d.nerf.field import FieldConfig, NeRFField

FIELD_FORMAT = "db3d.NeRFField/1"
"""``format`` entry of a saved field's safetensors metadata."""


def field_device(field: torch.nn.Module) -> torch.device:
    for tensor in list(field.parameters()) + list(field.buffers()):
        return tensor.device
    return torch.device("cpu")


def _canonical_state(field: NeRFField) -> dict[str, Tensor]:
    """The state dict with the hash table under ``encoding.table`` (P, F) whatever the backend.

    tiny-cuda-nn keeps the table as one flat ``params`` vector in the same layout as the torch
    backend (see ``db3d/nerf/encoding.py``), so a checkpoint trained with tcnn loads on a CPU.
    """
    state = {}
    for key, value in field.state_dict().items():
        if key.startswith("encoding.tcnn_encoding."):
            key = "encoding.table"
            value = value.reshape(-1, field.encoding.features_per_level)
        state[key] = value.detach().float().cpu().contiguous()
    return state


def save_field(field: NeRFField, path: Path) -> Path:
    """Save a ``NeRFField`` as safetensors, its ``FieldConfig`` as JSON in the metadata."""
    from safetensors.torch import save_file  # noqa: PLC0415

    metadata = {"format": FIELD_FORMAT, "field_config": json.dumps(asdict(field.config))}
    state = _canonical_state(field)
    return atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))


def read_field_config(path: Path) -> FieldConfig:
    """The ``FieldConfig`` stored in a checkpoint written by ``save_field``."""
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FIELD_FORMAT:
        raise ValueError(f"{path} is not a db3d field checkpoint (format={metadata.get('format')!r})")
    stored = json.loads(metadata["field_config"])
    if "density_blob_std" in stored and "density_blob" not in stored:  # written before the linear blob
        stored.update(density_blob="gaussian", density_blob_radius=stored.pop("density_blob_std"))
    known = {f.name for f in fields(FieldConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        warnings.warn(f"{path}: ignoring FieldConfig fields this version lacks: {unknown}", stacklevel=2)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in known}
    return FieldConfig(**values)


def load_field(
    path: Path,
    device: torch.device | str = "cpu",
    encoding_implementation: str | None = None,  # override the stored "torch" | "tcnn"
) -> NeRFField:
    """Rebuild the field saved by ``save_field`` on ``device`` (in train mode, like any new module)."""
    from safetensors.torch import load_file  # noqa: PLC0415

    config = read_field_config(path)
    if encoding_implementation is not None:
        config.encoding_implementation = encoding_implementation
    field = NeRFField(config, device=device)
    state = load_file(str(path), device="cpu")
    if field.encoding.tcnn_encoding is not None:  # live backend is tcnn: back to its flat vector
        (name,) = [k for k in field.state_dict() if k.startswith("encoding.tcnn_encoding.")]
        live = field.state_dict()[name]
        state[name] = state.pop("encoding.table").reshape(-1).to(live.dtype)
    field.load_state_dict(state, strict=True)
    return field
