"""ToyWorld subjects: object instances written as ordinary DreamBooth-layout subject folders.

    db3d toyworld subjects out=DIR [n=8] [captures=5] [seed=1]

A subject is ``sample_object(rng, vary=True)``: a caption's object with proportions and a front
decal (shape, colour) that the caption vocabulary cannot express. Its folder holds 4-6 "casual
captures" from a limited frontal arc (azimuth within +-CAPTURE_ARC degrees of the front, like
real DreamBooth photos, which rarely show the back) and ``toyworld.json``, the exact object (the
ground truth the benchmark scores against). The root gets a ``prompts_and_classes.txt`` in the
DreamBooth dataset's format (class noun "toy"), so `db3d run data_root=DIR subject=toy00` and
sweeps (`subjects: {root: DIR}` or `{toyworld: N}`) take them like any other subjects.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from db3d.core.cameras import cameras_at
from db3d.toyworld.render import render_object
from db3d.toyworld.world import FrontFeature, Primitive, ToyObject, sample_object

CLASS_NOUN = "toy"
GROUND_TRUTH = "toyworld.json"
CAPTURE_ARC = 60.0  # captures within +-this azimuth of the front (degrees)
CAPTURE_ELEVATION = (0.0, 30.0)
CAPTURE_DISTANCE = 1.75
CAPTURE_FOV = 50.0
# prompt templates in the prior's vocabulary ({0} identifier, {1} class noun)
PROMPTS = ("a {0} {1}",)


def to_json(obj: ToyObject) -> dict:
    return dataclasses.asdict(obj)


def from_json(data: dict) -> ToyObject:
    prims = tuple(Primitive(kind=p["kind"], half=tuple(p["half"]), position=tuple(p["position"]), colour=p["colour"])
                  for p in data["primitives"])
    f = data["feature"]
    feature = FrontFeature(shape=f["shape"], colour=f["colour"], part=f["part"], centre=tuple(f["centre"]),
                           size=f["size"])
    return ToyObject(primitives=prims, layout=data["layout"], feature=feature, caption=data["caption"],
                     seed=data.get("seed", 0))


def ground_truth(subject_dir: Path | str) -> ToyObject | None:
    """The object of a ToyWorld subject folder (None for any other subject)."""
    path = Path(subject_dir) / GROUND_TRUTH
    return from_json(json.loads(path.read_text())) if path.exists() else None


def write_subject(obj: ToyObject, folder: Path, captures: int, rng: random.Random, size: int = 128) -> Path:
    """The captures (NN.png) and the ground truth of one subject."""
    folder.mkdir(parents=True, exist_ok=True)
    az = torch.tensor([rng.uniform(-CAPTURE_ARC, CAPTURE_ARC) for _ in range(captures)])
    el = torch.tensor([rng.uniform(*CAPTURE_ELEVATION) for _ in range(captures)])
    cams = cameras_at(az, el, CAPTURE_DISTANCE, CAPTURE_FOV, size)
    rgb = render_object(obj, cams, supersample=2).rgb  # (V, H, W, 3)
    for i, img in enumerate(rgb):
        Image.fromarray((img.numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")
    (folder / GROUND_TRUTH).write_text(json.dumps(to_json(obj), indent=1))
    return folder


def write_table(root: Path, names: list[str]) -> None:
    """root/prompts_and_classes.txt in the DreamBooth dataset's format."""
    lines = ["Classes", "", "subject_name,class"] + [f"{n},{CLASS_NOUN}" for n in names] + ["", "Prompts", ""]
    for section in ("Object Prompts", "Live Subject Prompts"):
        lines += [section, "", "prompt_list = ["]
        lines += [f"'{t}'.format(unique_token, class_token)," for t in PROMPTS]
        lines += ["]", ""]
    (root / "prompts_and_classes.txt").write_text("\n".join(lines))


def make_subjects(root: Path | str, n: int = 8, captures: int = 5, seed: int = 1) -> list[Path]:
    """Write n ToyWorld subjects (toy00, toy01, ...) under root; deterministic under seed."""
    if not 1 <= captures <= 12 or n < 1:
        raise ValueError(f"need n >= 1 and 1 <= captures <= 12, got n={n}, captures={captures}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = [f"toy{i:02d}" for i in range(n)]
    folders = [write_subject(sample_object(rng, vary=True), root / name, captures, rng) for name in names]
    write_table(root, names)
    return folders
