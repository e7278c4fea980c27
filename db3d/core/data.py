"""Subjects, prompts and input validation: the photos {I_i} and the prompt T of DreamBooth3D.

A subject is a folder of 3-6 casual photos of one object (the paper's range). Folders may sit in a
DreamBooth-layout dataset root (a `prompts_and_classes.txt` beside them, giving each subject's
class noun and the 25 object / 25 live-subject prompt templates), or anywhere else with the class
noun given explicitly. Nothing here ever writes into a subject folder.

Imports: numpy and PIL only; torch is imported inside `load_subject_images`.
"""

from __future__ import annotations

import hashlib
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # case-insensitive; other files are ignored
LIVE_CLASSES = ("cat", "dog")  # these get the live-subject prompt list
TABLE_NAME = "prompts_and_classes.txt"
MAX_IMAGE_PIXELS = 89_478_485  # PIL's default limit; larger images are decompression bombs
PAPER_IMAGE_RANGE = (3, 6)  # DreamBooth3D uses 3-6 photos per subject; outside it is a warning
MIN_IMAGES = 2  # fewer is a problem
SMALL_SIDE = 256  # images with a shorter side are upscaled: a warning
DEFAULT_TEMPLATES = (  # used when no dataset table is known; {0} = identifier, {1} = class noun
    "a {0} {1}",
    "a DSLR photo of a {0} {1}",
    "a {0} {1} on a wooden table",
    "a {0} {1} in the snow",
)
from db3d.core.synthetic import SYNTHETIC_CLASS_NOUN, make_synthetic_subject  # noqa: E402,F401  (re-exported)


