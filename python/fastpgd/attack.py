"""Where :func:`fused_pgd` and :func:`reference_pgd` were imported from before the attacks moved
to :mod:`fastpgd.attacks`; imports written that way keep working."""

from fastpgd.attacks.pgd import fused_pgd, per_sample_view, random_delta, reference_pgd

__all__ = ["fused_pgd", "per_sample_view", "random_delta", "reference_pgd"]
