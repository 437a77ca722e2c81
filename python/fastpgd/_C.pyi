"""Type stub for the compiled core ``fastpgd._C`` (see csrc/binding/): every name it exports."""

from collections.abc import Callable
from types import TracebackType
from typing import NoReturn

__version__: str

build_info: dict
"""What this build contains: ``cpu`` (the CPU kernels are linked), ``cpu_clones`` (their
target_clones levels, best first, ``"default"`` last), ``cpu_clone_in_use`` (the level this CPU
runs), ``cuda``, ``cuda_arches``, ``openmp``, ``sanitizers``."""

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

def _raise_from_cxx(kind: str, /) -> NoReturn:
    """Test hook: throw the C++ exception ``kind`` (``bad_alloc``, ``runtime_error``,
    ``type_error``, ``value_error``, ``unknown``) through the boundary every hand-written entry
    point uses: MemoryError, RuntimeError, TypeError, ValueError, RuntimeError."""

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

class _Section:
    """The log of one named timing section (the base of fastpgd.Timers' sections).

    Entering logs ``~t`` and leaving logs ``t`` (int64 nanoseconds). A section is
    for one thread: the first enter (since creation or ``_first = True``) claims
    it for the calling thread; an enter from another thread claims it only if
    ``on_claim`` allows it (without ``on_claim`` it raises ``RuntimeError``), and
    a refused enter logs nothing. ``on_claim(self)`` runs before the clock is
    read. Exits from a thread other than the claiming one log nothing.

    Args:
        clock (Callable[[], int], optional): zero-argument callable returning int
            nanoseconds. Default: ``None`` (steady_clock, the clock of
            ``time.perf_counter_ns``).
        on_claim (Callable[[_Section], object], optional): called before a thread
            claims the section; raising refuses the thread.
    """

    #: Whether no thread has claimed the section since creation or ``_first = True``;
    #: can only be set to ``True``.
    _first: bool
    def __init__(
        self, clock: Callable[[], int] | None = None, on_claim: Callable[..., object] | None = None
    ) -> None: ...
    def __enter__(self) -> _Section: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def _drain(self) -> list[int]: ...
    def _discard(self) -> None: ...
    def _log_size(self) -> int: ...

class _TimersBase:
    """The base of fastpgd.Timers: ``timers(name)`` returns ``_sections[name]``, or
    ``self._new_section(name)`` when the name is new."""

    _sections: dict[str, object]
    def __call__(self, name: str) -> object: ...
