"""Checkpoints: atomic, safe to load, self-describing, and guarded by a lock.

**Safe to load.** A checkpoint holds only tensors and plain values (``str``, ``int``,
``float``, ``bool``, ``None``, ``complex``, ``bytes``, dtypes, devices, and dicts, lists,
tuples and sets of them), so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``, which never runs code from the file. The random states of
NumPy and Python are stored as integer tensors and plain numbers (see :func:`rng_state`).
A file that is not such a checkpoint -- empty, truncated, text, random bytes, a raw pickle, a
foreign torch file, or one holding other objects -- is refused with a :class:`CheckpointError`
(a :class:`ValueError`) that names the file and what is wrong with it.

**Self-describing.** Every checkpoint carries ``"format"`` (:data:`FORMAT`) and ``"pyrocg"``
(the version that wrote it). Those written by :func:`pyrocg.infer.fit` after every epoch also
hold ``"meta"``, the dict given as ``fit(..., meta=...)`` (the CLI stores its model
specification there), so the checkpoint of an interrupted or diverged run is usable.

**Atomic and locked.** :func:`save_checkpoint` writes a hidden temporary file
``.{name}.XXXXXXXX.tmp`` next to the checkpoint and renames it over the old one.
:class:`CheckpointLock` (used by ``fit`` whenever it writes a checkpoint) creates
``{name}.lock`` holding the owner's PID, so a second run on the same path fails at once; a lock
left by a dead process is taken over, and temporary files left by a killed write are removed.

>>> import tempfile, os, torch
>>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
>>> with CheckpointLock(path):
...     save_checkpoint(path, {"epoch": 1, "w": torch.zeros(2)})
...     CheckpointLock(path).acquire()  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pyrocg.infer.checkpoint.CheckpointLockedError: .../run.pt is in use by another run ...
>>> state = load_checkpoint(path)
>>> state["format"], state["epoch"], os.path.exists(path + ".lock")
(2, 1, False)
"""

from __future__ import annotations

import os
import pickle
import random
import re
import socket
import tempfile
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import check_device

