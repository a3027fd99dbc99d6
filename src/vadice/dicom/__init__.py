"""DICOM at the edge: MR series in, RTSTRUCT and DICOM SEG out, RTSTRUCT import, the challenge's .mha container.

Nothing here imports nnU-Net; the command line composes prediction with these readers and writers.
Modules: ``series`` (read an MR series), ``rtstruct`` (write and import RTSTRUCT), ``seg`` (DICOM SEG via
highdicom), ``container`` (HNTS-MRG grand-challenge .mha layout).
"""
