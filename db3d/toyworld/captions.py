"""ToyWorld's language: the caption vocabulary, object captions and view-dependent captions.

Captions name every part, top first for stacks and left to right (seen from the front) for
side-by-side pairs::

    single   "a red ball"
    stack    "a red ball on a blue box"            "a red ball on a green cylinder on a blue box"
    side     "a red ball next to a green cone"     "an orange cone next to a black box"

The front feature (a decal marking the object's front) is deliberately *not* in the vocabulary:
subjects differ from world objects by exactly such details. View words come from db3d's
view-dependent prompting (``db3d.core.cameras.view_direction_suffix``), appended with
``db3d.core.cameras.view_prompt``: ``"a red ball on a blue box, back view"``.
"""

from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor

from db3d.core.cameras import CameraBatch, view_direction_suffix, view_prompt

Kind = Literal["ball", "box", "cylinder", "cone"]
Layout = Literal["single", "stack", "side"]

KINDS: tuple[Kind, ...] = ("ball", "box", "cylinder", "cone")
# colours a part may have; white is kept for decals only (a white part vanishes on the white
# background)
PART_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "black")
# every colour word (parts and decals)
COLOURS: tuple[str, ...] = PART_COLOURS + ("white",)
LAYOUTS: tuple[Layout, ...] = ("single", "stack", "side")
# the view words of db3d.core.cameras.view_direction_suffix
VIEW_WORDS: tuple[str, ...] = ("front view", "side view", "back view", "overhead view")


def part_phrase(colour: str, kind: str) -> str:
    """``"a red ball"``, ``"an orange cone"``."""
    if colour not in COLOURS or kind not in KINDS:
        raise ValueError(f"not in the ToyWorld vocabulary: {colour!r} {kind!r}")
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {kind}"


def object_caption(layout: Layout, parts: Sequence[tuple[str, str]]) -> str:
    """Caption of an object from its layout and ``(colour, kind)`` parts.

    ``parts`` are ordered as the object stores its primitives: bottom to top for a stack, left
    to right (image left seen from the front, i.e. -y first) for a side-by-side pair.
    """
    phrases = [part_phrase(c, k) for c, k in parts]
    if layout == "single" and len(phrases) == 1:
        return phrases[0]
    if layout == "stack" and len(phrases) in (2, 3):
        return " on ".join(reversed(phrases))  # top first
    if layout == "side" and len(phrases) == 2:
        return " next to ".join(phrases)
    raise ValueError(f"layout {layout!r} cannot have {len(phrases)} parts")


def view_captions(
    caption: str,
    azimuth_deg: Tensor | Sequence[float] | float,  # (B,)
    elevation_deg: Tensor | Sequence[float] | float,  # (B,)
) -> list[str]:
    """``"{caption}, {front|side|back|overhead} view"`` per camera (DreamFusion's rule)."""
    return [view_prompt(caption, s) for s in view_direction_suffix(azimuth_deg, elevation_deg)]


def camera_captions(caption: str, cams: CameraBatch) -> list[str]:
    """``view_captions`` for every camera of a batch."""
    return view_captions(caption, cams.azimuth_deg.cpu(), cams.elevation_deg.cpu())


def vocabulary() -> list[str]:
    """Every word a ToyWorld caption (with its view words) can use, sorted."""
    words = {"a", "an", "on", "next", "to", "view"} | set(KINDS) | set(COLOURS)
    words |= {w.split()[0] for w in VIEW_WORDS}
    return sorted(words)


PRIOR_EXTRA_WORDS = ("toy",)  # the subjects' class noun


def prior_words() -> list[str]:
    """The words the ToyWorld prior's tokenizer keeps whole: the vocabulary and the class noun."""
    return sorted(set(vocabulary()) | set(PRIOR_EXTRA_WORDS))