__all__ = [
    "FORMAT",
    "CheckpointError",
    "CheckpointLock",
    "CheckpointLockedError",
    "check_checkpoint_payload",
    "load_checkpoint",
    "remove_stale_temporaries",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

#: Version of the checkpoint layout; 1 was the pickled layout before weights-only loading.
FORMAT = 2

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
_HEAD = 64  # bytes read to recognise a foreign file
_PLAIN = (str, int, float, bool, type(None), complex, bytes, torch.dtype, torch.device)
_MAPPINGS = (dict, OrderedDict, Counter)
_SEQUENCES = (list, tuple, torch.Size, set)
_TENSORS = (torch.Tensor, torch.nn.Parameter)


class CheckpointError(ValueError):
    """A file is not a usable pyrocg checkpoint (the message names the file and the reason)."""


class CheckpointLockedError(RuntimeError):
    """Another live run holds the lock of a checkpoint path."""


def _version() -> str:
    from .. import __version__  # at call time: pyrocg/__init__ imports this package first

    return __version__


# ----------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """Every random state a training run draws from, as tensors and plain numbers.

    Pyro draws from torch's global RNG; NumPy's and Python's are saved as well because data
    pipelines and user code use them. NumPy's Mersenne Twister key and Python's internal state
    become ``int64`` tensors, so the result loads with ``torch.load(weights_only=True)``.

    :returns: ``{"torch": ByteTensor, "numpy": {...}, "python": {...}[, "cuda": [...]]}``.

    >>> import torch
    >>> from pyrocg.infer.checkpoint import rng_state, set_rng_state
    >>> state = rng_state()
    >>> a = torch.rand(2)
    >>> set_rng_state(state)
    >>> torch.equal(torch.rand(2), a)
    True
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states saved by :func:`rng_state`.

    :param state: the dict :func:`rng_state` returned (possibly loaded on another device).
    :raises ValueError: if an entry is missing or malformed (the message names it).
    """
    try:
        np_state, py_state = state["numpy"], state["python"]
        torch_state = state["torch"].cpu()
        keys = np_state["keys"].cpu().numpy()
        if keys.shape != (624,) or keys.min() < 0 or keys.max() >= 2**32:
            raise ValueError(f"numpy keys must be 624 values in [0, 2**32), got shape {keys.shape}")
        numpy_tuple = (str(np_state["kind"]), keys.astype(np.uint32), int(np_state["pos"]),
                       int(np_state["has_gauss"]), float(np_state["cached_gaussian"]))
        internal = tuple(int(v) for v in py_state["internal"].cpu().tolist())
        gauss = py_state["gauss_next"]
        python_tuple = (int(py_state["version"]), internal, None if gauss is None else float(gauss))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed RNG state in checkpoint ({type(exc).__name__}: {exc})") from None
    torch.set_rng_state(torch_state)
    try:
        np.random.set_state(numpy_tuple)
        random.setstate(python_tuple)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed RNG state in checkpoint ({exc})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- saving


def check_checkpoint_payload(obj: object, where: str = "payload") -> None:
    """Check that ``obj`` holds only what ``torch.load(weights_only=True)`` accepts.

    :param obj: a payload (or part of one, such as the ``meta`` dict given to ``fit``).
    :param where: its name in the message.
    :raises TypeError: naming the first offending entry, e.g. ``meta['path']``.

    >>> from pyrocg.infer.checkpoint import check_checkpoint_payload
    >>> check_checkpoint_payload({"spec": {"model": "mlp", "epochs": [1, 2]}})
    >>> check_checkpoint_payload({"fn": print})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: ...
    """
    kind = type(obj)
    if kind in _PLAIN or kind in _TENSORS:
        return
    if kind in _MAPPINGS:
        for key, value in obj.items():  # type: ignore[attr-defined]
            check_checkpoint_payload(key, f"{where} key {key!r}")
            check_checkpoint_payload(value, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for i, value in enumerate(obj):  # type: ignore[arg-type]
            check_checkpoint_payload(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint holds only tensors and "
        "plain values (str, int, float, bool, None, and dicts, lists and tuples of them) so that "
        "it can be loaded without running code: convert it (e.g. str(path), float(x), x.tolist())"
    )


def _temporaries(path: Path) -> list[Path]:
    # mkstemp's names: ".{name}." + 8 random characters + ".tmp" (exact, so that another
    # checkpoint whose name merely starts with ours keeps its temporaries).
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`save_checkpoint` of ``path`` left behind.

    Only safe while no other process writes ``path``: call it holding :class:`CheckpointLock`
    (which does so itself).

    :param path: the checkpoint path.
    :returns: the files removed.
    """
    removed = []
    for tmp in _temporaries(Path(path)):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, adding ``"format"`` and ``"pyrocg"``.

    A temporary file in the same directory is written, flushed to disk and renamed over
    ``path``, so a crash never leaves a torn file and the previous checkpoint survives until
    the new one is complete.

    :param path: the checkpoint file.
    :param payload: a dict of tensors and plain values (see :func:`check_checkpoint_payload`).
    :raises TypeError: if the payload holds anything else (nothing is written).

    >>> import os, tempfile, torch
    >>> from pyrocg.infer import load_checkpoint, save_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.pt")
    >>> save_checkpoint(path, {"epoch": 3, "weights": {"w": torch.ones(2)}})
    >>> load_checkpoint(path)["epoch"]
    3
    """
    if type(payload) not in _MAPPINGS:
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    payload = {**payload, "format": FORMAT, "pyrocg": _version()}
    check_checkpoint_payload(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -------------------------------------------------------------------------- loading


def _printable(text: str, limit: int = 160) -> str:
    """One line of ASCII, at most ``limit`` characters: nothing binary reaches a terminal."""
    line = " ".join(text.split())
    line = line.encode("ascii", "backslashreplace").decode("ascii")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe_foreign(head: bytes) -> str:
    if head[:1] == b"\x80":
        return ("it is a raw pickle (or a legacy torch file), which is never unpickled because "
                "that could run code")
    text = head.decode("utf-8", "replace")
    body = text[:-4] if len(head) == _HEAD else text  # the cut may split a character
    if "\ufffd" not in body and all(c.isprintable() or c.isspace() for c in body):
        return f"it is a text file starting {_printable(text[:40])!r}"
    return f"it is binary data starting with bytes {head[:8].hex(' ')}"


def _refused_global(exc: Exception) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"it refers to {match.group(1)}" if match else _printable(str(exc).splitlines()[-1])


def load_checkpoint(path: str | os.PathLike, map_location: Any = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without running code from it.

    :param path: the checkpoint file.
    :param map_location: as in :func:`torch.load` (e.g. ``"cpu"``).
    :returns: the payload dict (with ``"format"`` and ``"pyrocg"``).
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises CheckpointError: (a :class:`ValueError`) if ``path`` is a directory or not a
        pyrocg checkpoint of this :data:`FORMAT`; the message names the file and the reason.

    >>> import pathlib, tempfile
    >>> from pyrocg.infer import load_checkpoint
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = path.write_text("not a checkpoint")
    >>> load_checkpoint(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pyrocg.infer.checkpoint.CheckpointError: ...
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if isinstance(map_location, (str, torch.device)):
        check_device(map_location, "map_location")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if not head:
        raise CheckpointError(f"{path}: not a pyrocg checkpoint: the file is empty")
    if head[:4] != _ZIP_MAGIC:
        raise CheckpointError(f"{path}: not a pyrocg checkpoint: {_describe_foreign(head)}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain values "
            f"({_refused_global(exc)}), and loading it could run code. If it is an old pyrocg "
            "checkpoint (format 1, with pickled RNG states), re-create it"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError,
            TypeError) as exc:
        first = _printable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: a torch file but not a pyrocg checkpoint (it holds a {type(state).__name__}, "
            "not a dict)"
        )
    if "format" not in state:
        keys = ", ".join(repr(k) for k in list(state)[:5])
        raise CheckpointError(
            f"{path}: a torch file but not a pyrocg checkpoint (no 'format' entry; keys: {keys})"
        )
    if state["format"] != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {state['format']!r} (written by pyrocg "
            f"{state.get('pyrocg', 'unknown')}), but pyrocg {_version()} reads format {FORMAT}; "
            "load it with the pyrocg version that wrote it, or re-create it"
        )
    return state


# ----------------------------------------------------------------------------- locking


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:
        return False
    return True


class CheckpointLock:
    """Exclusive use of a checkpoint path by one run: ``{path}.lock`` holds the owner's PID.

    The lock file is created with ``O_CREAT | O_EXCL``, so of two runs only one gets it; the
    other fails at once with :class:`CheckpointLockedError`. A lock whose process is dead
    (on this host) is taken over, and on acquiring the lock the temporary files of killed
    writes (:func:`remove_stale_temporaries`) are deleted. Use it as a context manager; the
    lock is released (its file removed) on exit, also after an exception.
    :func:`pyrocg.infer.fit` holds it while it trains with a ``checkpoint``.

    :param path: the checkpoint path (the file need not exist).

    A lock on another host (shared file system) is never taken over: its PID cannot be checked.

    >>> import os, tempfile
    >>> from pyrocg.infer.checkpoint import CheckpointLock, CheckpointLockedError
    >>> path = os.path.join(tempfile.mkdtemp(), "run.pt")
    >>> with CheckpointLock(path):
    ...     try:
    ...         CheckpointLock(path).acquire()
    ...     except CheckpointLockedError:
    ...         print("second run refused")
    second run refused
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a str or os.PathLike, got {type(path).__name__}")
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._held

    def _owner(self, lock: Path) -> tuple[int, str] | None:
        try:
            text = lock.read_text(errors="replace")
        except FileNotFoundError:
            return None
        parts = text.split()
        if len(parts) >= 1 and parts[0].isdigit():
            return int(parts[0]), parts[1] if len(parts) > 1 else socket.gethostname()
        return -1, ""  # empty or garbled: being written, or left by a crash

    def _locked(self, owner: tuple[int, str]) -> CheckpointLockedError:
        pid, host = owner
        who = f"process {pid} on {host}" if pid >= 0 else "a process that is starting"
        return CheckpointLockedError(
            f"{self.path} is in use by another run ({who}; lock file {self.lock_path}). "
            "Wait for it to finish or choose another checkpoint path; if no such run exists, "
            f"delete {self.lock_path}"
        )

    def _stale(self, owner: tuple[int, str]) -> bool:
        pid, host = owner
        if pid < 0:  # garbled: stale once it is older than a write could take
            try:
                return time.time() - self.lock_path.stat().st_mtime > 10.0
            except FileNotFoundError:
                return True
        return host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid)

    def acquire(self) -> CheckpointLock:
        """Take the lock, or raise :class:`CheckpointLockedError` naming the path at once.

        :returns: ``self``.
        """
        if self._held:
            raise RuntimeError(f"the lock of {self.path} is already held by this object")
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner(self.lock_path)
                if owner is None:
                    continue  # released meanwhile: try again
                if not self._stale(owner):
                    raise self._locked(owner) from None
                self._take_over(owner)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            self._held = True
            remove_stale_temporaries(self.path)
            return self
        raise self._locked(self._owner(self.lock_path) or (-1, ""))

    def _take_over(self, owner: tuple[int, str]) -> None:
        # Rename rather than delete: of two runs taking over the same stale lock, the one whose
        # rename moved a *live* lock (the other run's fresh one) puts it back and gives up.
        aside = self.lock_path.with_name(f"{self.lock_path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:
            return
        moved = self._owner(aside)
        if moved is not None and moved != owner and not self._stale(moved):
            try:
                os.link(aside, self.lock_path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            raise self._locked(moved)
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Release the lock (remove the lock file); a no-op if not held."""
        if self._held:
            self.lock_path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> CheckpointLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"CheckpointLock({str(self.path)!r}, held={self._held})"
