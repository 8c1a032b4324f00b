"""Head CT: readers of NIfTI image/mask folders and DICOM series, HU windowing (:mod:`.readers`),
and the deterministic synthetic TBI/SAH generator of the embedded default (:mod:`.synthetic`).

Nothing is imported here: ``from lowrank_vision.datasets.ct.readers import ...``.
"""
