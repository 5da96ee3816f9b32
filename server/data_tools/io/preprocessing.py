"""How data_flow calls a preprocessor: the keywords it takes, and preprocessors in a chain.

A preprocessor is called as ``function(batch, **keywords)`` with only those of
:data:`PREPROCESSOR_KEYWORDS` it accepts (all of them with ``**kwargs``), found once from
its signature; one that names an ``out`` keyword (:func:`accepts_out`) may also be given
arrays to write its results into. :func:`call_preprocessor` is the one place that call is made.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy.typing as npt

__all__ = [
    "PREPROCESSOR_KEYWORDS",
    "PreprocessorChain",
    "accepts_out",
    "as_arrays",
    "call_preprocessor",
    "preprocessor_keywords",
]

PREPROCESSOR_KEYWORDS = frozenset({"rng", "epoch", "indices"})

Arrays = tuple["npt.NDArray[Any]", ...]


def preprocessor_keywords(function: Callable[..., Any]) -> frozenset[str]:
    """Which of PREPROCESSOR_KEYWORDS ``function`` takes by keyword (all with ``**kwargs``)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return PREPROCESSOR_KEYWORDS
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        p.name for p in parameters if p.kind in named and p.name in PREPROCESSOR_KEYWORDS
    )


def accepts_out(function: Callable[..., Any]) -> bool:
    """Whether ``function`` names an ``out`` keyword (``**kwargs`` alone does not count)."""
    try:
        parameter = inspect.signature(function).parameters.get("out")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def call_preprocessor(
    function: Callable[..., Any],
    keywords: frozenset[str],
    batch: list[npt.NDArray[Any]],
    *,
    rng: np.random.Generator | None,
    epoch: int,
    indices: npt.NDArray[np.int64],
) -> Any:
    """``function(batch, ...)`` with those of rng, epoch and indices named in ``keywords``.

    ``rng`` may be None when ``keywords`` does not name it (it is then never built).
    """
    available = {"rng": rng, "epoch": epoch, "indices": indices}
    return function(batch, **{name: available[name] for name in keywords})


def as_arrays(result: Any) -> Arrays:
    """A preprocessor's result as a tuple of arrays.

    Raises:
        TypeError: If it is neither an array nor a tuple or list of arrays.
    """
    if isinstance(result, np.ndarray):
        return (result,)
    if isinstance(result, tuple | list):
        return tuple(np.asarray(item) for item in result)
    raise TypeError(
        "Expected preprocessor to return a numpy array or a tuple/list of arrays. "
        f"Got {type(result).__name__} instead."
    )


@dataclass(frozen=True)
class PreprocessorChain:
    """Preprocessors run one after the other on a batch: itself a data_flow preprocessor.

    Each stage gets the previous stage's outputs as a list of arrays and, as data_flow calls
    one, those of the batch's ``rng``, ``epoch`` and ``indices`` it accepts (all stages see
    the same generator). Picklable when every stage is. A data node runs its augmentation
    (``data_tools.data_augmentation.SampleAugmentation``) then its registered preprocessor so.

    Attributes:
        stages: The preprocessors, in order (at least one callable).

    Raises:
        TypeError: If there is no stage or a stage is not callable.
    """

    stages: tuple[Callable[..., Any], ...]
    # Which keywords each stage takes, found once here rather than on every batch.
    _keywords: tuple[frozenset[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stages or not all(callable(stage) for stage in self.stages):
            raise TypeError(
                f"Expected stages to be a non-empty tuple of callables. Got {self.stages!r} "
                "instead."
            )
        object.__setattr__(
            self, "_keywords", tuple(preprocessor_keywords(stage) for stage in self.stages)
        )

    def __call__(
        self,
        batch: list[npt.NDArray[Any]],
        *,
        rng: np.random.Generator,
        epoch: int,
        indices: npt.NDArray[np.int64],
    ) -> Arrays:
        """Run every stage on ``batch``; return the last stage's outputs."""
        arrays = as_arrays(batch)
        for stage, keywords in zip(self.stages, self._keywords, strict=True):
            arrays = as_arrays(
                call_preprocessor(
                    stage, keywords, list(arrays), rng=rng, epoch=epoch, indices=indices
                )
            )
        return arrays
