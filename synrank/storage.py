"""Every artefact by URL: a local path, ``file://``, or any fsspec URL (``s3://``, ``gs://``, ``memory://``).

This module is the only place that turns a URL into a filesystem. Local URLs stay plain path
strings; remote URLs are never passed through ``Path()``.

Writes are atomic: a file appears under its final name complete, or not at all. Locally the data
goes to a temporary sibling that is renamed onto the target; remotely it goes to a local temporary
file that is uploaded with one object put (atomic per object; multipart uploads become visible
only when completed). With ``overwrite=False`` an existing target raises FileExistsError and
nothing changes: locally by hard-linking the temporary file (exclusive create), on S3 with a
conditional put (``If-None-Match: *``); on other object stores it is an exists-check before the
put, which is not race-free.

Credentials and endpoints come from the standard environment: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` (s3fs via botocore),
``GOOGLE_APPLICATION_CREDENTIALS`` (gcsfs).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

_OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


# --------------------------------------------------------------------------------------------
# URLs


def is_local(url: str | os.PathLike) -> bool:
    text = os.fspath(url)
    return "://" not in text or text.startswith("file://")


def _local(url: str | os.PathLike) -> str:
    text = os.fspath(url)
    return text[len("file://"):] if text.startswith("file://") else text


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base` / parts. Local: a plain path string (``file://`` dropped); remote: ``proto://a/b``."""
    if is_local(base):
        return os.path.join(_local(base), *parts)
    text = os.fspath(base).rstrip("/")
    rest = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([text, *rest])


def absolute(url: str | os.PathLike) -> str:
    """A local path made absolute (``~`` expanded, symlinks resolved); a remote URL as is."""
    if is_local(url):
        return str(Path(_local(url)).expanduser().resolve())
    return os.fspath(url).rstrip("/")


def name(url: str | os.PathLike) -> str:
    """The last component of `url` (``s3://b/x/model/`` -> ``model``)."""
    return os.fspath(url).rstrip("/").rsplit("/", 1)[-1]


def parent(url: str | os.PathLike) -> str:
    text = os.fspath(url).rstrip("/")
    if is_local(text):
        return os.path.dirname(_local(text))
    return text.rsplit("/", 1)[0]


# --------------------------------------------------------------------------------------------
# filesystems


