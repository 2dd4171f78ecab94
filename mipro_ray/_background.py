"""`Background`: a function run in a daemon thread, whose result or exception `join` hands back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Background", "wait_event"]

_T = TypeVar("_T")
_POLL_S = 0.2


class Background(Generic[_T]):
    """Starts ``func`` in a daemon thread named ``name`` at construction."""

    def __init__(self, func: Callable[[], _T], *, name: str) -> None:
        self._func = func
        self._result: _T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._func()
        except BaseException as exc:  # handed to join(), which re-raises it in the caller
            self._error = exc

    def join(self) -> _T:
        """Waits for ``func``; returns its result or re-raises its exception."""
        while self._thread.is_alive():  # with a timeout, so Ctrl-C reaches the caller
            self._thread.join(_POLL_S)
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set when func returned


def wait_event(event: threading.Event) -> None:
    """``event.wait()`` that a Ctrl-C can interrupt."""
    while not event.wait(_POLL_S):
        pass
