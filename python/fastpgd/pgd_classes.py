"""Where ``PGD`` and ``PGDL2`` were imported from before the attacks moved to
:mod:`fastpgd.attacks`; imports written that way keep working."""

from fastpgd.attacks.classes import PGD, PGDL2

__all__ = ["PGD", "PGDL2"]
