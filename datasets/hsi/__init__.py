"""Hyperspectral cubes: the in-memory cube, readers/writers of real formats, leak-free splits, the synthetic default.

* :mod:`.cube`      ``HSICube`` (``data[H, W, B]``, labels, wavelengths, georeferencing)
* :mod:`.io`        ``.mat`` (Indian Pines layout), ENVI ``.hdr``, GeoTIFF via rasterio
* :mod:`.split`     split protocols (class-stratified regions, checkerboard, masks), train-only PCA / MNF, patches
* :mod:`.synthetic` the deterministic synthetic scene with ground truth (the embedded default)

Importing this package loads numpy only; scipy, rasterio and torch load with the modules that need them.
"""

from .cube import HSICube

__all__ = ["HSICube"]
