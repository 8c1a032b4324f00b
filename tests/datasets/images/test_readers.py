"""datasets.images.readers: read_image_file / write_image_file keep grey, alpha and 16 bits exactly."""

import numpy as np
import pytest
import torch
from PIL import Image

from lowrank_vision.datasets.images import ImageFile, read_image, read_image_file, write_image_file
from lowrank_vision.datasets.images.readers import _png_16bit

RNG = np.random.default_rng(0)
U8 = RNG.integers(0, 256, (6, 5, 4)).astype(np.uint8)
U16 = RNG.integers(0, 65536, (6, 5, 4)).astype(np.uint16)

CASES = {  # name: (writer, grey, alpha, bits, expected samples [H, W, C])
    "L": (lambda p: Image.fromarray(U8[..., 0]).save(p), True, False, 8, U8[..., :1]),
    "LA": (lambda p: Image.fromarray(U8[..., :2], "LA").save(p), True, True, 8, U8[..., :2]),
    "RGB": (lambda p: Image.fromarray(U8[..., :3]).save(p), False, False, 8, U8[..., :3]),
    "RGBA": (lambda p: Image.fromarray(U8).save(p), False, True, 8, U8),
    "I;16": (lambda p: Image.fromarray(U16[..., 0]).save(p), True, False, 16, U16[..., :1]),
    "LA16": (lambda p: p.write_bytes(_png_16bit(U16[..., :2])), True, True, 16, U16[..., :2]),
    "RGB16": (lambda p: p.write_bytes(_png_16bit(U16[..., :3])), False, False, 16, U16[..., :3]),
    "RGBA16": (lambda p: p.write_bytes(_png_16bit(U16)), False, True, 16, U16),
}


def _samples(image: ImageFile) -> np.ndarray:
    top = 65535 if image.bits == 16 else 255
    planes = [image.rgb[:1] if image.grey else image.rgb] + ([image.alpha] if image.alpha is not None else [])
    return torch.cat(planes).mul(top).round().permute(1, 2, 0).numpy().astype(np.int64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_keeps_mode_and_values(tmp_path, name):
    writer, grey, alpha, bits, expected = CASES[name]
    writer(tmp_path / "in.png")
    image = read_image_file(tmp_path / "in.png")
    assert (image.grey, image.alpha is not None, image.bits) == (grey, alpha, bits)
    assert image.rgb.shape == (3, 6, 5) and np.array_equal(_samples(image), expected.astype(np.int64))
    if grey:
        assert torch.equal(image.rgb[0], image.rgb[2])
    assert torch.equal(read_image(tmp_path / "in.png"), image.rgb)  # the 3-channel reader gives the same colour
    write_image_file(image, tmp_path / "out.png")
    again = read_image_file(tmp_path / "out.png")
    assert (again.grey, again.alpha is not None, again.bits) == (grey, alpha, bits)
    assert np.array_equal(_samples(again), expected.astype(np.int64))


def test_write_errors_name_the_problem(tmp_path):
    rgb = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match="JPEG cannot hold an alpha"):
        write_image_file(ImageFile(rgb, alpha=torch.rand(1, 4, 4)), tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="JPEG cannot hold 16 bits"):
        write_image_file(ImageFile(rgb, bits=16), tmp_path / "a.jpeg")
    with pytest.raises(ValueError, match="alpha must be"):
        write_image_file(ImageFile(rgb, alpha=torch.rand(1, 3, 4)), tmp_path / "a.png")
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        write_image_file(ImageFile(rgb, bits=12), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []
