"""The folder ``vadice nnunet-path`` prints, for nnU-Net's ``nnUNet_extTrainer`` (see vadice_trainers.py)."""
