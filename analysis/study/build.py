"""Build a blind two-alternative forced-choice study from a sweep's results (the paper's user study).

    1. read the ok trials; per method x subject x prompt keep one trial: the first by trial_id
       whose renders exist (the others are recorded in the manifest as `candidates`)
    2. pair the methods on every subject x prompt; per pair, the paper's three questions:
       subject fidelity (with the subject photos), 3D consistency, prompt fidelity (prompt shown
       without the identifier token)
    3. copy every render and photo into DIR/media/ under a random name (secrets.token_hex), so no
       method name reaches a browser: not in file names, URLs, HTML, alt text or element ids
    4. per rater: an opaque link token, a shuffled item order, and counterbalanced sides
       (`counterbalance`): every rater sees method_1 on the left in half of its items (+-1), also
       within each method pair and question, and every item's sides split evenly across raters (+-1)
    5. write DIR/manifest.json (the hidden mapping: server side only), DIR/study.sqlite and
       DIR/links.txt (one link path per rater, for the experimenter)

Reads Parquet with pyarrow/pandas; never imports training code.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from . import store

QUESTIONS = {  # key -> what the rater reads ({prompt}: the prompt without the identifier token)
    "subject_fidelity": "Which 3D object looks more like the subject in the photos?",
    "3d_consistency": "Which 3D object is more 3D-consistent and plausible?",
    "prompt_fidelity": "Which 3D object better matches the text: \u201c{prompt}\u201d?",
}
MEDIA_COLUMNS = (  # preference order; a pair uses the first kind both sides have
    ("uri.turntable_rgb.mp4", "video"),
    ("uri.turntable_rgb.gif", "image"),
    ("uri.final_views.png", "image"),
)
MEDIA_SUFFIXES = (".mp4", ".gif", ".png", ".jpg", ".jpeg", ".webp")  # what the server will serve
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PHOTOS = 6
REQUIRED_COLUMNS = ("trial_id", "status", "prompt", "method", "subject")


def is_media(path: Path) -> bool:
    """A regular file (not a symlink) whose content is what its suffix says: an image PIL can
    verify, or an MP4 (an ISO-BMFF 'ftyp' box first)."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix.lower() == ".mp4":
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many kinds for a file that is not an image
        return False


class StudyError(ValueError):
    """The results or the arguments cannot make a study."""


