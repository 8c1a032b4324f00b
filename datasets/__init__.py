"""Readers for the formats users have (NIfTI/DICOM, ENVI/GeoTIFF/.mat cubes, image folders) and
deterministic generators of the small embedded defaults. Host libraries are imported lazily."""