class DataError(ValueError):
    """Invalid input data; `.problems` lists each problem, naming the file or field."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# ----------------------------------------------------------------------------- dataset table


@dataclass(frozen=True)
class DatasetTable:
    classes: dict[str, str]  # subject folder name -> class noun
    object_prompts: tuple[str, ...]  # templates with {0} = identifier, {1} = class noun
    live_prompts: tuple[str, ...]


_TEMPLATE_LINE = re.compile(r"""^(['"])(.*)\1\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?$""")


def read_dataset_table(root: Path) -> DatasetTable:
    """Parse `root/prompts_and_classes.txt` (the DreamBooth dataset's class and prompt table)."""
    path = Path(root) / TABLE_NAME
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    problems: list[str] = []
    section = None  # "classes" | "object" | "live" | None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{path}:{lineno}"
        # 1. section headers
        if line.lower() == "classes":
            section = "classes"
        elif line.lower() == "object prompts":
            section = "object"
        elif line.lower() == "live subject prompts":
            section = "live"
        elif line.lower() == "prompts" or not line or line.startswith(("prompt_list", "]")):
            continue
        # 2. class rows "subject_name,class"
        elif section == "classes":
            name, sep, noun = (s.strip() for s in line.partition(","))
            if line.lower().replace(" ", "") == "subject_name,class":
                continue
            if not sep or not name or not noun or "," in noun:
                problems.append(f"{where}: expected 'subject_name,class', got {raw!r}")
            else:
                classes[name] = noun
        # 3. template lines "'a {0} {1} ...'.format(unique_token, class_token),"
        elif section in prompts:
            match = _TEMPLATE_LINE.match(line)
            if match is None:
                problems.append(f"{where}: expected a prompt template line, got {raw!r}")
                continue
            template = match.group(2)
            try:
                template.format("ID", "CLASS")
            except (IndexError, KeyError, ValueError) as e:
                problems.append(f"{where}: bad template {template!r} ({e})")
                continue
            if "{0}" not in template:
                problems.append(f"{where}: template {template!r} lacks the identifier {{0}}")
            prompts[section].append(template)
        else:
            problems.append(f"{where}: unexpected line outside any section: {raw!r}")
    for what, found in (("class rows", classes), ("object prompts", prompts["object"]),
                        ("live subject prompts", prompts["live"])):
        if not found:
            problems.append(f"{path}: no {what} found")
    if problems:
        raise DataError(problems)
    return DatasetTable(classes, tuple(prompts["object"]), tuple(prompts["live"]))


def find_dataset_root(subject_dir: Path) -> Path | None:
    """The subject folder's parent, if it holds a prompts_and_classes.txt; else None."""
    parent = Path(subject_dir).absolute().parent
    return parent if (parent / TABLE_NAME).is_file() else None


# ----------------------------------------------------------------------------- decoding images


class _BadImage(Exception):
    """An image file that cannot be used; the message says why (without the file name)."""


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode -> (uint8 [H,W,3] RGB composited on white, float32 [H,W] alpha or None)."""
    mode = im.mode
    # 1. high bit depth grayscale: scale to 8 bit (I;16* is 0..65535; F is assumed 0..1)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)  # [H,W]
        if mode == "F" and a.min() >= 0 and a.max() <= 1:
            a = a * 255
        elif mode == "F" or (mode == "I" and (a.min() < 0 or a.max() > 65535)):
            a = (a - a.min()) / max(a.max() - a.min(), 1e-12) * 255
        else:
            a = a / 65535 * 255
        gray = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1), None
    # 2. alpha (RGBA, LA, PA, or P/L/RGB with a transparency key): composite on white
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)  # [H,W,4]
        alpha = rgba[..., 3] / 255  # [H,W]
        rgb = rgba[..., :3] * alpha[..., None] + 255 * (1 - alpha[..., None])
        return np.round(rgb).astype(np.uint8), alpha
    # 3. everything else (L, 1, P, CMYK, YCbCr, RGB)
    return np.asarray(im.convert("RGB")), None


def _decode(file: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Fully decode one image file with EXIF orientation applied; raises _BadImage."""
    if file.stat().st_size == 0:
        raise _BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise _BadImage(f"decompression bomb: {w}x{h} = {w * h} pixels is over "
                                    f"MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS}")
                im.load()  # raises on truncated data
                return _to_rgb(ImageOps.exif_transpose(im))
    except _BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _BadImage(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise _BadImage("not an image file (PIL cannot identify it)") from None
    except Exception as e:  # truncated or corrupt data raise many kinds of errors in PIL
        raise _BadImage(f"cannot decode image: {type(e).__name__}: {e}") from None


def _list_images(path: Path) -> list[Path]:
    """Image files directly in `path`, sorted; hidden files and other extensions are ignored."""
    return sorted(p for p in path.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


# ----------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class SubjectReport:
    name: str  # folder name
    path: Path
    class_noun: str | None  # explicit, else from the dataset table, else None
    files: tuple[Path, ...]  # image files found (sorted), including bad ones
    resolutions: tuple[tuple[int, int], ...]  # distinct (width, height) of the readable images
    problems: tuple[str, ...]  # errors, each "FILE: what" (or "FOLDER: what")
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_subject(path: Path, class_noun: str | None = None) -> SubjectReport:
    """Validate a subject folder; bad images become problems, nothing raises, nothing is written."""
    path, name = Path(path), Path(path).resolve().name
    problems: list[str] = []
    warns: list[str] = []
    # 1. class noun: explicit wins, else the dataset table's
    root = find_dataset_root(path)
    if class_noun is None and root is not None:
        try:
            class_noun = read_dataset_table(root).classes.get(name)
        except DataError:
            warns.append(f"{root / TABLE_NAME} is malformed; no class noun from it")
    # 2. the folder and its image files
    if not path.is_dir():
        why = "not a folder" if path.exists() else "folder does not exist"
        return SubjectReport(name, path, class_noun, (), (), (f"{path}: {why}",), ())
    try:
        files = _list_images(path)
    except OSError as e:
        return SubjectReport(name, path, class_noun, (), (), (f"{path}: cannot list ({e})",), ())
    # 3. decode every image; remember pixel digests to find duplicates
    sizes: list[tuple[int, int]] = []
    seen: dict[str, Path] = {}
    for file in files:
        try:
            rgb, alpha = _decode(file)
        except (_BadImage, OSError) as e:
            problems.append(f"{file.name}: {e}")
            continue
        digest = hashlib.sha256(repr(rgb.shape).encode() + rgb.tobytes()
                                + (b"" if alpha is None else alpha.tobytes())).hexdigest()
        if digest in seen:
            problems.append(f"{file.name}: duplicate of {seen[digest].name} (identical pixels)")
            continue
        seen[digest] = file
        h, w = rgb.shape[:2]
        sizes.append((w, h))
        if w != h:
            warns.append(f"{file.name}: not square ({w}x{h}); it will be centre-cropped")
        if min(w, h) < SMALL_SIDE:
            warns.append(f"{file.name}: small ({w}x{h}); it will be upscaled")
    # 4. image count: fewer than MIN_IMAGES is a problem, outside the paper's 3-6 a warning
    n = len(seen)
    lo, hi = PAPER_IMAGE_RANGE
    if not files:
        problems.append(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    elif n < MIN_IMAGES:
        problems.append(f"{path}: {n} usable image(s); at least {MIN_IMAGES} are needed")
    elif not lo <= n <= hi:
        warns.append(f"{n} images; the paper uses {lo}-{hi}")
    if class_noun is None:
        warns.append("no class noun known (not in a dataset table); pass one explicitly")
    return SubjectReport(name, path, class_noun, tuple(files), tuple(sorted(set(sizes))),
                         tuple(problems), tuple(warns))


# ----------------------------------------------------------------------------- subjects


@dataclass(frozen=True)
class Subject:
    name: str
    path: Path
    class_noun: str
    files: tuple[Path, ...]  # the validated image files, sorted
    live: bool  # class noun in LIVE_CLASSES: uses the live-subject prompt list
    templates: tuple[str, ...]  # prompt templates, {0} = identifier, {1} = class noun


def resolve_subject(spec: str, data_root: str | None = None, class_noun: str | None = None) -> Subject:
    """A validated subject from a folder path or a subject name inside `data_root`.

    The class noun is `class_noun` if given, else the dataset table's. Raises DataError listing
    every problem (missing folder, bad images, no class noun, malformed table).
    """
    # 1. locate the folder: data_root/spec first (an absolute spec stays itself), then spec
    tried = [Path(data_root) / spec] if data_root is not None else []
    tried.append(Path(spec).expanduser())
    folder = next((p for p in tried if p.is_dir()), None)
    if folder is None:
        raise DataError(f"subject {spec!r}: no such folder (tried {', '.join(map(str, tried))})")
    folder = folder.resolve()
    # 2. validate the images; find the class noun and the table
    report = inspect_subject(folder, class_noun)
    problems = [f"{report.name}: {p}" for p in report.problems]
    root = find_dataset_root(folder)
    table = None
    if root is not None:
        try:
            table = read_dataset_table(root)
        except DataError as e:
            problems += e.problems
    noun = (report.class_noun or "").strip()
    if not noun:
        problems.append(f"{report.name}: no class noun for {folder} (it is not in a dataset "
                        f"table's {TABLE_NAME}); pass class_noun")
    if problems:
        raise DataError(problems)
    # 3. the prompt templates: the table's object or live list, else the built-in default
    live = noun.lower() in LIVE_CLASSES
    if table is None:
        templates = DEFAULT_TEMPLATES
    else:
        templates = table.live_prompts if live else table.object_prompts
    return Subject(report.name, folder, noun, report.files, live, templates)


def _square_resize(im: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square, then resize (Lanczos, antialiased) to resolution x resolution."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    return im.resize((resolution, resolution), Image.Resampling.LANCZOS)


def load_subject_images(subject: Subject, resolution: int) -> tuple["Tensor", "Tensor"]:
    """images Float[N,3,R,R] in [0,1] (white background), masks Float[N,1,R,R] (1 = subject)."""
    import torch  # heavy (~1.5 s): `db3d check-data` and sweep specs read subjects without torch

    images, masks = [], []
    for file in subject.files:
        try:
            rgb, alpha = _decode(file)  # [H,W,3] uint8, [H,W] float32 or None
        except (_BadImage, OSError) as e:
            raise DataError(f"{subject.name}: {file.name}: {e}") from None
        img = np.asarray(_square_resize(Image.fromarray(rgb), resolution), dtype=np.float32) / 255
        images.append(torch.from_numpy(img).permute(2, 0, 1))  # [3,R,R]
        if alpha is None:
            masks.append(torch.ones(1, resolution, resolution))
        else:
            m = np.asarray(_square_resize(Image.fromarray(alpha, mode="F"), resolution))
            masks.append(torch.from_numpy(np.clip(m, 0, 1).astype(np.float32))[None])  # [1,R,R]
    return torch.stack(images).clamp_(0, 1), torch.stack(masks)


# ----------------------------------------------------------------------------- prompts


def format_prompt(template: str, identifier: str, class_noun: str) -> str:
    """Fill a template ({0} = identifier, {1} = class noun) and check the identifier survives."""
    try:
        prompt = template.format(identifier, class_noun)
    except (IndexError, KeyError, ValueError) as e:
        raise DataError(f"template {template!r}: cannot format ({e})") from None
    check_prompt(prompt, identifier)
    return prompt


def check_prompt(prompt: str, identifier: str) -> None:
    """DataError unless `identifier` occurs in `prompt` as a whole word."""
    if not identifier or identifier != identifier.strip() or any(c.isspace() for c in identifier):
        raise DataError(f"identifier {identifier!r}: must be one non-empty token without spaces")
    if re.search(rf"(?<!\w){re.escape(identifier)}(?!\w)", prompt) is None:
        raise DataError(f"prompt {prompt!r}: the identifier {identifier!r} is not a whole word of it")


# ----------------------------------------------------------------------------- db3d check-data


def _subject_folders(path: Path) -> list[Path] | None:
    """The subject folders of a dataset root, or None if `path` is a subject folder itself."""
    if not path.is_dir():
        return None
    if (path / TABLE_NAME).is_file():
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if _list_images(path):
        return None
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    return subdirs or None


def check_data_main(paths: list[str]) -> int:
    """`db3d check-data PATH...`: one line per subject; 0 if all are fine, else 1 (no traceback)."""
    if not paths:
        print("usage: db3d check-data PATH... (subject folders or dataset roots)")
        return 1
    n_subjects, problems = 0, []
    for arg in paths:
        path = Path(arg)
        try:
            # 1. a dataset root: its table (if any) must parse and name existing folders
            folders = _subject_folders(path)
            if folders is not None and (path / TABLE_NAME).is_file():
                try:
                    table = read_dataset_table(path)
                    missing = sorted(set(table.classes) - {f.name for f in folders})
                    problems += [f"{name}: listed in {path / TABLE_NAME} but no folder {path / name}"
                                 for name in missing]
                except DataError as e:
                    problems += e.problems
            # 2. one line per subject
            for folder in folders if folders is not None else [path]:
                report = inspect_subject(folder)
                n_subjects += 1
                res = ", ".join(f"{w}x{h}" for w, h in report.resolutions) or "-"
                line = (f"{report.name}: class={report.class_noun or '?'} "
                        f"images={len(report.files)} resolution={res}")
                if report.warnings:
                    line += "; warnings: " + "; ".join(report.warnings)
                print(line + ("" if report.ok else f"; {len(report.problems)} problem(s)"))
                problems += [f"{report.name}: {p}" for p in report.problems]
        except Exception as e:  # a checker reports, it does not crash
            problems.append(f"{path}: {type(e).__name__}: {e}")
    # 3. the problems, one per line
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"checked {n_subjects} subject(s): "
          + ("all fine" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(check_data_main(sys.argv[1:]))