def read_results(results: Path) -> pd.DataFrame:
    """Every trial row of a hive-partitioned results dataset. Files may differ in columns (a failed
    row has no uri.*), so the schema is the union of every file's, with method/subject as strings."""
    results = Path(results)
    if not results.is_dir():
        raise StudyError(f"{results}: no such results folder")
    if not any(results.glob("method=*/subject=*/*.parquet")):
        raise StudyError(f"{results}: no results (expected method=*/subject=*/part-*.parquet)")
    part = pa.schema([("method", pa.string()), ("subject", pa.string())])
    hive = ds.partitioning(part, flavor="hive")
    try:
        first = ds.dataset(str(results), format="parquet", partitioning=hive)
        physical = pa.unify_schemas([f.physical_schema for f in first.get_fragments()], promote_options="permissive")
        fields = [f for f in physical if f.name not in part.names] + list(part)
        df = ds.dataset(str(results), format="parquet", partitioning=hive, schema=pa.schema(fields)).to_table().to_pandas()
    except (pa.ArrowException, OSError) as err:  # mixed column types, a corrupt or truncated file
        raise StudyError(f"{results}: cannot read the results as one table: {' '.join(str(err).split())[:300]}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StudyError(f"{results}: the results lack the columns {missing} (a sweep's rows have "
                         f"{', '.join(REQUIRED_COLUMNS)})")
    return df


def strip_identifier(prompt: str, identifier: str = "sks") -> str:
    """'a sks dog sleeping' -> 'a dog sleeping' (the identifier as a whole word)."""
    if identifier:
        prompt = re.sub(rf"(?<!\w){re.escape(identifier)}(?!\w)", " ", prompt)
    return " ".join(prompt.split())


def _file(uri, results: Path) -> Path | None:
    """An existing file named by a uri.* cell: absolute, relative to the cwd, or to the sweep folder."""
    if not isinstance(uri, str) or not uri.strip():
        return None
    uri = uri.strip().removeprefix("file://")
    for p in (Path(uri), results.parent / uri, results / uri):
        if p.is_file():
            return p.resolve()
    return None


def _media(row: pd.Series, results: Path) -> dict[str, Path]:
    """{column: file} of the renders this trial has on disk."""
    found = {}
    for col, _ in MEDIA_COLUMNS:
        p = _file(row.get(col), results)
        if p is not None and p.suffix.lower() in MEDIA_SUFFIXES and is_media(p):
            found[col] = p
    return found


def subject_photos(row: pd.Series, results: Path) -> list[Path]:
    """The subject's photos: config.subject (a folder, or a name under config.data_root), else
    RESULTS/../subjects/<subject_name> (generated subjects of a sweep)."""
    cands = []
    folder, root = str(row.get("config.subject") or ""), str(row.get("config.data_root") or "")
    if folder:
        cands += [Path(folder), results.parent / folder] + ([Path(root) / folder] if root else [])
    for name in (row.get("subject_name"), row.get("subject")):
        if isinstance(name, str) and name:
            cands.append(results.parent / "subjects" / name)
    for c in cands:
        if c.is_dir():
            files = sorted(p for p in c.iterdir() if not p.name.startswith(".")  # no symlinks, images only
                           and p.suffix.lower() in PHOTO_SUFFIXES and is_media(p))
            if files:
                return [p.resolve() for p in files[:MAX_PHOTOS]]
    return []


def _pick_kind(m1: dict[str, Path], m2: dict[str, Path]) -> tuple[str, str]:
    """(column for side 1, column for side 2): the first kind both have, else each its best."""
    for col, _ in MEDIA_COLUMNS:
        if col in m1 and col in m2:
            return col, col
    return next(iter(m1)), next(iter(m2))


def counterbalance(items: list[dict], raters: int, seed: int) -> list[list[int]]:
    """first_left[r][k] for rater r and items[k] (1: method_1 shown on the left).

    The items are laid out in one sequence, grouped by (method pair, question) and shuffled within
    each group; along it the side alternates, and each rater starts the alternation at an offset
    (half the raters 0, half 1, in a seeded order). So for every rater each contiguous block of the
    sequence -- a (pair, question) group, a pair, all items -- has method_1 on the left in half of
    its items (+-1), and for every item the raters' offsets split its sides evenly (+-1)."""
    rng = random.Random(f"{seed}/sides")
    groups: dict[tuple, list[int]] = {}
    for k, it in enumerate(items):
        groups.setdefault((it["method_1"], it["method_2"], it["question"]), []).append(k)
    sequence = []
    for key in sorted(groups):
        block = groups[key][:]
        rng.shuffle(block)
        sequence += block
    parity = {k: i % 2 for i, k in enumerate(sequence)}
    offsets = [r % 2 for r in range(raters)]
    rng.shuffle(offsets)
    return [[(parity[k] + offsets[r]) % 2 for k in range(len(items))] for r in range(raters)]


def balance(first_left: list[list[int]]) -> dict:
    """How even the sides are: per rater, items with method_1 on the left (min, max, of how many);
    per item, raters who saw method_1 on the left (min, max, of how many)."""
    per_rater = [sum(row) for row in first_left]
    per_item = [sum(col) for col in zip(*first_left)]
    return {"rater_left": (min(per_rater), max(per_rater)), "items": len(first_left[0]),
            "item_left": (min(per_item), max(per_item)), "raters": len(first_left)}


def build_study(results: Path, out: Path, raters: int, seed: int = 0, methods: list[str] | None = None) -> Path:
    """Write a study into `out` (a new or empty folder) and return it (see the module docstring)."""
    results, out = Path(results), Path(out)
    if raters < 1:
        raise StudyError(f"raters={raters}: need at least one rater")
    if methods is not None and (len(set(methods)) != len(methods) or len(methods) < 2):
        raise StudyError(f"methods={','.join(methods)}: name at least two methods, each once")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"{out}: exists and is not an empty folder (a study's answers are never overwritten)")
    df = read_results(results)

    # 1. one ok trial with renders per method x subject x prompt
    if "status" in df:
        df = df[df["status"] == "ok"]
    df = df.sort_values(["method", "subject", "prompt", "trial_id"], kind="stable")
    available = sorted(df["method"].unique())
    if methods:
        missing = [m for m in methods if m not in available]
        if missing:
            raise StudyError(f"methods {missing} have no ok trials; available: {available}")
        df = df[df["method"].isin(methods)]
    order = list(methods) if methods else available
    chosen: dict[tuple[str, str], dict[str, dict]] = {}
    trials, warnings = [], []
    for (method, subject, prompt), group in df.groupby(["method", "subject", "prompt"], sort=True):
        ids = [str(t) for t in group["trial_id"]]
        for _, row in group.iterrows():
            media = _media(row, results)
            if media:
                chosen.setdefault((subject, prompt), {})[method] = {"row": row, "media": media}
                trials.append({"method": method, "subject": subject, "prompt": prompt,
                               "trial_id": str(row["trial_id"]), "candidates": ids})
                break
        else:
            warnings.append(f"{method} / {subject} / {prompt!r}: no ok trial has renders on disk ({ids})")

    # 2. pairs x questions; 3. media under opaque names (a folder this call made goes if it fails)
    made_out = not out.exists()
    (out / "media").mkdir(parents=True, exist_ok=True)
    names: dict[Path, str] = {}

    def opaque(src: Path) -> str:
        if src not in names:
            names[src] = secrets.token_hex(16) + src.suffix.lower()
            shutil.copyfile(src, out / "media" / names[src])
        return names[src]

    items = []
    for (subject, prompt), by_method in sorted(chosen.items()):
        present = [m for m in order if m in by_method]
        any_row = by_method[present[0]]["row"] if present else None
        photos = subject_photos(any_row, results) if any_row is not None else []
        ident = str(any_row.get("config.dreambooth.identifier") or "sks") if any_row is not None else "sks"
        text = strip_identifier(prompt, ident)
        for m1, m2 in itertools.combinations(present, 2):
            c1, c2 = _pick_kind(by_method[m1]["media"], by_method[m2]["media"])
            f1, f2 = by_method[m1]["media"][c1], by_method[m2]["media"][c2]
            for question, template in QUESTIONS.items():
                if question == "subject_fidelity" and not photos:
                    warnings.append(f"{subject}: no subject photos found; subject-fidelity items skipped")
                    continue
                items.append({
                    "id": len(items) + 1, "question": question, "question_text": template.format(prompt=text),
                    "subject": subject, "prompt": prompt, "prompt_text": text,
                    "method_1": m1, "trial_1": str(by_method[m1]["row"]["trial_id"]), "media_1": opaque(f1),
                    "kind_1": dict(MEDIA_COLUMNS)[c1], "source_1": str(f1),
                    "method_2": m2, "trial_2": str(by_method[m2]["row"]["trial_id"]), "media_2": opaque(f2),
                    "kind_2": dict(MEDIA_COLUMNS)[c2], "source_2": str(f2),
                    "photos": [opaque(p) for p in photos] if question == "subject_fidelity" else [],
                })
    if not items:
        shutil.rmtree(out if made_out else out / "media")
        raise StudyError(f"{results}: no subject x prompt has ok trials with renders from two methods "
                         f"(methods: {order}); " + "; ".join(warnings[:5]))

    # 4. raters: tokens, order, sides; 5. database, manifest, links
    db_tmp = out / f".{store.DB_NAME}.tmp"
    con = store.create(db_tmp)
    tokens = []
    sides = counterbalance(items, raters, seed)
    with con:
        con.execute("BEGIN")
        con.executemany("INSERT INTO meta VALUES (?, ?)", [("seed", str(seed)), ("results", str(results.resolve()))])
        con.executemany(
            "INSERT INTO items VALUES (:id, :question, :question_text, :subject, :prompt, :method_1, :trial_1, "
            ":media_1, :kind_1, :method_2, :trial_2, :media_2, :kind_2, :photos)",
            [{**it, "photos": json.dumps(it["photos"])} for it in items])
        for r in range(raters):
            token = secrets.token_hex(16)
            tokens.append(token)
            con.execute("INSERT INTO raters VALUES (?, ?, ?)", (r + 1, f"r{r + 1}", token))
            rng = random.Random(f"{seed}/rater/{r}")
            ids = [it["id"] for it in items]
            rng.shuffle(ids)
            con.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                            [(secrets.token_hex(16), r + 1, item, pos, sides[r][item - 1], secrets.token_hex(16))
                             for pos, item in enumerate(ids)])
    con.close()
    os.chmod(db_tmp, 0o600)  # holds the rater tokens
    os.replace(db_tmp, out / store.DB_NAME)
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": str(results.resolve()), "seed": seed, "raters": raters, "methods": order,
        "questions": QUESTIONS, "balance": balance(sides), "trials": trials, "items": items, "warnings": sorted(set(warnings)),
        "media": {name: str(src) for src, name in names.items()},
        "note": "Hidden mapping: never serve this file to raters. Answers live in study.sqlite.",
    }
    _write_private(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    _write_private(out / "links.txt", "".join(f"r{i + 1} /r/{t}\n" for i, t in enumerate(tokens)))
    return out


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
