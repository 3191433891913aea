"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531).

The loss is defined once in the harness (``kdbench.losses``) because any method can be combined
with it (``kdbench reproduce <paper>+kd``); this module is the paper's name for it.
"""
from kdbench.losses import kd_loss

__all__ = ["kd_loss"]
