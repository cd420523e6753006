"""Safe output files: the one atomic writer of the package, the output-directory lock and the
clean-up of temp files that a killed run left behind.

Every file the package writes (adapter files, checkpoints, ``run.json`` / ``metrics.json`` /
``history.json``, the demo's results) goes through :func:`atomic_write`:

- the data goes to a *new* temp file made with ``tempfile.mkstemp(dir=<target dir>)``
  (``O_CREAT | O_EXCL``: never an existing file, never through a symlink), named
  ``.ak-tmp-XXXXXXXX-<final name>``; it is flushed and fsync'd, then ``os.replace``'d onto the
  final name and the directory is fsync'd. A crash leaves the previous file or the new one,
  never half a file, and at worst a temp file that the next run cleans up.
- a final name (or an output directory such as ``adapter/``) that is a symbolic link is refused
  with :class:`OutputError`: the package never writes through a link it did not make. A final
  name that is a directory is refused before anything is written.

:class:`OutDirLock` is an exclusive ``fcntl.flock`` on ``<out>/.alter-unlearn.lock`` holding the
holder's pid, host and start time; a second run into the same directory fails at once with
:class:`OutputLockedError` naming the holder. The lock goes away with the process (also after
``kill -9``); the file stays (removing it would race with a new holder).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

TMP_PREFIX = ".ak-tmp-"
LOCK_NAME = ".alter-unlearn.lock"

# temp names written by earlier versions of this package (fixed names, or mkstemp's ".tmp-*-name")
_LEGACY_TMP = re.compile(r"^(\.tmp-.+-(checkpoint\.pt|adapter_model\.safetensors|adapter_config\.json)"
                         r"|(run|metrics|history)\.json\.tmp)$")

_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(OSError):
    """An output path cannot be written safely (a symlink, a directory where a file goes, ...)."""

    def __str__(self):  # one line, no errno prefix
        return str(self.args[0]) if self.args else "output error"


class OutputLockedError(RuntimeError):
    """Another run holds the output directory's lock."""


def _no_link(path: str, what: str = "output") -> None:
    if os.path.islink(path):
        raise OutputError(f"refusing to write through the symbolic link {path} (-> {os.readlink(path)}); "
                          f"remove the link or choose another {what} path")


def check_file_target(path: str) -> None:
    """Raise OutputError if ``path`` cannot take a file written by atomic_write (a symlink or a directory)."""
    path = os.fspath(path)
    _no_link(path)
    if os.path.isdir(path):
        raise OutputError(f"{path} is a directory; expected a file there (or nothing)")


def check_dir_target(path: str) -> None:
    """Raise OutputError if ``path`` cannot be used as an output directory (a symlink or a non-directory)."""
    path = os.fspath(path)
    _no_link(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{path} exists and is not a directory")


def ensure_dir(path: str) -> str:
    """Create directory ``path`` (and parents) unless it exists; refuse a symlink or a file there."""
    path = os.fspath(path)
    check_dir_target(path)
    os.makedirs(path, exist_ok=True)
    check_dir_target(path)  # lost a race to a link
    return path


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, data: bytes | str | None = None, *, writer=None) -> str:
    """Write ``data`` (bytes or str, UTF-8) or whatever ``writer(binary_file)`` writes to ``path``,
    atomically (see the module docstring). Returns ``path``."""
    path = os.fspath(path)
    check_file_target(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path), dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            if writer is not None:
                writer(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)              # mkstemp makes 0600; give the usual mode
        check_file_target(path)                      # a link may have appeared meanwhile
        os.replace(tmp, path)                        # renames onto the name itself, never through a link
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(d)
    return path


