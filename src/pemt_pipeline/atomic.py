"""Crash-safe outputs: every file and folder the project writes is built under a temporary name
beside its target, flushed to disk and renamed into place, so a kill, a power cut or a full disk at
any moment leaves the previous complete version (plain Python: every layer of the project uses it).

- Files (`atomic_open`, `atomic_path`): written as ``.<name>.<random>.tmp`` in the target's folder,
  fsynced, `os.replace`d onto the target, then the folder is fsynced.
- Folders (`atomic_path(folder=True)`, or `temporary` / `commit` / `discard` for a writer that
  spans several calls): built as ``.<name>.<random>.tmp``; the swap renames the current folder to
  ``.<name>.<random>.old``, the new one to ``<name>``, then deletes the old one. At every moment a
  complete version exists, under ``<name>`` or, between the two renames, under the ``.old`` name,
  which `recover` (and `remove_stale_temporaries`) renames back. A file replacing a folder (or a
  folder a file) is swapped the same way.
- Temporaries are created as ``open()`` / ``os.mkdir`` create the target (0o666 / 0o777 less the
  umask), so outputs honour the umask; a symlink at the target is replaced, not written through.
- `remove_stale_temporaries` deletes what killed runs left (only this naming pattern).
- A failed write raises `WriteError` (an OSError) naming the output, e.g. "no space left on device
  while writing data/03_primary/manifest.parquet"; `preallocate` turns the SIGBUS that a full disk
  gives a memory-mapped write into that error at creation.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[^.]+\.(?P<kind>tmp|old)$")  # .<name>.<random>.<kind>
FULL_BYTES = 1 << 20  # a failed write that leaves less free space than this was a full disk
_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_SPACE_TEXT = {errno.ENOSPC: ("no space left on device", f"os error {errno.ENOSPC})"),
               errno.EDQUOT: ("disk quota exceeded", f"os error {errno.EDQUOT})")}
_UNSUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


class WriteError(OSError):
    """Writing `output` failed (errno as the cause's); the previous version, if any, is unchanged."""

    def __init__(self, code: int | None, message: str, output: str):
        super().__init__(*((message,) if code is None else (code, message)))
        self.output = output

    def __reduce__(self):  # picklable (it may cross to another process)
        return type(self), (self.errno, self.strerror if self.errno is not None else self.args[0], self.output)


def write_error(exc: BaseException, path: str | os.PathLike) -> WriteError | None:
    """The `WriteError` for `exc` raised while writing `path`: any OSError, or another library's
    error reporting a full disk (safetensors, and torch's cryptic "unexpected pos", detected from the
    free space left). None for anything else (re-raise it as it is)."""
    if not isinstance(exc, Exception) or isinstance(exc, WriteError):
        return None
    code = _space_errno(exc, Path(path))
    if code is not None:
        return WriteError(code, f"{_SPACE[code]} while writing {path}", str(path))
    if isinstance(exc, OSError):
        return WriteError(exc.errno, f"could not write {path}: {exc.strerror or exc}", str(path))
    return None


def _space_errno(exc: Exception, path: Path) -> int | None:
    if isinstance(exc, OSError) and exc.errno in _SPACE:
        return exc.errno
    text = str(exc).lower()
    for code, needles in _SPACE_TEXT.items():
        if any(n in text for n in needles):
            return code
    if not isinstance(exc, OSError):
        try:
            st = os.statvfs(path.parent)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize < FULL_BYTES:
            return errno.ENOSPC
    return None


@contextmanager
def discard_on_error(tmp: Path, path: str | os.PathLike) -> Iterator[None]:
    """Remove the temporary `tmp` if the block raises; an OSError comes back as a `WriteError` naming `path`."""
    try:
        yield
    except BaseException as exc:
        err = write_error(exc, path)  # before discarding: the free space tells a full disk
        discard(tmp)
        if err is None:
            raise
        raise err from exc


def _name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{kind}")


def temporary(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Create an empty temporary file (or folder) beside `path`, named ``.<name>.<random>.tmp``,
    with the mode the target would get (umask honoured); creates the parent folders."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = _name(path, "tmp")
            try:
                if folder:
                    os.mkdir(tmp, 0o777)
                else:
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return tmp
            except FileExistsError:
                continue
    except OSError as exc:
        raise write_error(exc, path) from exc


def commit(tmp: Path, path: str | os.PathLike) -> None:
    """Flush `tmp` (a file, or a folder and everything in it) to disk and put it in place of `path`."""
    path = Path(path)
    with discard_on_error(tmp, path):
        _fsync_tree(tmp)
        if (tmp.is_dir() and not tmp.is_symlink()) or (path.is_dir() and not path.is_symlink()):
            _swap(tmp, path)  # a folder, or a file replacing a folder
        else:
            os.replace(tmp, path)
            _fsync_dir(path.parent)


def _swap(tmp: Path, path: Path) -> None:
    old = _name(path, "old") if os.path.lexists(path) else None
    if old is not None:
        os.rename(path, old)
    try:
        if old is not None:
            _fsync_dir(path.parent)
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not os.path.lexists(path):
            os.rename(old, path)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        discard(old)


def discard(tmp: Path) -> None:
    """Delete a temporary file or folder (no error if it is gone)."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path (an empty file, or an empty folder) to write `path`'s new version
    into by name; on success it replaces `path`, on any error it is removed and `path` is unchanged."""
    tmp = temporary(path, folder=folder)
    mode = stat.S_IMODE(tmp.stat().st_mode)
    with discard_on_error(tmp, path):
        yield tmp
        if stat.S_IMODE(tmp.lstat().st_mode) != mode:  # a writer that made the file anew (safetensors: 0600)
            os.chmod(tmp, mode)
        commit(tmp, path)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                errors: str | None = None, newline: str | None = None) -> Iterator[IO]:
    """`open(path, mode)` for writing ("w", "wb", "wt"), atomically: see `atomic_path`."""
    if not mode.startswith("w") or "+" in mode:
        raise ValueError(f"atomic_open writes a whole file: mode {mode!r} is not 'w', 'wb' or 'wt'")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding, errors=errors, newline=newline) as f:
        yield f


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """`Path(path).write_text(text)`, atomically (a report or a benchmark's JSON)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def _temporaries(folder: Path, names: set[str] | None) -> list[tuple[Path, str, str]]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        m = TEMPORARY.match(entry.name)
        if m and (names is None or m["name"] in names):
            found.append((Path(entry.path), m["name"], m["kind"]))
    return sorted(found)


def recover(path: str | os.PathLike) -> bool:
    """If `path` is missing because a folder swap was killed between its two renames, rename the
    set-aside previous version (``.<name>.<random>.old``; the newest if several) back. Returns
    whether it did."""
    path = Path(path)
    if os.path.lexists(path):
        return False
    olds = [p for p, _, kind in _temporaries(path.parent, {path.name}) if kind == "old"]
    if not olds:
        return False
    newest = max(olds, key=lambda p: (p.lstat().st_mtime_ns, p.name))
    os.rename(newest, path)
    _fsync_dir(path.parent)
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: str | Iterable[str] | None = None) -> int:
    """Delete the temporaries killed runs left in `folder` (of the targets `names` only, when given:
    a folder other writers share), after `recover`ing a target a killed swap left missing.
    Returns how many were removed."""
    folder = Path(folder)
    names = {names} if isinstance(names, str) else None if names is None else set(names)
    for name in {n for _, n, kind in _temporaries(folder, names) if kind == "old"}:
        recover(folder / name)
    stale = _temporaries(folder, names)
    for tmp, _, _ in stale:
        discard(tmp)
    return len(stale)


def preallocate(path: str | os.PathLike) -> None:
    """Reserve the disk blocks of a sparse file (a new memory-mapped array) so that a full disk
    raises ENOSPC now, instead of SIGBUS when the mapping is written. A no-op on a filesystem
    without fallocate."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync_file(Path(root) / name)
            _fsync_dir(Path(root))
    else:
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power cut (skipped where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED | {errno.EBADF}:
            raise
    finally:
        os.close(fd)
