"""Data: synthetic HNTS-MRG-like cohorts, HNTS-MRG -> nnU-Net conversion, validation, dataset statistics.

Floor 2 of the package: imports only ``vadice.io`` and ``vadice.lesions`` (and libraries).
"""