def json_safe(x):
    """JSON-safe copy: NaN / inf become None (strict JSON), keys strings, other objects strings."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (int, str, bool)) or x is None:
        return x
    return str(x)


def write_json(path, obj, indent: int | None = 1, **kw) -> str:
    """``json.dump`` through :func:`atomic_write` (trailing newline)."""
    return atomic_write(path, json.dumps(obj, indent=indent, **kw) + "\n")


def atomic_dir(final, build) -> str:
    """Build a directory with ``build(tmp_dir)`` next to ``final`` and swap it into place (the old
    one, if any, is exchanged with it in one step where Linux's renameat2 allows, else moved aside
    first, and removed after the swap). ``final`` must not be a symlink."""
    final = os.fspath(final)
    check_dir_target(final)
    parent = os.path.dirname(os.path.abspath(final))
    name = os.path.basename(os.path.abspath(final))
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-" + name, dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        build(tmp)
        old = None
        if os.path.isdir(final):
            check_dir_target(final)                  # a link may have appeared meanwhile
            if _exchange(tmp, final):
                old, tmp = tmp, None                 # swapped in one step: the old one is now at tmp
            else:
                old = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-old-" + name, dir=parent)
                os.replace(final, old)               # onto an empty directory: allowed by rename(2)
        if tmp is not None:
            os.replace(tmp, final)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(parent)
    return final


def _exchange(a: str, b: str) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or the file system cannot (the caller then renames in two steps)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish_dir(final, build) -> str:
    """Build a directory with ``build(tmp_dir)`` next to ``final`` and rename it to ``final``
    unless ``final`` exists by then (another process published it first: ours is dropped). For
    caches whose content is fixed by their name; an interrupted build leaves only a temp
    directory. Creates ``final``'s parent. ``final`` must not be a symlink."""
    final = os.fspath(final)
    check_dir_target(final)
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(os.path.abspath(final)), dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        build(tmp)
        try:
            os.rename(tmp, final)        # onto an existing non-empty directory: fails
        except OSError:
            if not os.path.isdir(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    return final


def clean_stale_temp(*dirs) -> list[str]:
    """Remove temp files (and temp directories) of this package's own naming from ``dirs``: what a
    killed writer left behind. Only call it while holding the directory's lock. Symlinks are
    removed as links (their targets are never touched). Returns the removed paths."""
    removed = []
    for d in dirs:
        d = os.fspath(d)
        if os.path.islink(d) or not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            ours = name.startswith(TMP_PREFIX)
            if not (ours or _LEGACY_TMP.match(name)):
                continue
            p = os.path.join(d, name)
            try:
                if os.path.islink(p) or os.path.isfile(p):
                    os.unlink(p)
                elif ours and os.path.isdir(p):
                    shutil.rmtree(p)
                else:
                    continue
            except FileNotFoundError:
                continue
            removed.append(p)
    return removed


def is_within(path, root) -> bool:
    """Whether real path ``path`` equals ``root`` or lies inside it (symlinks resolved)."""
    p, r = os.path.realpath(os.fspath(path)), os.path.realpath(os.fspath(root))
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------------------------------- lock
_held: dict[str, list] = {}      # real path of the directory -> [fd, count] (re-entrant within a process)
_held_lock = threading.Lock()


def _describe_holder(raw: bytes) -> str:
    try:
        info = json.loads(raw.decode("utf-8"))
        return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
                + (f": {info['command']}" if info.get("command") else ""))
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "a process that has not written its pid yet"


class OutDirLock:
    """Exclusive lock of an output directory (see the module docstring). Re-entrant within one
    process (the CLI and the engine it calls both take it)."""

    def __init__(self, out_dir):
        self.out_dir = os.fspath(out_dir)
        self.path = os.path.join(self.out_dir, LOCK_NAME)
        self._key = None

    def acquire(self) -> "OutDirLock":
        if fcntl is None or self._key is not None:
            return self
        key = os.path.realpath(self.out_dir)
        with _held_lock:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return self
            _no_link(self.path, "lock file")
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(self.path, flags, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                try:
                    raw = os.pread(fd, 4096, 0)
                finally:
                    os.close(fd)
                raise OutputLockedError(
                    f"{self.out_dir} is in use by another run ({_describe_holder(raw)}); wait for it to "
                    f"finish or choose another output directory (lock file {self.path})") from None
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.datetime.now().isoformat(timespec="seconds"),
                    "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
            _held[key] = [fd, 1]
            self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with _held_lock:
            ent = _held.get(self._key)
            if ent is not None:
                ent[1] -= 1
                if ent[1] == 0:
                    del _held[self._key]
                    with contextlib.suppress(OSError):
                        os.ftruncate(ent[0], 0)
                    with contextlib.suppress(OSError):
                        fcntl.flock(ent[0], fcntl.LOCK_UN)
                    os.close(ent[0])
        self._key = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
