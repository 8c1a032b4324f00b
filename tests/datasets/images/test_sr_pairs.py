"""datasets.images: bicubic LR, bundled split, folder readers, patches, atomic image writes."""

import pytest
import torch

from lowrank_vision.datasets.images import (
    BUNDLED_SPLIT,
    SRPatchDataset,
    bicubic_downsample,
    bundled_photos,
    load_eval_set,
    load_paired_folder,
    mod_crop,
    read_image,
    write_image,
)

torch.set_num_threads(1)


def test_bicubic_downsample_shape_and_quantization():
    hr = mod_crop(torch.rand(3, 50, 47), 4)
    assert hr.shape == (3, 48, 44)
    lr = bicubic_downsample(hr, 4)
    assert lr.shape == (3, 12, 11)
    assert torch.equal(lr, lr.mul(255).round().div(255))
    flat = torch.full((3, 16, 16), 0.5)
    assert torch.allclose(bicubic_downsample(flat, 2), torch.full((3, 8, 8), 128 / 255), atol=1 / 255)
    with pytest.raises(ValueError, match="mod_crop"):
        bicubic_downsample(torch.rand(3, 10, 10), 4)


def test_bundled_split_is_disjoint_and_real():
    assert not set(BUNDLED_SPLIT["eval"]) & set(BUNDLED_SPLIT["train"])
    assert not {v for v in BUNDLED_SPLIT["eval"].values()} & {v for v in BUNDLED_SPLIT["train"].values()}
    photos = bundled_photos("eval")
    assert [n for n, _ in photos] == ["astronaut", "chelsea", "coffee", "china", "flower"]
    shapes = {n: tuple(img.shape) for n, img in photos}
    assert shapes["astronaut"] == (3, 512, 512) and shapes["china"] == (3, 427, 640)
    # real photos: rich content, not a flat or generated pattern
    assert all(img.std().item() > 0.1 for _, img in photos)
    with pytest.raises(ValueError, match="split"):
        bundled_photos("test")


def test_eval_set_pairs_are_consistent():
    images = load_eval_set(None, 4)
    assert len(images) == 5
    for im in images:
        assert im.hr.shape[-2] == 4 * im.lr.shape[-2] and im.hr.shape[-1] == 4 * im.lr.shape[-1]


def test_patch_dataset_is_aligned_and_deterministic():
    torch.manual_seed(0)
    hr = torch.rand(3, 64, 80)
    ds = SRPatchDataset([("a", hr)], scale=2, lr_patch=8, length=5, augment=False, seed=1)
    lr_p, hr_p = ds[3]
    assert lr_p.shape == (3, 8, 8) and hr_p.shape == (3, 16, 16)
    assert torch.allclose(bicubic_downsample(hr_p, 2), lr_p, atol=0.2)  # same region (border effects aside)
    assert torch.equal(ds[3][0], SRPatchDataset([("a", hr)], 2, lr_patch=8, length=5, augment=False, seed=1)[3][0])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="lr_patch"):
        SRPatchDataset([("a", hr)], scale=2, lr_patch=64)


def test_paired_and_hr_folders(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR_bicubic" / "X2").mkdir(parents=True)
    for i in range(2):
        hr = torch.rand(3, 24, 20)
        write_image(hr, tmp_path / "HR" / f"{i:04d}.png")
        write_image(bicubic_downsample(read_image(tmp_path / "HR" / f"{i:04d}.png"), 2), tmp_path / "LR_bicubic" / "X2" / f"{i:04d}x2.png")
    pairs = load_paired_folder(tmp_path / "HR", tmp_path / "LR_bicubic" / "X2", 2)
    assert [p[0] for p in pairs] == ["0000", "0001"] and pairs[0][1].shape == (3, 12, 10)
    images = load_eval_set(str(tmp_path), 2)  # DIV2K layout is recognised
    assert len(images) == 2 and images[0].hr.shape == (3, 24, 20)
    images = load_eval_set(str(tmp_path / "HR"), 2)  # plain HR folder -> bicubic LR
    assert images[1].lr.shape == (3, 12, 10)
    with pytest.raises(NotADirectoryError):
        load_eval_set(str(tmp_path / "missing"), 2)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "bad.png")


def test_write_image_is_atomic(tmp_path, monkeypatch):
    from PIL import Image

    target = tmp_path / "out.png"
    write_image(torch.zeros(3, 8, 8), target)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_image(torch.ones(3, 8, 8), target)
    assert target.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temp file left behind
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        write_image(torch.zeros(4, 8, 8), tmp_path / "bad.png")
