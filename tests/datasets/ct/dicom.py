"""Test support: write an axial CT series with pydicom (the DICOM reader's and predict's tests build their input with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ct_series(folder: Path, stored: np.ndarray, pixel_spacing, thickness: float, positions, orientation) -> Path:
    """One file per slice of ``stored`` ``[slice, row, column]`` (int16 stored values; HU = stored - 1024) with
    ``PixelSpacing`` ``[between rows, between columns]``, ``ImagePositionPatient`` ``positions[k]`` and
    ``ImageOrientationPatient`` ``orientation`` (LPS); returns ``folder``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    for k, plane in enumerate(np.asarray(stored, dtype=np.int16)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"s{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
        ds.Rows, ds.Columns, ds.InstanceNumber = plane.shape[0], plane.shape[1], k + 1
        ds.PixelSpacing, ds.SliceThickness = list(pixel_spacing), thickness
        ds.ImagePositionPatient, ds.ImageOrientationPatient = list(positions[k]), list(orientation)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        ds.save_as(str(path), enforce_file_format=True)
    return folder
