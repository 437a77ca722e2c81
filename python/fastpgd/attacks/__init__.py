"""The attacks, one per module.

- :mod:`fastpgd.attacks.pgd`: :func:`fused_pgd` and its reference :func:`reference_pgd`
  (Madry et al.), with the random start and the per-sample broadcast they share.
- :mod:`fastpgd.attacks.graph`: the captured attack step behind ``cuda_graph=True`` and its cache.
- :mod:`fastpgd.attacks.classes`: torchattacks-style attack objects (``PGD``, ``PGDL2``).
- :mod:`fastpgd.attacks.fab`: :func:`fab`, FAB and FAB-T (Croce & Hein), Linf and L2.
- :mod:`fastpgd.attacks.square`: :func:`square`, the Square attack (Andriushchenko et al.),
  Linf and L2, forward passes only.
- :mod:`fastpgd.attacks._common`: the argument checks every attack shares.
"""

from fastpgd.attacks.classes import PGD, PGDL2
from fastpgd.attacks.fab import fab
from fastpgd.attacks.pgd import fused_pgd, per_sample_view, random_delta, reference_pgd
from fastpgd.attacks.square import square

__all__ = [
    "PGD",
    "PGDL2",
    "fab",
    "fused_pgd",
    "per_sample_view",
    "random_delta",
    "reference_pgd",
    "square",
]
