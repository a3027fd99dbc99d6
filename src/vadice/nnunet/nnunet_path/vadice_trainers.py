"""vadice's nnU-Net trainers, for nnU-Net's ``nnUNet_extTrainer`` lookup.

nnU-Net imports this file as a top-level module and takes the class by name.
The classes are re-exported from :mod:`vadice.nnunet.trainers` and
:mod:`vadice.nnunet.comparator_trainers`, so every
process gets the same class objects (which pickle by their real module path),
never duplicates made by importing vadice's modules under other names.
"""

from vadice.nnunet.comparator_trainers import (  # noqa: F401
    nnUNetTrainerBlob,
    nnUNetTrainerCATMIL,
    nnUNetTrainerCCDiceCE,
)
from vadice.nnunet.trainers import (  # noqa: F401
    nnUNetTrainerBudget,
    nnUNetTrainerVA,
    nnUNetTrainerVADual,
    nnUNetTrainerVADualFP,
    nnUNetTrainerVASelectiveLN,
)
