"""RGB+IR (multispectral) detection data: synthetic scenes, paired RGB/IR folder readers, YOLO label checks."""

from .labels import LabelError, read_yolo_labels, validate_dataset
from .synthetic import CLASS_NAMES, SyntheticConfig, render_scene, write_dataset

__all__ = ["SyntheticConfig", "CLASS_NAMES", "render_scene", "write_dataset", "LabelError", "read_yolo_labels", "validate_dataset"]
