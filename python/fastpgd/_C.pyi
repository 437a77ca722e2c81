"""Type stub for the compiled core ``fastpgd._C`` (see csrc/binding/)."""

from collections.abc import Callable
from types import TracebackType

__version__: str

build_info: dict
"""What this build contains: ``cpu``, ``cuda``, ``cuda_arches``, ``openmp``, ``sanitizers``."""

def cuda_device_count() -> int:
    """Number of CUDA devices the extension's own runtime sees (0 without CUDA kernels)."""

def pgd_step_(
    x_adv: object,
    grad: object,
    x0: object,
    eps: float | object,
    alpha: float,
    norm: str,
    clamp: tuple[float, float] | None,
    stream: int | None = None,
    /,
) -> None:
    """The fused PGD step on DLPack tensors, in place on ``x_adv`` (see fastpgd.pgd_step_)."""

def _cast(src: object, dst: object, /) -> None:
    """Test hook: convert float32 <-> float16/bfloat16 with the kernels' own rounding."""

def _set_stopwatch_error(cls: type[RuntimeError]) -> None:
    """Register ``fastpgd.StopwatchError`` as the class strict mode raises."""

class Stopwatch:
    """A lap stopwatch on ``steady_clock``, implemented in C++.

    Args:
        strict (bool): raise ``StopwatchError`` on misuse. Default: ``False``.
        clock (Callable[[], int], optional): zero-argument callable returning int
            nanoseconds. Default: ``None`` (steady_clock read in C++).
    """

    def __new__(cls, strict: bool = False, clock: Callable[[], int] | None = None) -> Stopwatch: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def lap(self) -> float | None: ...
    def reset(self) -> None: ...
    def lap_times(self) -> list[float]: ...
    def _capacity_bytes(self) -> int: ...
    @property
    def running(self) -> bool: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def total(self) -> float: ...
    @property
    def strict(self) -> bool: ...
    def __enter__(self) -> Stopwatch: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...
