"""DICOM at the edge: MR series in, RTSTRUCT and DICOM SEG out, RTSTRUCT import, the challenge's .mha container.

Nothing here imports nnU-Net; the command line composes prediction with these readers and writers.
Modules: ``series`` (read an MR series), ``rtstruct`` (write and import RTSTRUCT), ``seg`` (DICOM SEG via
highdicom), ``staging`` (``vadice predict``'s NIfTI, .mha or DICOM input as NIfTI files), ``export`` (a
label map back as RTSTRUCT/SEG, existing files refused), ``container`` (HNTS-MRG grand-challenge .mha layout).
"""
