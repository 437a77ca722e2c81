"""Replay memory: one stored adversarial perturbation per training example, across epochs.

PGD spends most of an adversarial-training step. A perturbation found for an example in one
epoch is a good start for the attack on the same example in the next one (the model has moved
little), so a few steps from the stored point reach about the strength of many steps from a
random one. This is the accumulation of perturbations of Zheng et al., "Efficient Adversarial
Training with Transferable Adversarial Examples" (ATTA), CVPR 2020; :class:`ReplayMemory` holds
the perturbations, keyed by the example's index in the training set.
"""

from __future__ import annotations

import math
import numbers

import torch

from fastpgd.attacks._common import check_count

__all__ = ["ReplayMemory"]

_LOCATIONS = ("device", "pinned")
_STORAGE_NAMES = {"float16": torch.float16, "int8": torch.int8}
_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT8_LEVELS = 127  # symmetric: q in [-127, 127], so -eps and +eps are both exact
# What state_dict() writes and load_state_dict() needs.
_STATE_KEYS = ("size", "shape", "eps", "storage_dtype", "reset_every", "epoch", "resets", "data",
               "written")  # fmt: skip


class ReplayMemory:
    """One perturbation per training example, gathered and scattered a batch at a time.

    Entries are keyed by the example's index in the training set. An entry that was never
    written (or was reset) is *fresh*: :meth:`gather` returns zeros for it and :meth:`fresh`
    reports it, so that the caller can give it a random start (the trainer draws one and
    attacks it with the full number of steps).

    Storage and its cost:

    - ``dtype="input"``: the input dtype, exact.
    - ``dtype="float16"``: half the bytes of float32; round to nearest, so the error is at most
      ``2**-11 * |delta|`` per element (``2**-25`` absolute below float16's normal range,
      ``6.1e-5``). Gather is ``index_select`` + one cast; scatter is one cast + ``index_copy_``.
    - ``dtype="int8"``: a quarter of float32. ``q = round(delta / eps * 127)``, clamped to
      ``[-127, 127]``, read back as ``q * eps / 127``: the error is at most ``eps / 254`` per
      element. Gather is ``index_select``, one cast and one in-place multiply (3 ops); scatter
      is one multiply, an in-place round, an in-place clamp, one cast and ``index_copy_``
      (5 ops).

    What is stored: :meth:`scatter` projects each element onto ``[-eps, eps]`` (the Linf ball;
    a delta from an L2 ball of radius ``eps`` is inside already, since no element exceeds the
    norm) and refuses a ``delta`` holding NaN or inf with ``ValueError``, before writing
    anything.

    Location: ``"device"`` keeps the entries on ``device`` (gather and scatter are single
    device ops); ``"pinned"`` keeps them in page-locked host memory for datasets whose
    perturbations do not fit on the GPU (gather adds one asynchronous host-to-device copy of the
    batch; scatter one device-to-host copy, which waits for the device). ``"pinned"`` needs CUDA.

    The fresh flags live on the host (one byte per example): with CPU indices, as a
    ``DataLoader`` yields them, :meth:`fresh` never waits for the device.

    Args:
        size (int): number of training examples (indices are ``0 .. size - 1``).
        shape (tuple of int): shape of one example, e.g. ``(1, 28, 28)``.
        eps (float): the attack's radius; the int8 scale, and the bound the stored values obey.
        dtype (str or torch.dtype): ``"input"`` (store ``input_dtype``), ``"float16"`` or
            ``"int8"``. Default: ``"input"``.
        input_dtype (torch.dtype): dtype of the perturbations :meth:`gather` returns and
            :meth:`scatter` accepts. Default: ``torch.float32``.
        device (str or torch.device): where gathered perturbations live (the training device).
            Default: ``"cpu"``.
        location (str): ``"device"`` or ``"pinned"``. Default: ``"device"``.
        reset_every (int): forget every entry at the start of each epoch that is a multiple of
            this (``0``: never); see :meth:`start_epoch`. Default: ``0``.

    Examples::

        >>> memory = ReplayMemory(100, (1, 8, 8), eps=0.3, dtype="int8")
        >>> idx = torch.tensor([3, 7])
        >>> memory.fresh(idx).tolist()
        [True, True]
        >>> memory.scatter(idx, torch.full((2, 1, 8, 8), 0.3))
        >>> delta = memory.gather(idx)
        >>> bool((delta - 0.3).abs().max() <= 0.3 / 254), memory.fresh(idx).tolist()
        (True, [False, False])
        >>> memory.nbytes  # 100 x 64 int8 values + 100 fresh flags
        6500
    """

    def __init__(
        self,
        size: int,
        shape,
        *,
        eps: float,
        dtype="input",
        input_dtype: torch.dtype = torch.float32,
        device="cpu",
        location: str = "device",
        reset_every: int = 0,
    ):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if isinstance(shape, torch.Size):
            shape = tuple(shape)
        if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape
        ):
            raise TypeError(f"shape must be a tuple of ints, got {shape!r}")
        if any(s < 1 for s in shape):
            raise ValueError(f"shape must have positive sizes, got {tuple(shape)}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"eps must be a number, got {type(eps).__name__}")
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        if input_dtype not in _INPUT_DTYPES:
            raise TypeError(
                f"input_dtype must be a floating-point torch.dtype, got {input_dtype!r}"
            )
        if isinstance(reset_every, bool) or not isinstance(reset_every, numbers.Integral):
            raise TypeError(f"reset_every must be an int, got {type(reset_every).__name__}")
        if reset_every < 0:
            raise ValueError(f"reset_every must be >= 0, got {reset_every}")
        if location not in _LOCATIONS:
            raise ValueError(f"location must be one of {_LOCATIONS}, got {location!r}")
        device = torch.device(device)
        if location == "pinned":
            if not torch.cuda.is_available():
                raise ValueError(
                    "location='pinned' needs CUDA (page-locked host memory only speeds up "
                    "copies to a GPU); use location='device'"
                )
            if device.type != "cuda":
                raise ValueError(
                    f"location='pinned' keeps entries on the host for a CUDA device, but "
                    f"device is {device}; use location='device'"
                )

        self.size = int(size)
        self.shape = tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.input_dtype = input_dtype
        self.storage_dtype = self._storage_dtype(dtype, input_dtype)
        self.dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        self.device = device
        self.location = location
        self.reset_every = int(reset_every)
        store_device = torch.device("cpu") if location == "pinned" else device
        self.data = torch.zeros((self.size, *self.shape), dtype=self.storage_dtype,
                                device=store_device)  # fmt: skip
        if location == "pinned":
            self.data = self.data.pin_memory()
        self.written = torch.zeros(self.size, dtype=torch.bool)
        self.epoch: int | None = None  # the last epoch passed to start_epoch
        self.resets = 0

    @staticmethod
    def _storage_dtype(dtype, input_dtype: torch.dtype) -> torch.dtype:
        if isinstance(dtype, torch.dtype):
            if dtype == input_dtype or dtype in (torch.float16, torch.int8):
                return dtype
            raise ValueError(
                f"dtype must be 'input' ({input_dtype}), 'float16' or 'int8', got {dtype}"
            )
        if dtype == "input":
            return input_dtype
        if dtype in _STORAGE_NAMES:
            return _STORAGE_NAMES[dtype]
        if isinstance(dtype, str):
            raise ValueError(f"dtype must be 'input', 'float16' or 'int8', got {dtype!r}")
        raise TypeError(f"dtype must be a str or torch.dtype, got {type(dtype).__name__}")

    # -- properties ------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held: the stored perturbations plus one fresh flag per example."""
        return self.data.numel() * self.data.element_size() + self.written.numel()

    @property
    def max_error(self) -> float:
        """The bound on ``|gather(i) - delta|`` per element after ``scatter(i, delta)``.

        ``0`` when stored in the input dtype, ``eps / 254`` for int8; for float16 the bound is
        relative (``2**-11 * |delta|``), and this returns it for ``|delta| = eps``.
        """
        if self.storage_dtype == self.input_dtype:
            return 0.0
        if self.storage_dtype == torch.int8:
            return self.eps / (2 * _INT8_LEVELS)
        return max(self.eps * 2.0**-11, 2.0**-25)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (f"ReplayMemory(size={self.size}, shape={self.shape}, eps={self.eps:g}, "
                f"dtype={self.dtype_name!r}, location={self.location!r}, device={self.device}, "
                f"reset_every={self.reset_every}, nbytes={self.nbytes})")  # fmt: skip

    # -- checks ----------------------------------------------------------------------------

    def _check_indices(self, indices) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a tensor, got {type(indices).__name__}")
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"indices must be 1-D, got shape {tuple(indices.shape)}")
        if indices.numel():
            lo, hi = torch.aminmax(indices)
            lo, hi = int(lo), int(hi)  # one sync for device indices; free for CPU ones
            if lo < 0 or hi >= self.size:
                raise ValueError(
                    f"indices must lie in [0, {self.size}), got values in [{lo}, {hi}]"
                )
        return indices.to(torch.int64)

    # -- gather / scatter ------------------------------------------------------------------

    def fresh(self, indices: torch.Tensor) -> torch.Tensor:
        """Which entries were never written since the last reset.

        Args:
            indices (Tensor[B]): integer indices in ``[0, size)``.

        Returns:
            BoolTensor[B]: on the CPU; ``True`` where :meth:`gather` returns zeros because
            nothing was stored.
        """
        indices = self._check_indices(indices)
        return self.written.index_select(0, indices.cpu()).logical_not_()

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The stored perturbations of a batch (zeros for fresh entries).

        Args:
            indices (Tensor[B]): integer indices in ``[0, size)``, on the CPU or ``device``.

        Returns:
            Tensor[B, *shape]: in ``input_dtype`` on ``device``.
        """
        indices = self._check_indices(indices)
        indices = indices.to(self.data.device, non_blocking=True)
        out = self.data.index_select(0, indices)
        if self.location == "pinned":
            out = out.pin_memory().to(self.device, non_blocking=True)
        if self.storage_dtype == torch.int8:
            return out.to(self.input_dtype).mul_(self.eps / _INT8_LEVELS)
        return out.to(self.input_dtype)

    def scatter(self, indices: torch.Tensor, delta: torch.Tensor) -> None:
        """Store the perturbations of a batch (replacing what was there) and mark them written.

        Args:
            indices (Tensor[B]): distinct integer indices in ``[0, size)``.
            delta (Tensor[B, *shape]): perturbations in ``input_dtype``, finite. Each element
                is projected onto ``[-eps, eps]``.

        Raises:
            ValueError: ``delta`` holds NaN or inf (nothing is written), or the indices repeat
                or lie outside ``[0, size)``.
        """
        indices = self._check_indices(indices)
        if not isinstance(delta, torch.Tensor):
            raise TypeError(f"delta must be a tensor, got {type(delta).__name__}")
        if delta.dtype != self.input_dtype:
            raise TypeError(f"delta must have dtype {self.input_dtype}, got {delta.dtype}")
        expected = (indices.shape[0], *self.shape)
        if tuple(delta.shape) != expected:
            raise ValueError(
                f"delta must have shape {expected} (one entry per index), got {tuple(delta.shape)}"
            )
        if indices.numel() > 1 and torch.unique(indices).numel() != indices.numel():
            # index_copy_ keeps an unspecified one of duplicates: refuse rather than guess.
            raise ValueError("indices must be distinct in scatter")
        delta = delta.detach()
        # Refused, not converted: a non-finite perturbation means the attack diverged, and int8
        # would store NaN as a plausible 0. Reading the flag on the host waits for the device
        # on CUDA, but scatter waits there anyway: the copies below (CPU indices to the device;
        # for "pinned", the values to the host) are synchronous, and device indices are
        # range-checked on the host.
        if not bool(torch.isfinite(delta).all()):
            raise ValueError("delta must be finite, got NaN or inf (did the attack diverge?)")
        # Projected rather than refused: an Linf attack's x_adv - x can exceed eps by one
        # rounding, and the memory keeps no norm of its own, only the bound every stored
        # element obeys (int8 saturates at it by construction).
        if self.storage_dtype == torch.int8:
            q = (delta * (_INT8_LEVELS / self.eps)).round_().clamp_(-_INT8_LEVELS, _INT8_LEVELS)
            values = q.to(torch.int8)
        else:
            values = delta.clamp(-self.eps, self.eps).to(self.storage_dtype)
        indices_cpu = indices.cpu()
        self.data.index_copy_(0, indices.to(self.data.device), values.to(self.data.device))
        self.written.index_fill_(0, indices_cpu, True)

    # -- epochs and resets -----------------------------------------------------------------

    def reset(self) -> None:
        """Forget every entry: all become fresh (the stored values are zeroed too)."""
        self.data.zero_()
        self.written.zero_()
        self.resets += 1

    def start_epoch(self, epoch: int) -> bool:
        """Call at the start of each epoch (0-based); resets when ``epoch`` is a positive
        multiple of ``reset_every``.

        Idempotent for a given epoch, so a run resumed in the middle of an epoch does not reset
        what its checkpoint restored.

        Args:
            epoch (int): the epoch about to start.

        Returns:
            bool: whether the memory was reset.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if epoch == self.epoch:
            return False
        self.epoch = int(epoch)
        if self.reset_every and epoch > 0 and epoch % self.reset_every == 0:
            self.reset()
            return True
        return False

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Entries, fresh flags and epoch, as CPU tensors and plain values (weights_only-safe)."""
        return {
            "size": self.size,
            "shape": list(self.shape),
            "eps": self.eps,
            "storage_dtype": str(self.storage_dtype),
            "reset_every": self.reset_every,
            "epoch": self.epoch,
            "resets": self.resets,
            "data": self.data.cpu().clone(),
            "written": self.written.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned.

        Everything is checked before anything changes: a refused state leaves the memory as it
        was.

        Raises:
            TypeError: ``state`` is not a dict, or one of its values has the wrong type or
                dtype.
            ValueError: keys are missing; the state comes from a memory of another size, shape,
                eps, storage dtype or reset period; ``data`` or ``written`` has the wrong shape;
                ``data`` holds NaN or inf, or non-zero entries that ``written`` marks fresh;
                ``epoch`` or ``resets`` is negative.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(
                f"state is missing keys {missing}; pass what ReplayMemory.state_dict() returned"
            )
        ours = {
            "size": self.size,
            "shape": list(self.shape),
            "eps": self.eps,
            "storage_dtype": str(self.storage_dtype),
            "reset_every": self.reset_every,
        }
        for key, value in ours.items():
            theirs = state[key]
            if not isinstance(theirs, (int, float, str, list, tuple)):
                raise TypeError(
                    f"state['{key}'] must be a plain {type(value).__name__}, "
                    f"got {type(theirs).__name__}"
                )
            if key == "shape" and isinstance(theirs, tuple):
                theirs = list(theirs)
            if theirs != value:
                raise ValueError(
                    f"state has {key}={state[key]!r} but this memory has {key}={value!r}"
                )
        data, written = state["data"], state["written"]
        for key, t, ours_t in (("data", data, self.data), ("written", written, self.written)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"state['{key}'] must be a tensor, got {type(t).__name__}")
            if t.dtype != ours_t.dtype:
                raise TypeError(f"state['{key}'] must have dtype {ours_t.dtype}, got {t.dtype}")
            if t.shape != ours_t.shape:
                raise ValueError(
                    f"state['{key}'] must have shape {tuple(ours_t.shape)}, got {tuple(t.shape)}"
                )
        epoch, resets = state["epoch"], state["resets"]
        if epoch is not None:
            check_count("state['epoch']", epoch, 0)
        check_count("state['resets']", resets, 0)
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            raise ValueError("state['data'] must be finite, got NaN or inf")
        # gather returns the stored row of a fresh entry: it must be the zeros a reset leaves.
        fresh = written.to(data.device).logical_not()
        if bool(data[fresh].ne(0).any()):
            raise ValueError("state['data'] has non-zero entries that state['written'] marks fresh")
        self.data.copy_(data)
        self.written.copy_(written)
        self.epoch = None if epoch is None else int(epoch)
        self.resets = int(resets)
