"""Tests for db3d/core/data.py: the dataset table, subject validation, image decoding, prompts."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db3d.core import data
from db3d.core.data import (
    DataError,
    check_data_main,
    check_prompt,
    find_dataset_root,
    format_prompt,
    inspect_subject,
    load_subject_images,
    make_synthetic_subject,
    read_dataset_table,
    resolve_subject,
)

DATASET = Path(os.environ.get("DB3D_DATASET", Path(__file__).parents[2].parent / "shared" / "dreambooth_dataset"))


@pytest.fixture
def dataset() -> Path:
    if not (DATASET / "prompts_and_classes.txt").is_file():
        pytest.skip(f"DreamBooth dataset not found at {DATASET} (set DB3D_DATASET)")
    return DATASET


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [h,w,3] random pixels (distinct per seed)."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_subject(folder: Path, n: int = 3, size: int = 32) -> Path:
    """A valid subject folder of n distinct PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(noise(size, size, seed=i)).save(folder / f"{i:02d}.png")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())}


def only_subject(folder: Path) -> data.Subject:
    files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    return data.Subject(folder.name, folder, "toy", files, False, data.DEFAULT_TEMPLATES)


# ----------------------------------------------------------------------------- the real dataset


def test_dataset_table(dataset):
    table = read_dataset_table(dataset)
    assert len(table.classes) == 26
    assert table.classes["dog"] == "dog"
    assert table.classes["bear_plushie"] == "stuffed animal"
    assert table.classes["backpack_dog"] == "backpack"
    assert table.classes["cat"] == "cat"
    assert table.classes["duck_toy"] == "toy"
    assert len(table.object_prompts) == 25 and len(table.live_prompts) == 25
    assert table.object_prompts[0] == "a {0} {1} in the jungle"
    assert table.live_prompts[-1] == "a cube shaped {0} {1}"
    assert "a {0} {1} wearing a santa hat" in table.live_prompts
    assert "a {0} {1} wearing a santa hat" not in table.object_prompts
    assert find_dataset_root(dataset / "dog") == dataset.absolute()


def test_dataset_subjects_resolve(dataset):
    table = read_dataset_table(dataset)
    folders = sorted(p.name for p in dataset.iterdir() if p.is_dir())
    assert folders == sorted(table.classes)
    for name in folders:
        subject = resolve_subject(name, data_root=str(dataset))
        assert subject.class_noun == table.classes[name]
        assert subject.live == (subject.class_noun in ("dog", "cat"))
        assert subject.templates == (table.live_prompts if subject.live else table.object_prompts)
        assert 4 <= len(subject.files) <= 6
    by_path = resolve_subject(str(dataset / "bear_plushie"))
    assert by_path.class_noun == "stuffed animal" and not by_path.live
    assert resolve_subject(str(dataset / "dog"), class_noun="puppy").class_noun == "puppy"


def test_load_real_images(dataset):
    subject = resolve_subject("cat", data_root=str(dataset))
    images, masks = load_subject_images(subject, 64)
    n = len(subject.files)
    assert images.shape == (n, 3, 64, 64) and masks.shape == (n, 1, 64, 64)
    assert str(images.dtype) == "torch.float32" and 0 <= images.min() and images.max() <= 1
    assert bool((masks == 1).all())


