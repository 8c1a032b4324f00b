"""datasets.images.catalogue: licences for every file, finding photos under a root, make-data's three
disjoint sets, and the refusal of an image set that overlaps the evaluation set (also through the app)."""

import json
import zlib

import numpy as np
import pytest
from PIL import Image

from lowrank_vision.datasets.images import bundled_photos
from lowrank_vision.datasets.images.catalogue import (
    CATALOGUE,
    ENDLESS_SKY_LICENCES,
    build_sr_data,
    check_disjoint,
    find_photos,
    fingerprint,
    is_validation,
)

RNG = np.random.default_rng(0)


def _photo_like(path, w, h, seed):
    """A smooth random picture (distinct per seed), saved as a JPEG/PNG by its suffix."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture()
def fake_root(tmp_path):
    """The catalogue's Debian sources unpacked under a folder (tiny stand-in pictures, real file names):
    endless-sky names chosen so that two are validation files."""
    root = tmp_path / "root"
    by_name = {s.name: s for s in CATALOGUE}
    land = root / by_name["endless-sky"].directory.lstrip("/")
    stems = ["badlands0", "beach2", "city4", "fog0", "sky3", "snow1", "water0", "canyon7", "forest1", "mountain3"]
    names = [f"{s}@2x.jpg" for s in stems]
    val = [n for n in names if is_validation(f"endless-sky__{n.replace('@2x.jpg', '')}")]
    assert 0 < len(val) < len(names)
    for i, name in enumerate(names):
        _photo_like(land / name, 160, 80, seed=i)
    seed = 100
    for source in CATALOGUE:
        if source.registry == "debian" and source.role == "eval":
            for name in source.globs:
                _photo_like(root / source.directory.lstrip("/") / name, 120, 80, seed=seed)
                seed += 1
    return root, len(names), len(val)


def test_every_file_has_a_licence_and_no_opencv_images():
    packages = {s.role: set() for s in CATALOGUE}
    for source in CATALOGUE:
        packages[source.role].add(source.package)
        assert "opencv" not in source.package.lower() and "cv2" not in source.directory
        for name in source.globs:
            if "*" not in name:
                assert source.licence_of(name)
    assert not packages["train"] & packages["eval"]  # disjoint by source
    licence = dict(ENDLESS_SKY_LICENCES)
    assert licence["bwerner*"].startswith("CC-BY-SA-3.0")
    source = next(s for s in CATALOGUE if s.name == "endless-sky")
    assert source.licence_of("beach2@2x.jpg") == "public domain; unsplash.com"
    assert source.licence_of("mountain11-sfiera@2x.jpg") == "CC-BY-SA-4.0; Chris Pickel"
    assert source.licence_of("nasa3@2x.jpg") == "public domain; NASA"
    assert source.licence_of("canyon3@2x.jpg") == "public domain; morgue-file.com donors"
    assert is_validation("x") == (zlib.crc32(b"x") % 10 == 0)


def test_missing_package_names_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install endless-sky-high-dpi"):
        find_photos(CATALOGUE[:1], roots=[tmp_path])


def test_make_data_writes_three_disjoint_sets(fake_root, tmp_path):
    root, n_land, n_val = fake_root
    summary = build_sr_data(tmp_path / "data", roots=[root], crop=32)
    n_eval = sum(len(s.globs) for s in CATALOGUE if s.role == "eval")
    assert summary["counts"] == {"train": n_land - n_val, "val": n_val, "eval": n_eval}
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    files = {r["file"]: r for r in manifest["files"]}
    assert len(files) == n_land + n_eval
    for kind, count in summary["counts"].items():
        written = sorted((tmp_path / "data" / kind).iterdir())
        assert len(written) == count
        for path in written:
            record = files[f"{kind}/{path.name}"]
            assert record["licence"] and record["version"] and len(record["sha256"]) == 64
            with Image.open(path) as im:
                assert list(im.size) == record["size"]
                if kind == "train":
                    assert im.size == (32, 32)  # /2 down-scaled 80x40, 32x32 window
    # no training or validation source is an evaluation source; the validation files are the held-out ones
    assert {r["source"] for r in files.values() if r["set"] != "eval"} == {"endless-sky"}
    assert "endless-sky" not in {r["source"] for r in files.values() if r["set"] == "eval"}
    assert (tmp_path / "data" / "LICENSES.md").read_text().count("| ") >= n_land + n_eval
    # astronaut (scikit-image) is in the evaluation set as shipped
    with Image.open(tmp_path / "data" / "eval" / "skimage__astronaut.webp") as im:
        assert im.size == (512, 512)


def test_make_data_refuses_images_that_overlap_the_evaluation_set(fake_root, tmp_path):
    root, _, _ = fake_root
    own = tmp_path / "own"
    for i in range(3):
        _photo_like(own / f"mine{i}.png", 96, 96, seed=50 + i)
    _, astronaut = bundled_photos("eval")[0]
    arr = (astronaut.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).resize((300, 300), Image.LANCZOS).save(own / "resized_copy.jpg", quality=80)  # resized + re-encoded
    with pytest.raises(ValueError, match="resized_copy.jpg is the same picture as evaluation image .*astronaut.png"):
        build_sr_data(tmp_path / "data", roots=[root], images=own, crop=32)
    assert not (tmp_path / "data").exists()  # nothing written
    (own / "resized_copy.jpg").unlink()
    wallpaper = next(root.rglob("LadyBird.jpg"))
    (own / "copy.jpg").write_bytes(wallpaper.read_bytes())  # the very file
    with pytest.raises(ValueError, match="copy.jpg is the same file as evaluation image .*LadyBird.jpg"):
        build_sr_data(tmp_path / "data", roots=[root], images=own, crop=32)
    (own / "copy.jpg").unlink()
    summary = build_sr_data(tmp_path / "data", roots=[root], images=own, crop=32)
    assert summary["counts"]["train"] + summary["counts"]["val"] == 3 and summary["counts"]["val"] >= 1
    assert summary["train_from"] == str(own)


def test_fingerprint_tells_different_pictures_apart(tmp_path):
    a = fingerprint(_photo_like(tmp_path / "a.png", 64, 64, seed=1))
    b = fingerprint(_photo_like(tmp_path / "b.png", 64, 64, seed=2))
    a_small = fingerprint(_photo_like(tmp_path / "a_small.png", 64, 64, seed=1).rename(tmp_path / "c.png"))
    assert a.same_picture(a_small) and not a.same_picture(b)
    with pytest.raises(ValueError, match="cannot read image"):
        (tmp_path / "bad.png").write_bytes(b"nope")
        check_disjoint([tmp_path / "bad.png"], [tmp_path / "b.png"])


def test_app_make_data_refuses_overlap_in_one_line(fake_root, tmp_path, capsys):
    from lowrank_vision.apps.sr import main

    root, _, _ = fake_root
    own = tmp_path / "own"
    own.mkdir()
    (own / "lady.jpg").write_bytes(next(root.rglob("LadyBird.jpg")).read_bytes())
    argv = ["make-data", "--root", str(root), "--images", str(own), "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowrank-sr make-data: error:") and "overlaps the evaluation set" in err[0]
    assert main(["make-data", "--root", str(root), "--crop", "32", "--out", str(tmp_path / "d")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["train"] > 0 and (tmp_path / "d" / "manifest.json").is_file()


def _plasma_root(root):
    """plasma-workspace-wallpapers' photographs unpacked under ``root`` (stand-ins, real layout and names), 256x160 each."""
    source = next(s for s in CATALOGUE if s.name == "plasma")
    for i, pattern in enumerate(source.globs):
        _photo_like(root / source.directory.lstrip("/") / pattern, 256, 160, seed=300 + i)
    return source


