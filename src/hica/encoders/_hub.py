"""Resolve model sources (local directories, files, Hugging Face Hub ids) without ever hanging offline.

Every hub look-up goes through here: the local HF cache is tried first (``local_files_only``); the network
is used only when offline mode is off (``HICA_OFFLINE``, ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) and
a short socket probe (≤ 3 s, answer cached per process) reaches the hub or the configured HTTPS proxy.
Otherwise a :class:`HicaError` says how to load the model from a local directory instead. Without this,
``huggingface_hub`` retries an unreachable host for ~25 s before giving up.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hica.encoders._common import file_fingerprint
from hica.errors import HicaError

PROBE_TIMEOUT_S = 3.0
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")
_OFFLINE_VARS = ("HICA_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_reason() -> str | None:
    """Why the hub must not be contacted, or None: an offline variable is set or the hub is unreachable."""
    for var in _OFFLINE_VARS:
        if _truthy(os.environ.get(var)):
            return f"offline mode is on ({var}=1)"
    host, port = _probe_target()
    if not _reachable(host, port, PROBE_TIMEOUT_S):
        return f"the network is unreachable ({host}:{port} did not answer within {PROBE_TIMEOUT_S:.0f} s)"
    return None


def _probe_target() -> tuple[str, int]:
    """Host and port to probe: the HTTPS proxy when one is configured, else the hub endpoint."""
    proxy = next(
        (
            os.environ[v]
            for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(v)
        ),
        None,
    )
    if proxy:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return parts.hostname or "localhost", parts.port or 3128
    from huggingface_hub import constants

    parts = urlsplit(constants.ENDPOINT)
    return parts.hostname or "huggingface.co", parts.port or (443 if parts.scheme == "https" else 80)


@functools.cache
def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def reset_reachability_cache() -> None:
    """Forget cached reachability answers (e.g. after the network came back)."""
    _reachable.cache_clear()


def strip_prefix(spec: str, prefix: str) -> str | None:
    """``spec`` without ``prefix`` when it starts with it, else None."""
    return spec[len(prefix) :] if spec.startswith(prefix) else None


def local_dir(spec: str) -> Path | None:
    """The directory ``spec`` names (``local-dir:PATH`` or an existing directory), else None."""
    raw = strip_prefix(spec, LOCAL_DIR_PREFIX)
    path = Path(raw if raw is not None else spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if raw is not None:
        raise HicaError(f"directory not found: {path} (from {spec!r})")
    return None


def looks_like_path(spec: str) -> bool:
    """True for strings that are meant as filesystem paths rather than hub ids."""
    return spec.startswith(("/", "./", "../", "~", ".\\")) or "\\" in spec or spec.count("/") > 1


def is_repo_id(spec: str) -> bool:
    return bool(_REPO_ID.fullmatch(spec)) and not looks_like_path(spec)


def offline_error(
    repo_id: str,
    reason: str,
    *,
    what: str,
    usage: str | None = None,
    missing: str = "is not in the local Hugging Face cache",
) -> HicaError:
    """The error raised when a hub repository cannot be had without the network.

    ``what`` names the argument (``model='org/name'``); ``usage`` is the ``--encoder-arg`` that loads a
    downloaded copy (``{dir}`` is replaced by the suggested directory name).
    """
    name = repo_id.rsplit("/", 1)[-1]
    usage = (usage or "ARG=/path/to/{dir}").format(dir=name)
    return HicaError(
        f"{what}: Hugging Face Hub repository {repo_id!r} {missing}, and {reason}. Load it from a local "
        f"directory instead: on a machine with internet access run "
        f"`hf download {repo_id} --local-dir {name}` (`huggingface-cli download` in older versions), "
        f"copy the directory here and pass "
        f"`--encoder-arg {usage}`; or copy a Hugging Face cache that holds it and point HF_HOME at it."
    )


def _matches(root: Path, alternatives: Sequence[str]) -> bool:
    return any(next(root.glob(pattern), None) is not None for pattern in alternatives)


def _missing(root: Path, required: Sequence[Sequence[str]]) -> list[str]:
    return [" or ".join(alts) for alts in required if not _matches(root, alts)]


def hub_snapshot(
    repo_id: str,
    *,
    arg: str,
    allow_patterns: Sequence[str],
    required: Sequence[Sequence[str]] = (),
    fallback_patterns: Sequence[str] = (),
    revision: str | None = None,
    what: str | None = None,
    usage: str | None = None,
) -> Path:
    """Local directory holding ``repo_id``'s files: from the HF cache, else downloaded if reachable.

    ``required``: groups of glob alternatives, each of which must match a file in the snapshot.
    ``fallback_patterns``: downloaded only when the first download left a requirement unmet (e.g. ``*.bin``
    weights for repos without safetensors). ``what`` / ``usage``: see :func:`offline_error`.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not is_repo_id(repo_id):
        raise HicaError(f"{arg}={repo_id!r} is neither an existing directory nor a Hugging Face Hub id")
    cached: Path | None = None
    try:
        cached = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        if not _missing(cached, required):
            return cached
    except LocalEntryNotFoundError:
        pass
    reason = offline_reason()
    if reason is not None:
        where = "is only partly" if cached else "is not"
        raise offline_error(
            repo_id,
            reason,
            what=what or f"{arg}={repo_id!r} (no such local directory)",
            usage=usage or f"{arg}=/path/to/{{dir}}",
            missing=f"{where} in the local Hugging Face cache",
        )
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(allow_patterns)))
        if _missing(path, required) and fallback_patterns:
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(fallback_patterns)))
    except GatedRepoError as e:
        raise HicaError(f"{arg}={repo_id!r} is a gated repository: log in with `hf auth login` ({e})") from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise HicaError(
            f"{arg}={repo_id!r}: no such repository or revision on the Hugging Face Hub ({e})"
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise HicaError(f"{arg}={repo_id!r}: download from the Hugging Face Hub failed: {e}") from e
    lacking = _missing(path, required)
    if lacking:
        raise HicaError(f"{arg}={repo_id!r}: the repository has no {', '.join(lacking)}")
    return path


def hub_file(
    repo_id: str,
    filenames: Sequence[str],
    *,
    arg: str,
    what: str,
    usage: str,
    revision: str | None = None,
) -> Path:
    """Path of the first of ``filenames`` (alternatives, best first) of ``repo_id``: cache first, then hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=True))
        except EntryNotFoundError:  # LocalEntryNotFoundError: not cached
            continue
    reason = offline_reason()
    if reason is not None:
        raise offline_error(repo_id, reason, what=what, usage=usage)
    errors = []
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision))
        except RepositoryNotFoundError as e:
            raise HicaError(f"{arg}: repository {repo_id!r} not found on the Hugging Face Hub ({e})") from e
        except (EntryNotFoundError, HfHubHTTPError, OSError) as e:
            errors.append(f"{name}: {e}")
    raise HicaError(
        f"{arg}: could not download {' or '.join(filenames)} from {repo_id!r}: {'; '.join(errors)}"
    )


def resolve_hf_dir(
    spec: str,
    *,
    arg: str,
    allow_patterns: Sequence[str],
    required: Sequence[Sequence[str]] = (("config.json",),),
    fallback_patterns: Sequence[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """A local directory for ``spec`` (directory, ``local-dir:PATH``, ``hf-hub:ID``, ``ID``), its identity.

    The identity (part of the feature-cache key) names the hub id and snapshot commit, or the local path,
    plus fingerprints of the config and weight files.
    """
    hub = strip_prefix(spec, HF_HUB_PREFIX)
    path = None if hub is not None else local_dir(spec)
    if path is not None:
        lacking = _missing(path, required)
        if lacking:
            raise HicaError(f"{arg}={spec!r}: directory {path} has no {', '.join(lacking)}")
        return path, {"path": str(path), "files": dir_fingerprint(path)}
    repo_id = hub if hub is not None else spec
    if looks_like_path(repo_id):
        raise HicaError(f"{arg}={spec!r}: directory not found")
    path = hub_snapshot(
        repo_id,
        arg=arg,
        allow_patterns=allow_patterns,
        required=required,
        fallback_patterns=fallback_patterns,
    )
    return path, {"hub_id": repo_id, "revision": path.name, "files": dir_fingerprint(path)}


def dir_fingerprint(path: Path) -> dict[str, Any]:
    """Fingerprints of a model directory's weight files and a hash of its JSON configs."""
    out: dict[str, Any] = {}
    configs = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix in WEIGHT_SUFFIXES and f.is_file():
            out[f.name] = file_fingerprint(f)
        elif f.suffix == ".json" and f.is_file():
            configs.update(f.name.encode() + f.read_bytes())
    out["json_sha256"] = configs.hexdigest()[:16]
    return out