def _storage_options(url: str) -> dict[str, Any]:
    proto = _protocol(url)
    if proto not in _OBJECT_STORES:
        return {}
    # Another process's writes must be seen: no cached listings.
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if proto in ("s3", "s3a") and endpoint:
        # Recent botocore reads AWS_ENDPOINT_URL itself; passing it explicitly also covers older
        # ones and keys fsspec's instance cache by endpoint.
        options["endpoint_url"] = endpoint
    return options


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for `url`."""
    text = os.fspath(url)
    if is_local(text):
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(_local(text)))
    return fsspec.core.url_to_fs(text, **_storage_options(text))


def pyarrow_filesystem(url: str | os.PathLike):
    """(pyarrow.fs.FileSystem, path) for Ray Train's ``RunConfig(storage_path=path,
    storage_filesystem=fs)`` and Ray Data reads; remote URLs wrap the same fsspec filesystem
    (same credentials and endpoint) in a ``PyFileSystem``."""
    import pyarrow.fs as pafs

    text = os.fspath(url)
    if is_local(text):
        return pafs.LocalFileSystem(), absolute(text)
    fs, path = filesystem(text)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


# --------------------------------------------------------------------------------------------
# queries and removal


def exists(url: str | os.PathLike) -> bool:
    if is_local(url):
        return os.path.exists(_local(url))
    fs, p = filesystem(url)
    return fs.exists(p)


def size(url: str | os.PathLike | None) -> int:
    """Bytes under `url` (a file, or every file of a folder); 0 when nothing is there."""
    if not url:
        return 0
    fs, path = filesystem(url)
    try:
        return int(fs.du(path, total=True))
    except FileNotFoundError:
        return 0


def isdir(url: str | os.PathLike) -> bool:
    if is_local(url):
        return os.path.isdir(_local(url))
    fs, p = filesystem(url)
    return fs.isdir(p)


def listdir(url: str | os.PathLike) -> list[str]:
    """Sorted names (not paths) directly under `url`; [] if it does not exist."""
    if is_local(url):
        path = _local(url)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs, p = filesystem(url)
    try:
        entries = fs.ls(p, detail=False)
    except FileNotFoundError:
        return []
    p = p.rstrip("/")
    return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != p})


def remove(url: str | os.PathLike, recursive: bool = True) -> None:
    """Delete a file or (with `recursive`) a directory; a missing one is fine."""
    if is_local(url):
        path = _local(url)
        if os.path.isdir(path) and not os.path.islink(path):
            if recursive:
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.rmdir(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return
    fs, p = filesystem(url)
    try:
        fs.rm(p, recursive=recursive)
    except FileNotFoundError:
        pass


def makedirs(url: str | os.PathLike) -> None:
    """Create a local directory (and parents); object stores have no directories: a no-op."""
    if is_local(url):
        os.makedirs(_local(url), exist_ok=True)


# --------------------------------------------------------------------------------------------
# reads


def open(url: str | os.PathLike, mode: str = "rb", **kwargs: Any):  # noqa: A001 - mirrors fsspec.open
    """Open `url` for reading (``compression="infer"`` and ``encoding`` as in fsspec). Writes go
    through the write_* functions or `atomic_path`, never through an open handle."""
    if "r" not in mode or any(c in mode for c in "wax+"):
        raise ValueError(f"storage.open({url!r}): only read modes; write with storage.write_* or atomic_path")
    fs, p = filesystem(url)
    try:
        return fs.open(p, mode, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(url)}: no such file") from None


def read_bytes(url: str | os.PathLike) -> bytes:
    if is_local(url):
        try:
            with builtins.open(_local(url), "rb") as handle:
                return handle.read()
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{os.fspath(url)}: no such file") from None
    fs, p = filesystem(url)
    try:
        return fs.cat_file(p)
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"{os.fspath(url)}: no such file") from None


def read_text(url: str | os.PathLike) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str | os.PathLike) -> Any:
    return json.loads(read_bytes(url))


def read_parquet(url: str | os.PathLike, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """A Parquet file, or a folder of parts (names starting with ``_`` or ``.`` are skipped);
    `schema` unifies parts whose schemas differ in metadata or nullability."""
    if is_local(url):
        path = _local(url)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{os.fspath(url)}: no such file or folder")
        return pq.read_table(path, columns=columns, schema=schema)
    fs, p = filesystem(url)
    if not fs.exists(p):
        raise FileNotFoundError(f"{os.fspath(url)}: no such file or folder")
    if fs.isfile(p):
        with fs.open(p, "rb") as handle:
            return pq.read_table(handle, columns=columns, schema=schema)
    return pq.read_table(p, columns=columns, schema=schema, filesystem=fs)


# --------------------------------------------------------------------------------------------
# atomic writes


def _exists_error(url: str | os.PathLike) -> FileExistsError:
    return FileExistsError(f"{os.fspath(url)} exists already (overwrite=False): left as it was")


def _put(local_file: str, url: str, overwrite: bool) -> None:
    fs, p = filesystem(url)
    if overwrite:
        fs.put_file(local_file, p)
        return
    if _protocol(url) in ("s3", "s3a"):
        try:
            fs.put_file(local_file, p, mode="create")  # If-None-Match: *
        except FileExistsError:
            raise _exists_error(url) from None
        return
    # No conditional put here: check, then put (not race-free).
    if fs.exists(p):
        raise _exists_error(url)
    fs.put_file(local_file, p)


@contextlib.contextmanager
def atomic_path(url: str | os.PathLike, *, overwrite: bool = True) -> Iterator[str]:
    """Yield a local temporary file path to write; on success it becomes `url` (see the module
    doc), on error it is removed and `url` is left as it was."""
    text = os.fspath(url)
    if not overwrite and exists(text):
        raise _exists_error(text)
    if is_local(text):
        final = _local(text)
        folder = os.path.dirname(os.path.abspath(final))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=folder)
    else:
        fd, tmp = tempfile.mkstemp(prefix="synrank-upload-", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        if is_local(text):
            # mkstemp creates 0600; give the file the mode a plain open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            if overwrite:
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)  # fails if `final` exists: an exclusive create
                except FileExistsError:
                    raise _exists_error(text) from None
        else:
            _put(tmp, text, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(data: bytes, url: str | os.PathLike, *, overwrite: bool = True) -> None:
    with atomic_path(url, overwrite=overwrite) as tmp, builtins.open(tmp, "wb") as handle:
        handle.write(data)


def write_text(text: str, url: str | os.PathLike, *, overwrite: bool = True) -> None:
    write_bytes(text.encode("utf-8"), url, overwrite=overwrite)


def write_json(obj: Any, url: str | os.PathLike, *, overwrite: bool = True) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", url, overwrite=overwrite)


def write_parquet(table: pa.Table, url: str | os.PathLike, *, overwrite: bool = True, **kwargs: Any) -> None:
    """One Parquet file; `kwargs` go to ``pyarrow.parquet.write_table``."""
    with atomic_path(url, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp, **kwargs)


# --------------------------------------------------------------------------------------------
# directories


def _local_files(folder: str) -> list[str]:
    out = []
    for root, _, files in os.walk(folder):
        out.extend(os.path.relpath(os.path.join(root, f), folder) for f in files)
    return sorted(out)


def _remote_files(fs, root: str) -> dict[str, dict]:
    """{relative posix path: info} of every file under `root`."""
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    return {k[len(root) + 1:]: v for k, v in found.items() if v.get("type") != "directory" and k != root}


def upload_dir(local_dir: str | os.PathLike, url: str | os.PathLike) -> None:
    """Make `url` an exact copy of the local directory `local_dir` (what was there is replaced)."""
    src = os.fspath(local_dir)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"{src}: no such directory to upload")
    if is_local(url):
        target = _local(url)
        if os.path.exists(target) and os.path.samefile(target, src):
            return
        remove(target)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        shutil.copytree(src, target)
        return
    remove(url)
    fs, p = filesystem(url)
    for rel in _local_files(src):
        fs.put_file(os.path.join(src, rel), f"{p.rstrip('/')}/{rel.replace(os.sep, '/')}")


def download_dir(url: str | os.PathLike, local_dir: str | os.PathLike) -> None:
    """Copy every file under `url` into the local directory `local_dir` (created if missing)."""
    dest = os.fspath(local_dir)
    if is_local(url):
        src = _local(url)
        if not os.path.isdir(src):
            raise FileNotFoundError(f"{os.fspath(url)}: no such directory")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return
    fs, p = filesystem(url)
    files = _remote_files(fs, p)
    if not files:
        raise FileNotFoundError(f"{os.fspath(url)}: no such directory (or it is empty)")
    for rel in files:
        target = os.path.join(dest, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get_file(f"{p.rstrip('/')}/{rel}", target)


def cache_root() -> str:
    base = os.environ.get("SYNRANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "synrank")
    return os.path.join(base, "storage")


def _fingerprint(entries: dict[str, dict]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(entries):
        info = entries[rel]
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or info.get("LastModified")
        digest.update(f"{rel}\0{info.get('size')}\0{tag}\n".encode())
    return digest.hexdigest()[:16]


def local_copy(url: str | os.PathLike) -> str:
    """A local path holding `url`: a local URL as is; a remote file or directory (e.g. an exported
    model) downloaded once per node into ``$SYNRANK_CACHE/storage`` (default
    ``~/.cache/synrank/storage``), keyed by the URL and a fingerprint of its content (names, sizes,
    ETags), under a file lock so that concurrent processes on one node download it once."""
    from filelock import FileLock

    text = os.fspath(url)
    if is_local(text):
        return _local(text)
    fs, p = filesystem(text)
    if not fs.exists(p):
        raise FileNotFoundError(f"{text}: no such file or directory")
    single = fs.isfile(p)
    entries = {name(p): fs.info(p)} if single else _remote_files(fs, p)
    if not entries:
        raise FileNotFoundError(f"{text}: an empty directory")
    key = hashlib.sha256(text.rstrip("/").encode()).hexdigest()[:16] + "-" + _fingerprint(entries)
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, key)
    result = os.path.join(target, name(p)) if single else target
    with FileLock(target + ".lock", timeout=3600):
        if os.path.isdir(target):
            return result
        tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=root)
        try:
            if single:
                fs.get_file(p, os.path.join(tmp, name(p)))
            else:
                download_dir(text, tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return result