def test_extra_training_source_adds_grid_windows_of_its_photos(fake_root, tmp_path):
    root, n_land, n_val = fake_root
    source = _plasma_root(root)
    n_plasma = len(source.globs)
    plasma_val = [name for name in (g.split("/")[0] for g in source.globs) if is_validation(f"plasma__{name}")]
    assert plasma_val == ["FallenLeaf"]
    summary = build_sr_data(tmp_path / "data", roots=[root], crop=32, extra_train=["plasma"])
    # each training photo: /2 -> 128x80, a 4x2 grid of 32-px windows (centred), the 6 most textured of them
    assert summary["counts"]["train"] == (n_land - n_val) + (n_plasma - 1) * source.crops
    assert summary["counts"]["val"] == n_val + 1
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    plasma = [r for r in manifest["files"] if r["source"] == "plasma"]
    assert {r["file"] for r in plasma if r["set"] == "val"} == {"val/plasma__FallenLeaf.webp"}
    kite = sorted(r["file"] for r in plasma if "Kite" in r["file"])
    assert kite == [f"train/plasma__Kite_{i}.webp" for i in range(6)]
    assert {r["licence"] for r in plasma if "Kite" in r["file"]} == {"LGPL-3.0 (metadata.json; debian/copyright: GPL-2+, KDE Visual Design Group); Risto Saukonpää"}
    corners = {r["processing"].rsplit(" at ", 1)[1] for r in plasma if "Kite" in r["file"]}
    assert len(corners) == 6 and corners <= {f"({x}, {y})" for x in (0, 32, 64, 96) for y in (8, 40)}
    assert "plasma" in {s["name"] for s in summary["sources"]}
    # without extra_train the plasma photos are neither needed nor used
    plain = build_sr_data(tmp_path / "plain", roots=[root], crop=32)
    assert plain["counts"]["train"] == n_land - n_val and "plasma" not in {s["name"] for s in plain["sources"]}


def test_extra_training_source_is_checked(fake_root, tmp_path):
    root, _, _ = fake_root
    with pytest.raises(ValueError, match=r"extra_train: unknown source\(s\) \['lomiri-16.04'\]; expected some of \['plasma'\]"):
        build_sr_data(tmp_path / "data", roots=[root], crop=32, extra_train=["lomiri-16.04"])
    with pytest.raises(FileNotFoundError, match="apt-get install plasma-workspace-wallpapers"):
        build_sr_data(tmp_path / "data", roots=[root], crop=32, extra_train=["plasma"])  # not unpacked under root
    with pytest.raises(ValueError, match="not with images"):
        build_sr_data(tmp_path / "data", roots=[root], images=tmp_path, crop=32, extra_train=["plasma"])
    assert not (tmp_path / "data").exists()


def test_grid_windows_are_the_most_textured_first():
    from lowrank_vision.datasets.images.catalogue import _grid_windows

    arr = np.zeros((70, 100, 3), np.uint8)  # 2x3 grid of 32-px windows, centred: rows at 3, 35; columns at 2, 34, 66
    arr[35:67, 66:98] = RNG.integers(0, 256, (32, 32, 3))  # the most textured window
    arr[3:35, 2:34] = RNG.integers(0, 64, (32, 32, 3))  # the second
    assert _grid_windows(arr, 32, 2) == [(35, 66), (3, 2)]
    assert len(_grid_windows(arr, 32, 10)) == 6  # fewer windows than asked: all of them


def test_app_make_data_refuses_an_unknown_extra_source(tmp_path, capsys):
    from lowrank_vision.apps.sr import main

    assert main(["make-data", "--extra-train", "nope", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "extra_train: unknown source(s) ['nope']; expected some of ['plasma']" in err[0]
    assert not (tmp_path / "d").exists()
