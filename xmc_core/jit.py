"""numba compilation whose on-disk cache any process may reuse, in any order.

`njit` is numba's `njit` with two guards around `cache=True`:

* **Symbols unique across processes.** numba names every compiled function (the kernels and the
  helpers numba writes for them, such as the quicksort that `np.sort` and `np.argsort` each build
  from one factory) by qualified name, argument types and a per-process counter. Two processes
  can give *different* helpers the same name: one compiles `np.sort`'s quicksort as
  `run_quicksort1 v15`, another `np.argsort`'s under the same name. A third process that loads
  both cache entries links one body for both (LLVM merges the weak definitions), so a kernel calls
  the wrong sort and builds a corrupt layout: out-of-bounds reads, segfaults or silent garbage,
  depending on which entry point filled the cache first (numba#10486; it made the main job
  segfault after `xmc train` and `xmc evaluate`). Here the counter is replaced by random 64-bit
  ids, installed when this module is imported, before any kernel compiles; one name then means
  one compilation in any process.
* **Cache keyed by the settings that change the code.** numba's cache key is the signature, the
  CPU and the bytecode, not `NUMBA_BOUNDSCHECK`, `NUMBA_OPT`, debug info or the SLP vectorizer
  (`kernels.slp_vectorized`): a bounds-checked run would load unchecked code. They are part of
  the key here, and so is `SYMBOLS`, which retires entries written before the ids were random.
"""

from __future__ import annotations

import secrets

import numba
from numba.core import bytecode, caching, config

__all__ = ["njit", "SYMBOLS", "compile_flags"]

#: Version of the symbol scheme; part of every cache key (entries written by processes with
#: numba's sequential ids hold colliding names and are never loaded).
SYMBOLS = "xmc-random-uid-1"


class _RandomIds:
    """An endless iterator of random 64-bit ids: what numba draws a compiled function's id from.
    Random ids do not repeat across processes (or forks, which would copy a counter's state)."""

    def __iter__(self):
        return self

    def __next__(self) -> int:
        return secrets.randbits(64)


def _install_random_ids() -> None:
    if not isinstance(bytecode.FunctionIdentity._unique_ids, _RandomIds):
        bytecode.FunctionIdentity._unique_ids = _RandomIds()


_install_random_ids()


def compile_flags() -> tuple:
    """The settings numba reads while it compiles that change the machine code but are not in its
    cache key: bounds checks, optimization level, debug info, the SLP vectorizer."""
    return (SYMBOLS, bool(config.BOUNDSCHECK), int(config.OPT), bool(config.DEBUGINFO_DEFAULT),
            bool(config.SLP_VECTORIZE))


class _FlagKeyedCache(caching.FunctionCache):
    """numba's function cache with `compile_flags()` in the index key."""

    def _index_key(self, sig, codegen):
        return (*super()._index_key(sig, codegen), compile_flags())


def njit(*args, cache: bool = False, **kwargs):
    """`numba.njit`, with `cache=True` meaning a cache that is safe across processes and
    settings (see the module docstring). Used as `@njit(...)`."""
    def wrap(fn):
        dispatcher = numba.njit(*args, cache=False, **kwargs)(fn)
        if cache:
            dispatcher._cache = _FlagKeyedCache(dispatcher.py_func)
        return dispatcher

    return wrap
