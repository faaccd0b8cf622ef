"""Memory ordering for the lock-free shared-memory protocols: the one module that decides it.

The protocols (shm/rings.py, shm/params.py, shm/counters.py) hold under the C11 memory model,
so they hold on ARM64 (AWS Graviton, NVIDIA Grace) as on x86-64.

Every cross-process publish is a release (store_release, or fence_release before plain stores)
and every observe an acquire (load_acquire, or fence_acquire after plain loads). Pairings, in
C11 terms (C17 5.1.2.4, 7.17.4); "data" = plain stores/loads done by torch/numpy:
- Ring commit. Writer: data -> store_release(cursor). Reader: load_acquire(cursor) -> data.
  The acquire load that reads the cursor value synchronizes-with the release store: the rows
  below that cursor happen-before the reader's copy.
- Ring overwrite check. Writer: store(cursor) -> fence_release -> next batch's data. Reader:
  data -> fence_acquire -> load_relaxed(cursor). If any copied row came from that batch, the
  fences synchronize (7.17.4p2), so the reload returns that cursor or later and the guard
  `oldest_read >= cursor + write_batch - segment_size` rejects the row.
- Seqlock. Writer: store_relaxed(version, odd) -> fence_release -> data ->
  store_release(version, even). Reader: v1 = load_acquire(version) -> data -> fence_acquire ->
  v2 = load_relaxed(version); keep the copy iff v1 == v2 and v1 is even.
- Counters publish nothing else: relaxed loads/stores (untorn values only).
C11 calls the plain data accesses racing with the fences a data race; the fences are
real instructions (AArch64: acquire fence = dmb ishld, release fence = dmb ish), which order
all earlier/later plain accesses, and every torch/numpy copy is an opaque call the compiler
cannot move across a fence call. Each int64 word must have exactly one writer.

BACKEND: "atomicshm" (the atomicshm wheel: one inlined instruction per call), "x86-tso"
(x86-64 only, when atomicshm is missing, e.g. CPython 3.10: aligned plain loads are
acquire and plain stores release under TSO, and acquire/release fences need no instruction)
or "libatomic" (the system's libatomic.so.1 through ctypes; any other architecture, slow).
Set ASYNCQL_SYNC_BACKEND to force one; none usable -> ImportError, never a silent fallback.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_X86 = platform.machine().lower() in ("x86_64", "amd64")
_SIGN, _WRAP = 1 << 63, 1 << 64
Bind = Callable[[torch.Tensor], dict[str, Callable[..., Any]]]


def _atomicshm() -> tuple[Bind, Callable[[], None], Callable[[], None]]:
    import atomicshm as a  # MIT; abi3 wheels (CPython >= 3.11) for x86_64 and aarch64

    def bind(t: torch.Tensor) -> dict[str, Callable[..., Any]]:
        view = a.AtomicView(t.numpy())  # keeps the buffer exported, so the mapping stays alive
        cells = [view.cell_u64(8 * i) for i in range(t.numel())]
        loads, stores = [c.load for c in cells], [c.store for c in cells]  # bound once
        rlx, acq, rel = a.RELAXED, a.ACQUIRE, a.RELEASE

        def load_relaxed(i: int) -> int:
            v = loads[i](rlx)  # atomicshm returns the uint64 bit pattern
            return v - _WRAP if v >= _SIGN else v

        def load_acquire(i: int) -> int:
            v = loads[i](acq)
            return v - _WRAP if v >= _SIGN else v

        return dict(load_relaxed=load_relaxed, load_acquire=load_acquire,
                    store_relaxed=lambda i, v: stores[i](v, rlx),
                    store_release=lambda i, v: stores[i](v, rel),
                    load_all_relaxed=lambda: np.array([f(rlx) for f in loads], np.uint64).view(np.int64))
    return bind, functools.partial(a.fence, a.ACQUIRE), functools.partial(a.fence, a.RELEASE)


def _x86_tso() -> tuple[Bind, Callable[[], None], Callable[[], None]]:
    if not _X86:
        raise ImportError(f"plain loads/stores are not acquire/release on {platform.machine()}")

    def bind(t: torch.Tensor) -> dict[str, Callable[..., Any]]:
        a = t.numpy()  # aligned 8-byte numpy scalar accesses: single movs, atomic on x86-64
        return dict(load_relaxed=a.item, load_acquire=a.item, store_relaxed=a.__setitem__,
                    store_release=a.__setitem__, load_all_relaxed=a.copy)
    # acquire/release fences need no instruction under TSO; an opaque call is a compiler barrier
    return bind, lambda: None, lambda: None


def _libatomic() -> tuple[Bind, Callable[[], None], Callable[[], None]]:
    lib = ctypes.CDLL("libatomic.so.1")  # OSError -> ImportError below
    ld, st, fence = getattr(lib, "__atomic_load_8"), getattr(lib, "__atomic_store_8"), lib.atomic_thread_fence
    ld.argtypes, ld.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_int64
    st.argtypes, st.restype = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int], None
    fence.argtypes, fence.restype = [ctypes.c_int], None
    rlx, acq, rel = 0, 2, 3  # __ATOMIC_RELAXED, __ATOMIC_ACQUIRE, __ATOMIC_RELEASE

    def bind(t: torch.Tensor) -> dict[str, Callable[..., Any]]:
        base, slots = t.data_ptr(), range(t.numel())

        def at(i: int, _owner: torch.Tensor = t) -> int:  # the accessors keep the mapping alive
            return base + 8 * slots[i]  # slots[i]: the bounds check raw pointers need

        return dict(load_relaxed=lambda i: ld(at(i), rlx), load_acquire=lambda i: ld(at(i), acq),
                    store_relaxed=lambda i, v: st(at(i), v, rlx),
                    store_release=lambda i, v: st(at(i), v, rel),
                    load_all_relaxed=lambda: np.array([ld(at(i), rlx) for i in slots], np.int64))
    return bind, functools.partial(fence, acq), functools.partial(fence, rel)


def _select() -> tuple[str, Bind, Callable[[], None], Callable[[], None]]:
    forced = os.environ.get("ASYNCQL_SYNC_BACKEND")
    makers = {"atomicshm": _atomicshm, "x86-tso": _x86_tso, "libatomic": _libatomic}
    errors = []
    for name in [forced] if forced else list(makers):
        try:
            return (name, *makers[name]())
        except (ImportError, OSError, AttributeError, KeyError) as exc:
            errors.append(f"{name}: {exc!r}")
    raise ImportError("no memory-ordering backend for asyncql: install atomicshm (CPython >= 3.11) "
                      "or the system's libatomic1; tried " + "; ".join(errors))


BACKEND, _bind, fence_acquire, fence_release = _select()
fence_acquire.__doc__ = "Earlier loads are ordered before every later load and store."
fence_release.__doc__ = "Earlier loads and stores are ordered before every later store."


_ACCESSORS = ("load_relaxed", "load_acquire", "store_relaxed", "store_release", "load_all_relaxed")


class AtomicInt64Array:
    """Atomic access to the elements of a contiguous int64 CPU tensor (the shared object).

    load_relaxed(i) / load_acquire(i) -> int; store_relaxed(i, v) / store_release(i, v);
    load_all_relaxed() / load_all_acquire() -> np.ndarray copy. The accessors are made on first
    use in each process and never pickled: a child rebuilds them from the (shared) tensor.
    """

    load_relaxed: Callable[[int], int]
    load_acquire: Callable[[int], int]
    store_relaxed: Callable[[int, int], None]
    store_release: Callable[[int, int], None]
    load_all_relaxed: Callable[[], np.ndarray]

    def __init__(self, tensor: torch.Tensor):
        if (tensor.dtype != torch.int64 or tensor.device.type != "cpu" or not tensor.is_contiguous()
                or tensor.data_ptr() % 8):
            raise ValueError("AtomicInt64Array needs a contiguous, 8-byte aligned int64 CPU tensor")
        self.tensor = tensor

    def __getattr__(self, name: str) -> Any:  # only reached while the accessors are not made yet
        if name not in _ACCESSORS or "tensor" not in self.__dict__:
            raise AttributeError(name)
        self.__dict__.update(_bind(self.tensor))
        return self.__dict__[name]

    def __getstate__(self) -> dict[str, Any]:
        return {"tensor": self.tensor}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tensor = state["tensor"]

    def __len__(self) -> int:
        return self.tensor.numel()

    def load_all_acquire(self) -> np.ndarray:
        """Relaxed loads, then an acquire fence: pairs with a store_release like load_acquire (7.17.4p4)."""
        values = self.load_all_relaxed()
        fence_acquire()
        return values


def machine() -> str:
    return platform.machine()
