"""One resumable grid runner for the benchmark and every analysis: cells → parts → aggregate.

A run folder holds ``config.resolved.yaml``, ``environment.json`` (machine, code commit, encoder fingerprint)
and one JSON *part* per finished cell in ``parts/``, written atomically the moment the cell finishes. A
rerun of the same command reuses every part whose **config hash** (the settings the cell's result depends
on, plus the encoder's fingerprint: its weights, not just its name) and **match fields** (e.g. the ids of
the images scored) equal the current ones, and computes the rest; an interrupted run therefore resumes where
it stopped and ends with the same parts as an uninterrupted one.

Each part also records the **code commit** that made it. A part made by another commit is reused by default
(a refactor that does not change a computation must not force hours of reruns; the run counts such parts in
``GridStats.other_code`` and says so); ``rerun_other_code=True`` (CLI ``--rerun-other-code``) recomputes them.

Callers (``eval.protocol``, ``analysis.*``) give the cells and the function that computes one; aggregation,
tables and plots are the caller's (``report/``).

    with GridRun(out, scope=cfg_scope, encoder=enc.fingerprint(), config_yaml=dump_config(cfg)) as run:
        for cell in cells:
            rec = run.part(cell.key, lambda: compute(cell))
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hica.environment import git_state
from hica.io import out_lock, write_json, write_text

log = logging.getLogger(__name__)

STAMP = "grid"  # the key under which a part records how it was made (code commit, seconds)


def safe_key(text: str) -> str:
    """A part name that is a safe file name: letters, digits and ``-_+.`` kept, anything else ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_+." else "_" for ch in text)


def config_hash(scope: Any, encoder: Mapping[str, Any] | None = None) -> str:
    """12 hex digits of SHA-256 over the JSON of ``scope`` (what a result depends on) and ``encoder``."""
    payload = scope if encoder is None else {"config": scope, "encoder": dict(encoder)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class GridStats:
    """What one invocation did: parts computed, parts reused (and how many of those other code made)."""

    computed: int = 0
    resumed: int = 0
    other_code: int = 0
    compute_seconds: float = 0.0  # summed over every part, reused ones included
    wall_seconds: float = 0.0
    per_part: dict[str, float] = field(default_factory=dict)


class GridRun:
    """A run folder of resumable parts (a context manager: it holds the folder's lock while open).

    ``scope`` is the JSON-able settings a part depends on (leave out where data is read from, which seeds or
    cells exist, and anything used only to aggregate); ``encoder`` the encoder's fingerprint (None when the
    run has no single encoder); ``config_yaml`` / ``environment`` are written to the folder when given."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        scope: Any,
        encoder: Mapping[str, Any] | None = None,
        resume: bool = True,
        rerun_other_code: bool = False,
        config_yaml: str | None = None,
        environment: Mapping[str, Any] | None = None,
        lock: bool = True,
    ) -> None:
        self.out = Path(out_dir)
        self.parts = self.out / "parts"
        self.encoder = dict(encoder) if encoder is not None else None
        self.hash = config_hash(scope, self.encoder)
        self.resume, self.rerun_other_code, self.lock = resume, rerun_other_code, lock
        self.config_yaml, self.environment = config_yaml, environment
        commit, clean = git_state()
        # uncommitted changes are other code: they never pass for the commit they sit on
        self.code = None if commit is None else (commit if clean is not False else f"{commit}+dirty")
        self.stats = GridStats()
        self._t0 = 0.0
        self._stack = ExitStack()

    # -- the folder ----------------------------------------------------------------------------------------
    def __enter__(self) -> GridRun:
        self._t0 = time.perf_counter()
        if self.lock:
            self._stack.enter_context(out_lock(self.out))
        self.parts.mkdir(parents=True, exist_ok=True)
        if self.config_yaml is not None:
            write_text(self.out / "config.resolved.yaml", self.config_yaml)
        if self.environment is not None:
            self.write_environment(self.environment)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stats.wall_seconds = round(time.perf_counter() - self._t0, 1)
        self._stack.close()

    def write_environment(self, machine: Mapping[str, Any]) -> None:
        """``environment.json``: the machine, plus the encoder fingerprint when the run has one."""
        env = dict(machine)
        if self.encoder is not None:
            env["encoder"] = self.encoder
        write_json(self.out / "environment.json", env)

    # -- parts ---------------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.parts / f"{safe_key(key)}.json"

    def hash_of(self, scope: Any) -> str:
        """The config hash of a part kind with its own ``scope`` (the run's encoder included)."""
        return config_hash(scope, self.encoder)

    def cached(
        self,
        key: str,
        *,
        match: Mapping[str, Any] | None = None,
        hash: str | None = None,
        also: Iterable[str] = (),
    ) -> Any:
        """The stored part ``key`` if it may be reused (same config hash, or one of ``also``, and match
        fields), else None."""
        path = self.path(key)
        if not (self.resume and path.is_file()):
            return None
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("part %s is unreadable; computing it again", path)
            return None
        if not isinstance(rec, dict) or rec.get("config_hash") not in {hash or self.hash, *also}:
            return None
        if (rec.get(STAMP) or {}).get("key", key) != key:  # two keys made the same file name
            return None
        if any(rec.get(k) != v for k, v in (match or {}).items()):
            return None
        made_by = (rec.get(STAMP) or {}).get("code_commit")
        if made_by != self.code:
            if self.rerun_other_code:
                return None
            self.stats.other_code += 1
        return rec

    def part(
        self,
        key: str,
        compute: Callable[[], dict[str, Any]],
        *,
        match: Mapping[str, Any] | None = None,
        hash: str | None = None,
        also: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Part ``key``: reused when allowed, else ``compute()``-d, stamped and written atomically.

        The record gets ``config_hash`` (``hash`` or the run's), the ``match`` fields, and a ``grid`` stamp
        with the code commit and the seconds it took. A stored part whose hash is one of ``also`` (the hash
        an earlier version of the code gave the same computation) is reused too."""
        rec = self.cached(key, match=match, hash=hash, also=also)
        if rec is not None:
            self.stats.resumed += 1
            if rec.get("config_hash") != (hash or self.hash):  # reused under an older hash: stamped anew
                rec = {**rec, "config_hash": hash or self.hash}  # (its code commit kept), so that later
                write_json(self.path(key), rec)  # runs find it without the config that made it
        else:
            t0 = time.perf_counter()
            rec = compute()
            seconds = round(time.perf_counter() - t0, 3)
            rec = {**rec, **(match or {}), "config_hash": hash or self.hash}
            rec[STAMP] = {"code_commit": self.code, "seconds": seconds, "key": key}
            write_json(self.path(key), rec)
            self.stats.computed += 1
        seconds = float((rec.get(STAMP) or {}).get("seconds", 0.0))
        self.stats.per_part[key] = seconds
        self.stats.compute_seconds = round(self.stats.compute_seconds + seconds, 3)
        return rec

    def run(
        self, cells: list[Any], compute: Callable[[Any], dict[str, Any]], key: Callable[[Any], str]
    ) -> Iterator[dict[str, Any]]:
        """Each cell's part in order (``key(cell)`` names it, ``compute(cell)`` makes it)."""
        for cell in cells:
            yield self.part(key(cell), lambda c=cell: compute(c))

    def summary(self) -> dict[str, Any]:
        """What to record in an aggregate about this invocation (JSON-able)."""
        return {
            "config_hash": self.hash,
            "code_commit": self.code,
            "parts_computed": self.stats.computed,
            "parts_resumed": self.stats.resumed,
            "parts_from_other_code": self.stats.other_code,
        }
