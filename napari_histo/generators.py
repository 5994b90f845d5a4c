"""Drive the core's long-running generators: one loop for every synchronous runner.

Long operations (inference, nuclei, training) are generators that yield
progress and *return* their result (``StopIteration.value``). The CLI, the
tests and ``run_*`` wrappers drive them with :func:`drive`; a generator that
re-yields another one's progress in another shape uses :func:`mapped`; one run
elsewhere (another thread, another process) is relayed as :func:`messages`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["drive", "mapped", "messages"]

Y = TypeVar("Y")
Z = TypeVar("Z")
R = TypeVar("R")


def drive(generator: Generator[Y, Any, R], each: Callable[[Y], Any] | None = None) -> R:
    """Run `generator` to the end, calling `each(item)` per yielded item; its return value.

    Examples
    --------
    >>> def job():
    ...     yield 1
    ...     yield 2
    ...     return "done"
    >>> seen = []
    >>> drive(job(), seen.append), seen
    ('done', [1, 2])
    """
    while True:
        try:
            item = next(generator)
        except StopIteration as stop:
            return stop.value
        if each is not None:
            each(item)


def mapped(generator: Generator[Y, Any, R], fn: Callable[[Y], Z]) -> Generator[Z, None, R]:
    """Yield ``fn(item)`` for each item of `generator`; return what `generator` returns.

    Use as ``result = yield from mapped(inner, fn)``.
    """
    while True:
        try:
            item = next(generator)
        except StopIteration as stop:
            return stop.value
        yield fn(item)


def messages(
    make: Callable[[], Generator[Any, Any, Any]],
) -> Generator[tuple[str, Any], None, None]:
    """Run generator ``make()`` to its end as messages for a relay.

    ``("yield", item)`` per item, then ``("return", value)`` or, when ``make()`` or
    the generator raised, ``("raise", error)`` (any exception but GeneratorExit).
    Closing this generator closes the inner one.

    Examples
    --------
    >>> def job():
    ...     yield 1
    ...     return "done"
    >>> list(messages(job))
    [('yield', 1), ('return', 'done')]
    """
    gen = None
    try:
        gen = make()
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                yield "return", stop.value
                return
            yield "yield", item
    except GeneratorExit:
        raise
    except BaseException as err:  # relayed to the consumer, which re-raises or reports it
        yield "raise", err
    finally:
        if gen is not None:
            gen.close()
