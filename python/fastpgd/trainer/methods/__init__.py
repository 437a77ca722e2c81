"""Training methods, one per module, behind one interface (:class:`Method`) the trainer calls.

============  =========================================================================
``pgd``       Madry et al. 2018: PGD examples (:mod:`~fastpgd.trainer.methods.pgd`)
``fgsm-rs``   Wong et al. 2020: FGSM from a random start (:func:`fgsm_rs`)
``n-fgsm``    de Jorge et al. 2022: FGSM from strong noise, not projected (:func:`n_fgsm`)
``free``      Shafahi et al. 2019: each batch trained m times (:mod:`~.free`)
``replay``    PGD warm-started from a per-example replay memory (:mod:`~.replay`)
``pgi``       Jia et al. 2022: FGSM from a per-example prior with momentum (:func:`pgi_examples`)
``trades``    Zhang et al. 2019: the KL-regularised objective (:func:`trades_loss`)
============  =========================================================================

The functions are there for users' own loops; the classes are what ``fastpgd train --method``
runs.
"""

from fastpgd.trainer.methods.base import Batch, Method, MethodContext, input_gradient
from fastpgd.trainer.methods.fgsm_rs import FGSMRSMethod, fgsm_rs
from fastpgd.trainer.methods.free import FreeMethod
from fastpgd.trainer.methods.n_fgsm import NFGSMMethod, n_fgsm
from fastpgd.trainer.methods.pgd import PGDMethod
from fastpgd.trainer.methods.pgi import PGIMemory, PGIMethod, pgi_examples, pgi_regulariser
from fastpgd.trainer.methods.replay import ReplayMethod
from fastpgd.trainer.methods.trades import TRADESMethod, trades_attack, trades_loss

__all__ = [
    "METHOD_CLASSES",
    "Batch",
    "Method",
    "MethodContext",
    "PGIMemory",
    "fgsm_rs",
    "input_gradient",
    "n_fgsm",
    "pgi_examples",
    "pgi_regulariser",
    "trades_attack",
    "trades_loss",
]

#: ``TrainConfig.method`` -> the class that runs it.
METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        PGDMethod,
        FGSMRSMethod,
        NFGSMMethod,
        FreeMethod,
        ReplayMethod,
        PGIMethod,
        TRADESMethod,
    )  # fmt: skip
}
