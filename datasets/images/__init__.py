"""Images (super-resolution): image files, the bundled real photos and their fixed split, SR pairs.

``readers``: read/write image files, folders, :func:`bundled_photos`; ``sr_pairs``: bicubic
degradation, paired folders, evaluation sets and the random-patch training dataset.
"""

from .readers import (
    BUNDLED_SPLIT, IMAGE_SUFFIXES, ImageFile, bundled_photos, image_files, load_hr_folder, read_image, read_image_file, write_image,
    write_image_file,
)
from .sr_pairs import SRImage, SRPatchDataset, bicubic_downsample, bicubic_upsample, load_eval_set, load_paired_folder, mod_crop

__all__ = [
    "IMAGE_SUFFIXES", "BUNDLED_SPLIT", "ImageFile", "read_image", "write_image", "read_image_file", "write_image_file", "bundled_photos", "image_files", "load_hr_folder",
    "SRImage", "mod_crop", "bicubic_downsample", "bicubic_upsample", "load_paired_folder", "load_eval_set", "SRPatchDataset",
]
