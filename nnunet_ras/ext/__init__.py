"""Folders of the repository top level (trainers/, planners/), installed here for nnU-Net to scan."""
