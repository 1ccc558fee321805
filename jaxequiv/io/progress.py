"""One progress bar for long jobs: tqdm when it is installed (extra ``progress``), plain lines otherwise.

Only JAX process 0 reports, so a multi-host run prints one bar, not one per host.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["progress_bar"]


class _Silent:
    """A bar that shows nothing (disabled, or not process 0)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Plain(_Silent):
    """Without tqdm: one line on stderr each time another tenth of the work is done, and one at the end if the
    last state was not shown, e.g. ``contributions: 30/100 chunk (30%) 12.0 s loss=0.1``."""

    def __init__(self, total: int, initial: int, desc: str, unit: str):
        self.total, self.n, self.desc, self.unit = max(int(total), 1), int(initial), desc, unit
        self.postfix: dict[str, Any] = {}
        self.start = time.monotonic()
        self.tenth, self.shown = self._tenth(), None

    def _tenth(self) -> int:
        return 10 * self.n // self.total

    def _print(self) -> None:
        post = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%) "
              f"{time.monotonic() - self.start:.1f} s{post}", file=sys.stderr, flush=True)
        self.shown = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tenth() > self.tenth:
            self.tenth = self._tenth()
            self._print()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.shown != self.n:
            self._print()


def _is_process_zero() -> bool:
    """True unless JAX runs several processes and this is not the first. Without JAX imported (nothing
    distributed has started) this costs nothing; with it, the backend is already in use by the caller."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def progress_bar(total: int, *, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
                 leave: bool = True):
    """A progress bar over ``total`` units, ``initial`` of them already done (a resumed job).

    Returns an object with ``update(n=1)``, ``set_postfix(**values)``, ``close()`` and the context-manager
    protocol: a tqdm bar when tqdm is installed, plain lines on stderr otherwise, nothing when ``enabled`` is
    False or on a JAX process other than 0. ``leave``: keep tqdm's bar on screen when it closes.
    """
    if not enabled or not _is_process_zero():
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, initial, desc, unit)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
