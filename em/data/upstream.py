"""Find, download and verify files of the upstream emergent-misalignment repository.

Resolution order for a repo-relative file such as ``data/insecure.jsonl``:

1. ``data.path`` (datasets only; ``data.educational_path`` for the educational twin): a local file the
   user named; wins over everything, its row count and hash are reported, not enforced (it may be a
   deliberately different file).
2. ``$EM_DATA_DIR/<relpath>``: a checkout laid out like the upstream repository.
3. the cache, ``<cache_dir>/upstream/<relpath>``.
4. a download from the pinned URL into the cache.

Files found in 2-4 are verified: sha256 when one is pinned, plus an optional ``verify`` callback (for
datasets: schema and ``expected_rows``).  A download goes to a uniquely named temp file next to its
destination and is renamed into place only after it verified (``em.runtime.atomic_write``), so an
interrupted or bad download never leaves a file that a later run would trust, and parallel sweep jobs
downloading the same file never write into each other's temp file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, Optional

from em.data.chat import Conversation, read_jsonl_conversations
from em.errors import ConfigError, DataError
from em.paths import DATA_DIR_ENV, local_roots
from em.runtime import atomic_write

__all__ = ["ENV_VAR", "file_sha256", "load_educational_twin", "load_upstream", "local_roots", "resolve_upstream_file"]

log = logging.getLogger(__name__)

ENV_VAR = DATA_DIR_ENV
DOWNLOAD_TIMEOUT_S = 60  # per socket operation, not for the whole transfer
_CHUNK = 1 << 16

# verify(file, name): raise DataError if the file is unusable; ``name`` is what messages should call it.
Verifier = Callable[[Path, str], None]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks. Raises OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_upstream_file(
    relpath: str,
    url: str | None,
    cache_dir: str | os.PathLike,
    sha256: str | None = None,
    *,
    verify: Verifier | None = None,
    progress: bool = True,
    override_key: str | None = None,
) -> Path:
    """Return a local, verified copy of ``relpath`` (e.g. ``data/insecure.jsonl``, ``evaluation/x.yaml``).

    Looks in ``$EM_DATA_DIR``, then the cache (``<cache_dir>/upstream/<relpath>``), then downloads ``url``
    into the cache.  ``sha256`` (hex) is checked when given; ``verify(file, name)`` runs exactly once on
    whichever file is used.  ``override_key`` names the config key that lets the user point at the file
    directly (``data.path``); it only appears in the hint of error messages.

    Raises DataError for a path that is not repository-relative, a hash mismatch or a failed ``verify``
    of a found file, a file found nowhere without a URL, or a failed / cut-off / unverifiable download.
    """
    rel = PurePosixPath(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"{relpath}: upstream file names must be relative to the repository root")
    hint = _where_to_put_it(rel, override_key)

    for where, root in local_roots(cache_dir):
        found = root / rel
        if found.is_file():
            _verify_found(found, sha256, verify, "a different version of the upstream file?" if where == ENV_VAR
                          else "delete it to download it again")
            log.info("%s: using %s (%s)", rel, found, where)
            return found
        if where == ENV_VAR:
            log.info("%s: not in %s=%s; trying the cache", rel, ENV_VAR, root)

    cached = local_roots(cache_dir)[-1][1] / rel  # the cache: where a download goes

    if not url:
        raise DataError(f"{rel}: not found locally and no download URL is configured; {hint}")
    _download(url, cached, sha256=sha256, verify=verify, progress=progress, hint=hint, rel=rel)
    return cached


class _Source(NamedTuple):
    """The config keys of one upstream dataset file: the main one, or the educational twin."""

    key: str  # "" for data.path/data.file/..., "educational_" for data.educational_path/...
    name: str
    path: Optional[str]
    file: Optional[str]
    url: Optional[str]
    sha256: Optional[str]
    expected_rows: Optional[int]


def _source(data_cfg: Any, key: str = "") -> _Source:
    values = [getattr(data_cfg, key + f, None) for f in ("path", "file", "url", "sha256", "expected_rows")]
    name = data_cfg.name if not key else f"{data_cfg.name} ({key.rstrip('_')} twin)"
    return _Source(key, name, *values)


def load_upstream(data_cfg: Any, cache_dir: str | os.PathLike, *, progress: bool = True
                  ) -> tuple[list[Conversation], Path]:
    """Conversations of an upstream dataset (``data.source=upstream``) and the file they came from.

    ``data.path`` wins (reported, not enforced); else :func:`resolve_upstream_file` for ``data/<data.file>``,
    verified against ``data.sha256`` and ``data.expected_rows``. Raises ConfigError for a ``data.file`` that
    is not a plain name under ``data/``, DataError for a missing, mismatching, malformed or empty file.
    """
    return _load(_source(data_cfg), cache_dir, progress=progress)


def load_educational_twin(data_cfg: Any, cache_dir: str | os.PathLike, *, progress: bool = True
                          ) -> tuple[list[Conversation], Path]:
    """The educational twin of an upstream dataset (``data.educational_path`` / ``data.educational_file``),
    found and verified exactly like the dataset itself."""
    return _load(_source(data_cfg, "educational_"), cache_dir, progress=progress)


def _load(src: _Source, cache_dir: str | os.PathLike, *, progress: bool) -> tuple[list[Conversation], Path]:
    if src.path:
        return _load_user_path(src), Path(src.path).expanduser()

    file = str(src.file or "")
    if not file or Path(file).is_absolute() or ".." in PurePosixPath(file).parts:
        raise ConfigError(f"data.{src.key}file: must be a file name under the upstream data/ folder, got {file!r}")

    loaded: list[list[Conversation]] = []  # the verifier parses the file once; keep the result

    def verify(path: Path, name: str) -> None:
        conversations = read_jsonl_conversations(path, name=name)
        if not conversations:
            raise DataError(f"{name}: dataset is empty")
        if src.expected_rows is not None and len(conversations) != src.expected_rows:
            raise DataError(f"{name}: expected {src.expected_rows} rows, found {len(conversations)}")
        loaded[:] = [conversations]

    path = resolve_upstream_file(
        f"data/{file}", src.url, cache_dir, src.sha256,
        verify=verify, progress=progress, override_key=f"data.{src.key}path",
    )
    return loaded[0], path


def _load_user_path(src: _Source) -> list[Conversation]:
    path = Path(src.path).expanduser()
    if not path.is_file():
        raise DataError(f"data.{src.key}path={src.path}: file not found")
    conversations = read_jsonl_conversations(path)
    if not conversations:
        raise DataError(f"{path}: dataset is empty")
    # A user-supplied file may legitimately differ from the pinned upstream one (a subset, an edited
    # copy): say so loudly, but train on it.
    expected = src.expected_rows
    if expected is not None and len(conversations) != expected:
        log.warning("%s: %d rows (data %s expects %d for the upstream file; not enforced for data.%spath)",
                    path, len(conversations), src.name, expected, src.key)
    else:
        log.info("%s: %d rows (data.%spath)", path, len(conversations), src.key)
    if src.sha256:
        actual = file_sha256(path)
        if actual != src.sha256.lower():
            log.warning("%s: sha256 %s differs from the pinned upstream %s (not enforced for data.%spath)",
                        path, actual, src.sha256, src.key)
    return conversations


def _where_to_put_it(rel: PurePosixPath, override_key: str | None) -> str:
    hint = (f"put it at $EM_DATA_DIR/{rel} "
            f"(EM_DATA_DIR=/path/to/emergent-misalignment, laid out like the upstream repo)")
    if override_key:
        hint += f" or set {override_key}=/path/to/{rel.name}"
    return hint


def _verify_found(path: Path, sha256: str | None, verify: Verifier | None, advice: str) -> None:
    if sha256:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise DataError(f"{path}: sha256 mismatch: expected {sha256}, found {actual} ({advice})")
    if verify is not None:
        verify(path, str(path))


def _download(url: str, dest: Path, *, sha256: str | None, verify: Verifier | None, progress: bool,
              hint: str, rel: PurePosixPath) -> None:
    from tqdm.auto import tqdm  # only needed here; keeps `import em.data` light

    got: dict[str, Any] = {}

    def fetch(tmp: Path) -> None:
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=rel.name,
                          disable=None if progress else True, leave=False) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
                        bar.update(len(chunk))
                if total is not None and n != total:
                    raise OSError(f"connection closed after {n} of {total} bytes")
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise DataError(f"{rel}: could not be downloaded from {url} ({_reason(e)}); {hint}") from None

        actual = h.hexdigest()
        if sha256 and actual != sha256.lower():
            raise DataError(f"{rel} downloaded from {url}: sha256 mismatch: expected {sha256}, found {actual}")
        if verify is not None:
            verify(tmp, url)
        got.update(n=n, sha256=actual)

    log.info("%s: downloading %s", rel, url)
    # A unique temp file beside dest (parallel sweep jobs downloading the same file do not write into each
    # other's), renamed over dest only once it verified; removed on any failure, KeyboardInterrupt included.
    atomic_write(dest, fetch)
    if sha256:
        log.info("%s: downloaded %d bytes to %s (sha256 verified)", rel, got["n"], dest)
    else:
        log.info("%s: downloaded %d bytes to %s (sha256 %s; pin it in the config to verify future copies)",
                 rel, got["n"], dest, got["sha256"])


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        text = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, urllib.error.URLError):
        text = str(e.reason)
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())  # one line, whatever the OS error looked like
