"""Object storage: any path the project reads or writes may be an fsspec URL (``s3://bucket/x``,
``gs://...``, ``az://...``) as well as a local path. Plain Python (fsspec), no Kedro.

- `is_url`, `redact` (a URL's ``user:password@`` shown as ``***@``), `filesystem` (the fsspec file
  system and path of a URL, with the configured storage options), `join`, `listing`, `info`,
  `read_range`, `remove`.
- Writing: `writing(target)` yields a local temporary path; once the block has written it, the
  file is published whole: a local target by rename (`pemt_pipeline.atomic`), a URL by one upload
  (`put_whole`; an object store shows an object only once its upload has completed, never a half
  one). Callers that also keep an index (the manifest) record an object after it is written.
- Reading: `local_copy(url)` is a local copy of a remote file in a bounded cache (`ObjectCache`):
  files are keyed by URL, checked once per process against the object's version (ETag, size), and
  the least recently used are deleted so that the cache stays under `cache_max_gb`.
- Configuration (`configure`, `StorageConfig`): storage options (credentials, endpoint) per
  protocol are set as fsspec's defaults for that protocol (``fsspec.config.conf``), so every fsspec
  user in the process (kedro-datasets' datasets, pandas, this module) gets them, and exported as
  fsspec's ``FSSPEC_<PROTOCOL>`` environment variable of this process, so worker processes started
  from it (spawned DDP workers, DataLoader and ingestion workers) get them too. They are never
  written to a file, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import fsspec.config
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from pemt_pipeline.atomic import TEMPORARY, WriteError, atomic_path, write_error
from pemt_pipeline.configs import NON_EMPTY, above, from_params, require

logger = logging.getLogger(__name__)

LOCAL_PROTOCOLS = ("file", "local")
CACHE_DIR_ENV = "PEMT_STORAGE_CACHE_DIR"  # the cache of this process and the workers it starts
CACHE_MAX_GB_ENV = "PEMT_STORAGE_CACHE_MAX_GB"
DEFAULT_CACHE_DIR = "data/.object_cache"
DEFAULT_CACHE_MAX_GB = 20.0
CREDENTIALS_KEY = "object_storage"  # the entry of Kedro's credentials (conf/local/credentials.yml)
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@?#]*)@")
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "crc32c", "generation", "version_id", "VersionId", "mtime",
                 "LastModified", "last_modified", "updated", "created")


# --------------------------------------------------------------------------- URLs
def is_url(path: str | os.PathLike | None) -> bool:
    """Whether `path` names a remote file system (``s3://``, ``gs://``, ``memory://`` ...); local
    paths and ``file://`` URLs are not."""
    if path is None or isinstance(path, Path):
        return False
    return "://" in str(path) and get_protocol(str(path)) not in LOCAL_PROTOCOLS


def local_path(path: str | os.PathLike) -> Path:
    """A local path (a ``file://`` URL as the path it names)."""
    text = os.fspath(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def redact(path: str | os.PathLike | None) -> str:
    """`path` as text that is safe to show: a URL's user information (``user:password@``) is
    replaced by ``***@``."""
    return _USERINFO.sub(r"\g<scheme>***@", "" if path is None else os.fspath(path))


def has_userinfo(path: str | os.PathLike | None) -> bool:
    return path is not None and not isinstance(path, Path) and bool(_USERINFO.match(str(path)))


def refuse_userinfo(path: str | os.PathLike | None, what: str) -> None:
    """A ValueError (without the secret) when a URL carries ``user:password@``: the project writes
    paths into its outputs (the manifest names each shard), so credentials belong in Kedro's
    credentials, not in a path."""
    if has_userinfo(path):
        raise ValueError(f"{what} {redact(path)!r} carries credentials in the URL: put them in "
                         f"conf/local/credentials.yml under {CREDENTIALS_KEY!r} instead (see README, Object storage)")


def join(base: str | os.PathLike, *parts: str) -> str | Path:
    """`base`/`parts`: a URL string for a URL, else a Path."""
    if not is_url(base):
        return local_path(base).joinpath(*parts)
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def name_of(path: str | os.PathLike) -> str:
    """The last part of a path or URL."""
    return str(path).rstrip("/").rsplit("/", 1)[-1] if is_url(path) else local_path(path).name


def filesystem(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None):
    """(fsspec file system, path inside it) for a URL or a local path; `storage_options` add to
    (and win over) the configured defaults of the URL's protocol."""
    return url_to_fs(str(url) if is_url(url) else str(local_path(url)), **dict(storage_options or {}))


def _fs_error(exc: Exception, path: str | os.PathLike, doing: str) -> OSError:
    """An OSError naming the redacted path, for an error of a remote file system."""
    if isinstance(exc, FileNotFoundError):
        return FileNotFoundError(errno.ENOENT, f"{redact(path)} does not exist")
    if isinstance(exc, PermissionError):
        return PermissionError(errno.EACCES, f"no permission {doing} {redact(path)} (check the credentials "
                               f"entry {CREDENTIALS_KEY!r})")
    return OSError(getattr(exc, "errno", None) or errno.EIO, f"could not {doing} {redact(path)}: {type(exc).__name__}")


def info(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The file system's description of a file or folder (``size``, ``type``, the version fields);
    FileNotFoundError when it is missing."""
    fs, path = filesystem(url, storage_options)
    return fs.info(path)


def version(description: Mapping[str, Any]) -> str:
    """A short stamp of an object's version from its `info`: size and the first version field the
    store reports (ETag for S3), so a changed object gets another stamp without reading it."""
    field = next((k for k in _VERSION_KEYS if description.get(k) not in (None, "")), None)
    text = f"{description.get('size')}:{field}:{description.get(field) if field else ''}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def listing(folder: str | os.PathLike, suffix: str = "", storage_options: Mapping[str, Any] | None = None,
            recursive: bool = False) -> dict[str, dict[str, Any]]:
    """{name (relative to `folder`, POSIX): info} of the files in `folder` (below it too when
    `recursive`) whose name ends with `suffix`; a missing folder lists nothing. One listing request
    per folder (per page) on an object store: no request per file."""
    fs, root = filesystem(folder, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # another process may have written since this one listed
    try:
        found = fs.find(root, detail=True) if recursive else {e["name"]: e for e in fs.ls(root, detail=True)}
    except FileNotFoundError:
        return {}
    out = {}
    for name, entry in found.items():
        rel = name.rstrip("/")[len(root) + 1:] if name.startswith(root + "/") else name.rsplit("/", 1)[-1]
        if entry.get("type") == "file" and rel and rel.endswith(suffix):
            out[rel] = entry
    return dict(sorted(out.items()))


def read_range(url: str | os.PathLike, start: int, end: int,
               storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Bytes [start, end) of a file (one ranged request on an object store; fewer at its end)."""
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path, start=start, end=end)


def remove(url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete a file (no error if it is gone)."""
    fs, path = filesystem(url, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def makedirs(folder: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> None:
    """Create a folder (on an object store: nothing to create, folders are prefixes)."""
    if is_url(folder):
        return
    local_path(folder).mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- writing
def put_whole(local: str | os.PathLike, target: str | os.PathLike,
              storage_options: Mapping[str, Any] | None = None) -> None:
    """Publish a finished local file at `target`, whole: a local target by rename (a copy beside
    it first when on another disk, `pemt_pipeline.atomic`); a URL by one upload, which the object
    store shows only once complete (S3: a PUT, or a multipart upload that appears when completed).
    `local` is left in place for a URL (the caller deletes it) and moved for a local target.
    A failure raises `WriteError` naming the (redacted) target; the previous version stays."""
    local = Path(local)
    if not is_url(target):
        with atomic_path(local_path(target)) as tmp:
            try:
                os.replace(local, tmp)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(local, tmp)
        return
    fs, path = filesystem(target, storage_options)
    try:
        fs.put_file(str(local), path)
    except Exception as exc:  # noqa: BLE001 - botocore / aiohttp errors: reported without their text
        code = getattr(exc, "errno", None)
        raise WriteError(code if isinstance(code, int) else errno.EIO,
                         f"could not upload {redact(target)} ({type(exc).__name__})", redact(target)) from None
    fs.invalidate_cache(path)
    forget_checked(str(target))  # this process's next read checks the new version


@contextlib.contextmanager
def writing(target: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
            suffix: str = "") -> Iterator[Path]:
    """Yield a local temporary path to write `target`'s new version into; when the block ends
    without error the file is published whole (`put_whole`), else it is deleted and `target` is
    unchanged. Local targets: `pemt_pipeline.atomic.atomic_path` (temporary beside the target)."""
    if not is_url(target):
        with atomic_path(local_path(target)) as tmp:
            yield tmp
        return
    folder = cache_config().root / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{name_of(target)}.", suffix=f"{suffix}.tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
        except BaseException as exc:
            err = write_error(exc, tmp)
            if err is None:
                raise
            raise WriteError(err.errno, f"{err.strerror or err} (building {redact(target)} locally)",
                             redact(target)) from exc
        put_whole(tmp, target, storage_options)
    finally:
        tmp.unlink(missing_ok=True)


def upload_folder(local: str | os.PathLike, target: str | os.PathLike, last: tuple[str, ...] = (),
                  storage_options: Mapping[str, Any] | None = None) -> None:
    """Upload every file of a finished local folder under `target` (each object whole), the files
    named in `last` (relative paths, e.g. an index that names the others) after all the rest, and
    delete objects under `target` that the folder no longer has, before those. A local target: the
    folder is swapped in whole (`pemt_pipeline.atomic`)."""
    local = Path(local)
    if not is_url(target):
        with atomic_path(local_path(target), folder=True) as tmp:
            shutil.copytree(local, tmp, dirs_exist_ok=True)
        return
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    stale = set(listing(target, recursive=True, storage_options=storage_options)) - set(files)
    for rel in sorted(files, key=lambda r: (r in last, last.index(r) if r in last else 0, r)):
        if rel in last:
            for old in sorted(stale):  # before the index: nothing it names is deleted after it
                remove(join(target, old), storage_options)
            stale = set()
        put_whole(local / rel, join(target, rel), storage_options)
    for old in sorted(stale):
        remove(join(target, old), storage_options)


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class StorageConfig:
    """``storage:`` (conf/base/parameters_storage.yml documents each): the local read cache of
    remote files and the protocol a flat credentials entry is for."""

    cache_dir: str = DEFAULT_CACHE_DIR
    cache_max_gb: float = DEFAULT_CACHE_MAX_GB
    protocol: str = "s3"

    def validate(self) -> None:
        require("storage", self, cache_dir=NON_EMPTY, cache_max_gb=above(0), protocol=NON_EMPTY)
        if is_url(self.cache_dir):
            raise ValueError(f"storage.cache_dir must be a local folder, got {redact(self.cache_dir)!r}")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> StorageConfig:
        return from_params(cls, params or {}, "storage")


def storage_options_by_protocol(credentials: Mapping[str, Any] | None, protocol: str = "s3") -> dict[str, dict]:
    """A credentials entry as {protocol: storage options}: either a mapping of protocols (``s3:``,
    ``gcs:``, ...) to options, or one flat mapping of options (``key``, ``secret``,
    ``client_kwargs``...) for `protocol`."""
    if not credentials:
        return {}
    if not isinstance(credentials, Mapping):
        raise ValueError(f"credentials entry {CREDENTIALS_KEY!r} must be a mapping of storage options")
    known = set(fsspec.available_protocols())
    if all(k in known and isinstance(v, Mapping) for k, v in credentials.items()):
        return {k: dict(v) for k, v in credentials.items()}
    return {protocol: dict(credentials)}


def configure(options: Mapping[str, Mapping[str, Any]] | None = None, cache_dir: str | os.PathLike | None = None,
              cache_max_gb: float | None = None) -> None:
    """Set this process's storage defaults (and those of the workers it starts): `options`
    {protocol: storage options} become fsspec's defaults for each protocol (replacing what an
    earlier call set; None or {} clears them), `cache_dir` (made absolute) and `cache_max_gb`
    the read cache's folder and bound. Nothing is logged but the protocols and the cache."""
    global _configured
    previous = _configured
    for protocol in _configured:
        fsspec.config.conf.pop(protocol, None)
        os.environ.pop(f"FSSPEC_{protocol.upper()}", None)
    _configured = tuple(options or ())
    for protocol, opts in (options or {}).items():
        fsspec.config.conf[protocol] = dict(opts)
        os.environ[f"FSSPEC_{protocol.upper()}"] = json.dumps(dict(opts))
    for protocol in set(previous) | set(options or ()):
        # file systems made before (fsspec's instance cache keeps them) would keep the old options
        with contextlib.suppress(ImportError, ValueError):
            fsspec.get_filesystem_class(protocol).clear_instance_cache()
    if cache_dir is not None:
        os.environ[CACHE_DIR_ENV] = str(Path(cache_dir).absolute())
    if cache_max_gb is not None:
        os.environ[CACHE_MAX_GB_ENV] = repr(float(cache_max_gb))
    if _configured:
        cache = cache_config()
        logger.info("object storage: options for %s from the credentials entry %r; read cache %s (at most %.3g GB)",
                    ", ".join(_configured), CREDENTIALS_KEY, cache.root, cache.max_bytes / 1e9)


_configured: tuple[str, ...] = ()


# --------------------------------------------------------------------------- the read cache
class ObjectCache:
    """Local copies of remote files in `root`, at most `max_bytes` in all (least recently used
    deleted first; the file just fetched is always kept, even alone over the bound).

    A copy is ``<root>/objects/<sha256(url)>[.suffix]`` plus a ``.version`` sidecar (the object's
    `version`); the first use in a process checks the object's version (one metadata request, none
    when a listing gave it, `note_listing`) and fetches it again when it changed; later uses in the
    process only touch it (its modification time is its last use), unless a later listing shows
    another version. Downloads go to a temporary name in `root` and are renamed, so
    concurrent processes (DataLoader workers) never read a partial copy."""

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._checked: dict[str, str] = {}  # url -> the version this process found its copy at
        self._known: dict[str, tuple[str, int, str]] = {}  # url -> (version, size, type) from a listing

    def note_listing(self, folder: str, entries: Mapping[str, Mapping[str, Any]]) -> None:
        """Remember the objects' descriptions from a listing of `folder` ({name: info}, `listing`),
        so that their first use needs no metadata request (workers forked later inherit them)."""
        for name, entry in entries.items():
            self._known[join(folder, name)] = (version(entry), int(entry.get("size") or 0), entry.get("type", "file"))

    def __repr__(self) -> str:
        return f"ObjectCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def forget(self, url: str | None = None) -> None:
        """Check `url`'s version again on its next use (None: every URL's)."""
        if url is None:
            self._checked.clear()
            self._known.clear()
        else:
            self._checked.pop(url, None)
            self._known.pop(url, None)

    def path_for(self, url: str) -> Path:
        key = hashlib.sha256(url.encode()).hexdigest()[:40]
        suffix = Path(name_of(url)).suffix
        return self.root / "objects" / f"{key}{suffix}"

    def local_copy(self, url: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> Path:
        """The local copy of `url`, fetched if missing or out of date (FileNotFoundError, naming the
        redacted URL, when the object does not exist)."""
        url = str(url)
        target = self.path_for(url)
        known, checked = self._known.get(url), self._checked.get(url)
        if checked is not None and (known is None or known[0] == checked) and _touch(target):
            return target  # checked in this process, and no later listing showed another version
        fs, path = filesystem(url, storage_options)
        if known is not None:
            stamp, size, kind = known
        else:
            try:
                description = fs.info(path)
            except Exception as exc:  # noqa: BLE001
                raise _fs_error(exc, url, "to read") from None
            stamp, size, kind = version(description), int(description.get("size") or 0), description.get("type")
        if kind == "directory":
            raise IsADirectoryError(errno.EISDIR, f"{redact(url)} is a folder, not a file")
        sidecar = target.with_name(target.name + ".version")
        if _read_text(sidecar) != stamp or not _touch(target):
            self._fetch(fs, path, url, target, sidecar, stamp, size)
        self._checked[url] = stamp
        return target

    def _fetch(self, fs, path: str, url: str, target: Path, sidecar: Path, stamp: str, size: int) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.evict(need=size, keep=target)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            fs.get_file(path, str(tmp))
            os.replace(tmp, target)  # the copy first, then its version: a reader never trusts a stale copy
            sidecar_tmp = tmp.with_name(tmp.name + ".v")
            sidecar_tmp.write_text(stamp)
            os.replace(sidecar_tmp, sidecar)
        except OSError as exc:
            if write_error(exc, tmp) is not None and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise WriteError(exc.errno, f"no space left in the object cache {self.root} while fetching "
                                 f"{redact(url)} (lower storage.cache_max_gb or free disk space)",
                                 str(self.root)) from None
            raise _fs_error(exc, url, "to read") from None
        except Exception as exc:  # noqa: BLE001 - botocore / aiohttp errors: reported without their text
            raise _fs_error(exc, url, "to read") from None
        finally:
            tmp.unlink(missing_ok=True)

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of each cached copy, oldest first."""
        out = []
        try:
            scan = list(os.scandir(self.root / "objects"))
        except FileNotFoundError:
            return []
        for entry in scan:
            if entry.name.endswith(".version") or TEMPORARY.match(entry.name) or entry.name.endswith(".tmp"):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return sorted(out)

    def size(self) -> int:
        return sum(s for _, s, _ in self.entries())

    def evict(self, need: int = 0, keep: Path | None = None) -> int:
        """Delete least recently used copies until `need` more bytes fit under the bound (down to
        90% of it, so that not every fetch evicts). Returns the bytes freed."""
        entries = [e for e in self.entries() if e[2] != keep]
        total = sum(s for _, s, _ in entries)
        if total + need <= self.max_bytes:
            return 0
        goal, freed = max(0, int(0.9 * self.max_bytes) - need), 0
        for _, size, path in entries:
            if total - freed <= goal:
                break
            path.with_name(path.name + ".version").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            freed += size
        return freed


def _touch(path: Path) -> bool:
    """Mark a copy as just used; False when it does not exist."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@dataclass(frozen=True)
class CacheSettings:
    root: Path
    max_bytes: int


def cache_config() -> CacheSettings:
    """The read cache of this process: `configure`d (or the environment a parent process set),
    else the defaults."""
    root = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).absolute()
    max_gb = float(os.environ.get(CACHE_MAX_GB_ENV) or DEFAULT_CACHE_MAX_GB)
    return CacheSettings(root, int(max_gb * 1e9))


_caches: dict[tuple[Path, int], ObjectCache] = {}


def object_cache() -> ObjectCache:
    """The process's `ObjectCache` for the current `cache_config` (one per settings, so its
    per-process checks are kept across calls)."""
    settings = cache_config()
    key = (settings.root, settings.max_bytes)
    if key not in _caches:
        _caches[key] = ObjectCache(settings.root, settings.max_bytes)
    return _caches[key]


def local_copy(path: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> Path:
    """A local path to read `path` from: the path itself when local, else the cached copy of the
    remote file (`object_cache`)."""
    if not is_url(path):
        return local_path(path)
    return object_cache().local_copy(path, storage_options)


def forget_checked(url: str | None = None) -> None:
    """Forget that this process checked the copy of `url` (None: of every URL): its next use checks
    the object's version again."""
    for cache in _caches.values():
        cache.forget(url)


def download(url: str | os.PathLike, folder: str | os.PathLike,
             storage_options: Mapping[str, Any] | None = None) -> Path:
    """A remote file downloaded to a new temporary file in `folder` (``.<name>.<random>.tmp``; the
    caller deletes it). Errors name the redacted URL; a full disk is a `WriteError`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{name_of(url)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    start = time.perf_counter()
    try:
        fs, path = filesystem(url, storage_options)
        fs.get_file(path, str(tmp))
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WriteError(exc.errno, f"no space left on device in {folder} while downloading {redact(url)}",
                             str(folder)) from None
        if isinstance(exc, Exception):
            raise _fs_error(exc, url, "to read") from None
        raise
    logger.debug("downloaded %s (%d bytes) in %.2f s", redact(url), tmp.stat().st_size, time.perf_counter() - start)
    return tmp


@contextlib.contextmanager
def downloaded(url: str | os.PathLike, folder: str | os.PathLike,
               storage_options: Mapping[str, Any] | None = None) -> Iterator[Path]:
    """`download`, deleted when the block ends (a local path is yielded as it is)."""
    if not is_url(url):
        yield local_path(url)
        return
    tmp = download(url, folder, storage_options)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