def test_check_data_on_dataset_root(dataset, capsys):
    before = snapshot(dataset / "dog")
    assert check_data_main([str(dataset)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in read_dataset_table(dataset).classes:
        assert any(line.startswith(f"{name}: ") for line in lines), name
    assert "bear_plushie: class=stuffed animal images=5 resolution=512x512" in out
    assert "PROBLEM" not in out
    assert snapshot(dataset / "dog") == before


# ----------------------------------------------------------------------------- malformed folders


def one_bad(tmp_path: Path, name: str, write) -> data.SubjectReport:
    """A folder of 3 good images plus `name` written by `write(path)`; returns its report."""
    folder = write_subject(tmp_path / "subj")
    write(folder / name)
    before = snapshot(folder)
    report = inspect_subject(folder, "toy")
    assert snapshot(folder) == before  # inspection never writes
    return report


def assert_names(report: data.SubjectReport, name: str, *words: str) -> str:
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert name in problem
    for word in words:
        assert word in problem.lower(), problem
    return problem


def test_zero_byte_file(tmp_path):
    report = one_bad(tmp_path, "empty.jpg", lambda p: p.write_bytes(b""))
    assert_names(report, "empty.jpg", "empty")


def test_text_file_with_image_extension(tmp_path):
    report = one_bad(tmp_path, "notes.jpg", lambda p: p.write_text("not a picture\n"))
    assert_names(report, "notes.jpg", "not an image")


def test_truncated_jpeg(tmp_path):
    def write(p):
        Image.fromarray(noise(128, 128, seed=9)).save(p, quality=95)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    report = one_bad(tmp_path, "cut.jpg", write)
    assert_names(report, "cut.jpg", "truncated")


def test_truncated_png(tmp_path):
    def write(p):
        Image.fromarray(noise(128, 128, seed=9)).save(p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    report = one_bad(tmp_path, "cut.png", write)
    assert_names(report, "cut.png", "cannot decode")


def test_decompression_bomb_own_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 40 * 40)
    report = one_bad(tmp_path, "big.png", lambda p: Image.fromarray(noise(41, 41, seed=7)).save(p))
    assert_names(report, "big.png", "decompression bomb")


@pytest.mark.parametrize("pil_limit", [1500, 800])  # 41*41 = 1681: PIL's warning, then its error
def test_decompression_bomb_pil_warning_and_error(tmp_path, monkeypatch, pil_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    folder = tmp_path / "subj"
    folder.mkdir()
    Image.fromarray(noise(41, 41, seed=7)).save(folder / "big.png")
    for i in range(3):
        Image.fromarray(noise(20, 20, seed=i)).save(folder / f"{i}.png")  # 400 pixels: fine
    assert_names(inspect_subject(folder, "toy"), "big.png", "decompression bomb")


def test_duplicate_pixels(tmp_path):
    folder = write_subject(tmp_path / "subj")
    Image.open(folder / "01.png").save(folder / "01_copy.png", compress_level=1)  # other bytes
    assert (folder / "01.png").read_bytes() != (folder / "01_copy.png").read_bytes()
    problem = assert_names(inspect_subject(folder, "toy"), "01_copy.png", "duplicate")
    assert "01.png" in problem.split("duplicate")[1]


def test_missing_and_empty_folders(tmp_path):
    missing = inspect_subject(tmp_path / "nope", "toy")
    assert_names(missing, "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert_names(inspect_subject(tmp_path / "empty", "toy"), "empty", "no image")


def test_image_counts(tmp_path):
    one = inspect_subject(write_subject(tmp_path / "one", n=1), "toy")
    assert_names(one, "one", "at least 2")
    two = inspect_subject(write_subject(tmp_path / "two", n=2), "toy")
    assert not two.problems and any("3-6" in w for w in two.warnings)
    seven = inspect_subject(write_subject(tmp_path / "seven", n=7), "toy")
    assert not seven.problems and any("3-6" in w for w in seven.warnings)
    four = inspect_subject(write_subject(tmp_path / "four", n=4, size=256), "toy")
    assert four.ok and four.warnings == () and four.resolutions == ((256, 256),)


def test_ignores_other_files_and_accepts_extension_case(tmp_path):
    folder = write_subject(tmp_path / "subj", n=2)
    Image.fromarray(noise(32, 32, seed=5)).save(folder / "UPPER.JPEG")
    Image.fromarray(noise(32, 32, seed=6)).save(folder / "pic.webp", lossless=True)
    (folder / "notes.txt").write_text("ignored")
    (folder / "mask.bmp").write_bytes(b"junk")
    (folder / ".hidden.jpg").write_bytes(b"junk")
    report = inspect_subject(folder, "toy")
    assert report.ok, report.problems
    assert [p.name for p in report.files] == ["00.png", "01.png", "UPPER.JPEG", "pic.webp"]


def test_inspection_does_not_modify(tmp_path):
    folder = write_subject(tmp_path / "subj", n=3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(noise(20, 40, seed=3)).save(folder / "rot.jpg", exif=exif)
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(folder / "alpha.png")
    before = snapshot(folder)
    inspect_subject(folder)
    load_subject_images(only_subject(folder), 16)
    check_data_main([str(folder)])
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- decoding images


def load_one(tmp_path: Path, name: str, write, resolution: int = 8):
    """Write one image, load it at `resolution`; returns numpy image [3,R,R] and mask [R,R]."""
    folder = tmp_path / "one" / name.replace(".", "_")
    folder.mkdir(parents=True)
    write(folder / name)
    images, masks = load_subject_images(only_subject(folder), resolution)
    return images[0].numpy(), masks[0, 0].numpy()


def test_exif_rotation_rotates(tmp_path):
    def write(p):  # stored 40 wide x 20 high: left half red, right half blue; orientation 6
        a = np.zeros((20, 40, 3), np.uint8)
        a[:, :20] = (255, 0, 0)
        a[:, 20:] = (0, 0, 255)
        exif = Image.Exif()
        exif[0x0112] = 6  # display rotated 90 degrees clockwise: left half -> top
        Image.fromarray(a).save(p, exif=exif, quality=95)

    img, _ = load_one(tmp_path, "rot.jpg", write)
    top, bottom = img[:, 1, 4], img[:, 6, 4]
    assert top[0] > 0.8 and top[2] < 0.2, top  # red on top after rotation
    assert bottom[2] > 0.8 and bottom[0] < 0.2, bottom
    assert inspect_subject(tmp_path / "one" / "rot_jpg", "toy").resolutions == ((20, 40),)


def test_alpha_becomes_mask_on_white(tmp_path):
    def write(p):  # left half opaque red, right half transparent green
        a = np.zeros((16, 16, 4), np.uint8)
        a[:, :8] = (255, 0, 0, 255)
        a[:, 8:] = (0, 255, 0, 0)
        Image.fromarray(a, "RGBA").save(p)

    img, mask = load_one(tmp_path, "rgba.png", write, resolution=16)
    assert np.allclose(img[:, :, :6], np.array([1, 0, 0])[:, None, None], atol=0.02)
    assert np.allclose(img[:, :, 10:], 1, atol=0.02)  # white background
    assert np.allclose(mask[:, :6], 1, atol=0.02) and np.allclose(mask[:, 10:], 0, atol=0.02)


def test_palette_and_la_transparency(tmp_path):
    def write_p(p):
        im = Image.new("P", (16, 16), 0)
        im.putpalette([0, 0, 255] + [0, 0, 0] * 255)  # index 0 blue, index 1 black
        im.paste(1, (8, 0, 16, 16))
        im.save(p, transparency=1)

    img, mask = load_one(tmp_path, "p.png", write_p, resolution=16)
    assert np.allclose(img[:, :, :6], np.array([0, 0, 1])[:, None, None], atol=0.02)
    assert np.allclose(img[:, :, 10:], 1, atol=0.02) and np.allclose(mask[:, 10:], 0, atol=0.02)
    la = Image.new("LA", (16, 16), (0, 0))
    la.save(tmp_path / "la.png")
    la_subject = data.Subject("la", tmp_path, "toy", (tmp_path / "la.png",), False, ())
    images, masks = load_subject_images(la_subject, 8)
    assert np.allclose(images.numpy(), 1, atol=0.02) and np.allclose(masks.numpy(), 0, atol=0.02)


def test_sixteen_bit_scales_not_clips(tmp_path):
    def write(p):  # left half 65535, right half 32768 (half grey)
        a = np.full((16, 16), 32768, np.uint16)
        a[:, :8] = 65535
        Image.fromarray(a).save(p)

    img, mask = load_one(tmp_path, "deep.png", write, resolution=16)
    assert Image.open(tmp_path / "one" / "deep_png" / "deep.png").mode.startswith("I")
    assert np.allclose(img[:, :, :6], 1, atol=0.01)
    assert np.allclose(img[:, :, 10:], 0.5, atol=0.01)  # clipping would give 1.0
    assert np.allclose(mask, 1)


def test_cmyk_and_grayscale_convert(tmp_path):
    cmyk, _ = load_one(tmp_path, "cmyk.jpg", lambda p: Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(p))
    assert np.allclose(cmyk, np.array([1, 0, 0])[:, None, None], atol=0.05)  # red
    gray, _ = load_one(tmp_path, "gray.png", lambda p: Image.new("L", (16, 16), 128).save(p))
    assert gray.shape == (3, 8, 8) and np.allclose(gray, 128 / 255, atol=0.01)
    bits, _ = load_one(tmp_path, "bits.png", lambda p: Image.new("1", (16, 16), 1).save(p))
    assert np.allclose(bits, 1, atol=0.01)


def test_non_square_centre_crop(tmp_path):
    def write(p):  # 60 wide x 20 high: red | green | blue stripes, 20 pixels each
        a = np.zeros((20, 60, 3), np.uint8)
        a[:, :20], a[:, 20:40], a[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
        Image.fromarray(a).save(p)

    img, _ = load_one(tmp_path, "wide.png", write)
    assert np.allclose(img, np.array([0, 1, 0])[:, None, None], atol=0.02)  # only the green middle
    report = inspect_subject(tmp_path / "one" / "wide_png", "toy")
    assert any("wide.png" in w and "centre-cropped" in w for w in report.warnings)


def test_load_raises_on_bad_file(tmp_path):
    (tmp_path / "bad.png").write_text("text")
    with pytest.raises(DataError, match="bad.png"):
        load_subject_images(only_subject(tmp_path), 8)


# ----------------------------------------------------------------------------- resolve_subject


def test_resolve_subject_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        resolve_subject("ghost", data_root=str(tmp_path))
    folder = write_subject(tmp_path / "subj")
    with pytest.raises(DataError, match="no class noun"):
        resolve_subject(str(folder))
    (folder / "broken.jpg").write_bytes(b"")
    (folder / "02.png").unlink()
    with pytest.raises(DataError) as info:
        resolve_subject("subj", data_root=str(tmp_path))
    text = str(info.value)
    assert "broken.jpg" in text and "no class noun" in text and len(info.value.problems) == 2
    assert text.splitlines() == info.value.problems


def test_resolve_subject_without_table(tmp_path):
    folder = write_subject(tmp_path / "subj")
    subject = resolve_subject(str(folder), class_noun="dog")
    assert subject.live and subject.class_noun == "dog"
    assert subject.templates == data.DEFAULT_TEMPLATES and 3 <= len(subject.templates) <= 5
    for template in subject.templates:
        check_prompt(format_prompt(template, "sks", "dog"), "sks")
    assert subject.files == tuple(sorted(folder.iterdir()))


def test_malformed_table(tmp_path):
    root = tmp_path / "root"
    write_subject(root / "subj")
    (root / "prompts_and_classes.txt").write_text(
        "Classes\n\nsubject_name,class\nsubj\n\nPrompts\n\nObject Prompts\n\nprompt_list = [\n"
        "'a {0} {1} in the jungle'.format(unique_token, class_token),\n]\n")
    with pytest.raises(DataError) as info:
        read_dataset_table(root)
    assert all("prompts_and_classes.txt" in p for p in info.value.problems)
    assert any(":4:" in p for p in info.value.problems)  # the bad class row, by line
    assert any("live subject prompts" in p for p in info.value.problems)
    with pytest.raises(DataError, match="prompts_and_classes.txt"):
        resolve_subject("subj", data_root=str(root), class_noun="toy")


def test_small_table_layout(tmp_path):
    root = tmp_path / "root"
    write_subject(root / "kitty")
    write_subject(root / "mug")
    (root / "prompts_and_classes.txt").write_text(
        "Classes\n\nsubject_name,class\nkitty,cat\nmug,cup\n\nPrompts\n\nObject Prompts\n\n"
        "prompt_list = [\n'a {0} {1} on a table'.format(unique_token, class_token)\n]\n\n"
        "Live Subject Prompts\n\nprompt_list = [\n"
        "\"a {0} {1} asleep\".format(unique_token, class_token),\n]\n")
    assert resolve_subject("kitty", data_root=str(root)).templates == ("a {0} {1} asleep",)
    mug = resolve_subject(str(root / "mug"))
    assert mug.class_noun == "cup" and mug.templates == ("a {0} {1} on a table",)


# ----------------------------------------------------------------------------- prompts


def test_check_prompt():
    check_prompt("a sks dog in the snow", "sks")
    check_prompt("sks, a dog", "sks")
    check_prompt("a photo of sks's dog", "sks")
    for bad in ("a sksdog in the snow", "a dog", "a xsks dog", "a sks_dog"):
        with pytest.raises(DataError, match="sks"):
            check_prompt(bad, "sks")
    with pytest.raises(DataError):
        check_prompt("a  dog", "")


def test_format_prompt():
    assert format_prompt("a {0} {1} in the jungle", "sks", "stuffed animal") == \
        "a sks stuffed animal in the jungle"
    with pytest.raises(DataError, match="template"):
        format_prompt("a {2} dog", "sks", "dog")
    with pytest.raises(DataError, match="whole word"):
        format_prompt("a {0}{1}", "sks", "dog")


# ----------------------------------------------------------------------------- synthetic subject, CLI


def test_synthetic_subject_deterministic_and_valid(tmp_path):
    a = make_synthetic_subject(tmp_path / "a", n_images=4, seed=3, size=64)
    b = make_synthetic_subject(tmp_path / "b", n_images=4, seed=3, size=64)
    c = make_synthetic_subject(tmp_path / "c", n_images=4, seed=4, size=64)
    assert a == tmp_path / "a"
    names = sorted(p.name for p in a.iterdir())
    assert names == ["00.png", "01.png", "02.png", "03.png"]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert any((a / n).read_bytes() != (c / n).read_bytes() for n in names)
    report = inspect_subject(a, data.SYNTHETIC_CLASS_NOUN)
    assert report.ok and report.resolutions == ((64, 64),)
    subject = resolve_subject(str(a), class_noun=data.SYNTHETIC_CLASS_NOUN)
    images, masks = load_subject_images(subject, 32)
    assert images.shape == (4, 3, 32, 32)
    corner = images[:, :, 0, 0]
    assert bool((corner > 0.99).all())  # white background
    red = (images[:, 0] > 0.5) & (images[:, 1] < 0.3)  # [4,32,32]: the ball is in every view
    assert bool(red.flatten(1).any(1).all())


def test_check_data_main_bad_folder(tmp_path, capsys):
    folder = write_subject(tmp_path / "subj")
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    assert check_data_main([str(folder)]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    problems = [line for line in text.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2
    assert any("subj" in p and "zero.jpg" in p for p in problems)
    assert any("subj" in p and "text.png" in p for p in problems)
    assert check_data_main([str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_check_data_main_plain_root(tmp_path, capsys):
    write_subject(tmp_path / "a")
    write_subject(tmp_path / "b")
    assert check_data_main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("a: class=? images=3") and lines[1].startswith("b: ")
    assert check_data_main([]) == 1
