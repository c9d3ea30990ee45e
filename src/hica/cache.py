"""On-disk feature cache: the one place where encoders and datasets meet.

A shard is keyed by (encoder fingerprint — backend, weights, preprocessing — dataset name and source, split)
and holds features for any subset of that split's samples; asking for samples not yet in the shard encodes
only those and rewrites the shard atomically. Global embeddings are stored in float32, local tokens (when
asked for) in float16.

Augmented views of support images are a separate store (:meth:`FeatureCache.views`, see ``docs/design.md``
"Augmented views"): one file per (encoder fingerprint, precision, dataset, split, augmentation, view seed)
holding one float32 global embedding per (image, view index).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from tqdm.auto import tqdm

from hica.data.sample import Dataset, Sample, load_image
from hica.encoders.base import DualEncoder
from hica.errors import HicaError
from hica.io import save_tensors, write_json
from hica.runtime import autocast

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$HICA_CACHE`` or ``~/.cache/hica``."""
    return Path(os.environ.get("HICA_CACHE") or Path.home() / ".cache" / "hica")


class ImageDataset(TorchDataset):
    """Decoded, preprocessed images of a sample list; unreadable ones yield ``None`` when ``skip_bad``."""

    def __init__(self, samples: list[Sample], transform, skip_bad: bool = False) -> None:
        self.samples, self.transform, self.skip_bad = samples, transform, skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_image(self.samples[i]))
        except HicaError:
            if self.skip_bad:
                return i, None
            raise


def _collate(batch):
    ok = [(i, x) for i, x in batch if x is not None]
    bad = [i for i, x in batch if x is None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    xs = torch.stack([x for _, x in ok]) if ok else None
    return idx, xs, bad


@dataclass
class Features:
    """Features of a sample list, row-aligned with ``ids`` (unreadable samples dropped under skip_bad)."""

    ids: list[str]
    labels: torch.Tensor
    global_: torch.Tensor
    local: torch.Tensor | None = None
    grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class ViewAugment:
    """An augmentation for :meth:`FeatureCache.views`: ``fn`` maps one preprocessed (normalised) image
    (3, H, W) to an augmented, normalised image for the encoder, drawing its randomness from torch's global
    RNG (the cache seeds it per view); ``key`` (JSON-able) identifies it in the views store's key."""

    key: Mapping[str, Any]
    fn: Callable[[torch.Tensor], torch.Tensor]


VIEW_BATCH = 8  # views are encoded in batches of exactly this many rows (zero-padded), see ``views``


def view_rng_seed(view_seed: int, sample_id: str, view: int) -> int:
    """The RNG seed of view ``view`` of image ``sample_id`` (SHA-256, the same in every process)."""
    digest = hashlib.sha256(f"{view_seed}\x00{sample_id}\x00{view}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class FeatureCache:
    """Feature shards under ``root`` (default ``$HICA_CACHE`` or ``~/.cache/hica``)."""

    def __init__(
        self,
        root: str | Path | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        precision: str = "fp32",
    ) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.batch_size, self.num_workers, self.precision = batch_size, num_workers, precision
        self.hits = self.misses = 0
        self.view_hits = self.view_misses = 0  # (image, view) pairs read from / added to the views store

    def source_key(self, encoder: DualEncoder, dataset: Dataset, split: str) -> dict[str, Any]:
        """What any feature of ``split`` depends on: encoder fingerprint, precision, dataset and split."""
        return {
            "encoder": encoder.fingerprint(),
            "precision": self.precision,
            "dataset": dataset.name,
            "source": dataset.source,
            "split": split,
        }

    def shard_dir(self, encoder: DualEncoder, dataset: Dataset, split: str) -> Path:
        key = self.source_key(encoder, dataset, split)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self.root / "features" / digest

    def get(
        self,
        encoder: DualEncoder,
        dataset: Dataset,
        split: str,
        samples: list[Sample] | None = None,
        with_local: bool = False,
        skip_bad: bool = False,
        progress: bool = True,
    ) -> Features:
        """Features for ``samples`` (default: the whole split), encoding only what the shard lacks."""
        samples = dataset.split(split) if samples is None else samples
        d = self.shard_dir(encoder, dataset, split)
        store = self._read(d, with_local)
        # images found unreadable before are skipped again only under skip_bad; otherwise retried (and
        # encoded if the file was repaired, or reported as an error)
        skipped = set(store["bad"]) if skip_bad else set()
        missing = [s for s in samples if s.id not in store["index"] and s.id not in skipped]
        self.hits += len(samples) - len(missing)
        self.misses += len(missing)
        if missing:
            # a shard that holds local tokens keeps them for every row
            want_local = with_local or store["local"] is not None
            desc = f"{dataset.name}/{split}"
            self._encode_into(store, encoder, missing, want_local, skip_bad, progress, desc)
            self._write(d, store, encoder, dataset, split)
        keep = [s for s in samples if s.id in store["index"]]
        if skip_bad and len(keep) < len(samples):
            log.warning(
                "%s/%s: skipped %d unreadable image(s)", dataset.name, split, len(samples) - len(keep)
            )
        rows = torch.tensor([store["index"][s.id] for s in keep], dtype=torch.long)
        local = store["local"][rows].float() if with_local else None
        return Features(
            ids=[s.id for s in keep],
            labels=torch.tensor([s.label for s in keep], dtype=torch.long),
            global_=store["global"][rows],
            local=local,
            grid=tuple(store["grid"]) if store.get("grid") else None,
        )

    # -- augmented views -----------------------------------------------------------------------------------
    def views_key(
        self, encoder: DualEncoder, dataset: Dataset, split: str, augment: ViewAugment, view_seed: int
    ) -> dict[str, Any]:
        """What a views store depends on (JSON-normalised); its SHA-256 names the store's folder."""
        key = {
            **self.source_key(encoder, dataset, split),
            "augment": dict(augment.key),
            "view_seed": int(view_seed),
        }
        return json.loads(json.dumps(key, sort_keys=True, default=str))

    def views_file(self, key: Mapping[str, Any]) -> Path:
        """``<root>/views/<digest>/views.safetensors`` for a :meth:`views_key`."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / "views" / digest / "views.safetensors"

    def views(
        self,
        encoder: DualEncoder,
        dataset: Dataset,
        split: str,
        samples: list[Sample],
        n: int,
        augment: ViewAugment,
        view_seed: int = 0,
        progress: bool = False,
    ) -> torch.Tensor:
        """(len(samples), n, D) float32 global embeddings of views 0 … n-1 of each sample (not normalised).

        Only the (image, view) pairs the store lacks are computed, and only for ``samples``. View ``v`` of
        image ``i`` is ``augment.fn`` on the image's preprocessed tensor with torch's RNG seeded by
        :func:`view_rng_seed` (``view_seed``, ``i``, ``v``) inside ``torch.random.fork_rng`` (the caller's RNG
        is untouched); views are encoded in zero-padded batches of ``VIEW_BATCH`` rows, so a view's bytes do
        not depend on which episode, method or order asked for it."""
        if n < 1:
            raise HicaError(f"the number of augmented views must be >= 1, got {n}")
        key = self.views_key(encoder, dataset, split, augment, view_seed)
        path = self.views_file(key)
        store = self._read_views(path, key)
        want = [(s, v) for s in samples for v in range(n)]
        missing = list({(s.id, v): (s, v) for s, v in want if (s.id, v) not in store["index"]}.values())
        self.view_hits += len(want) - len(missing)
        self.view_misses += len(missing)
        if missing:
            self._encode_views(store, encoder, missing, augment, int(view_seed), progress, dataset.name)
            self._write_views(path, store, key)
        if not want:
            dim = store["views"].shape[1] if store["views"] is not None else 0
            return torch.empty(0, n, dim)
        rows = torch.tensor([store["index"][(s.id, v)] for s, v in want], dtype=torch.long)
        return store["views"][rows].reshape(len(samples), n, -1)

    def _read_views(self, path: Path, key: Mapping[str, Any]) -> dict:
        empty: dict = {"index": {}, "views": None}
        if not path.is_file():
            return empty
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["hica_views"])
                views = f.get_tensor("views")
            rows = [(str(sid), int(v)) for sid, v in meta["rows"]]
            if meta["key"] != key or meta["view_seed"] != key["view_seed"]:
                problem = "was made for another key (encoder, augmentation, view seed …)"
            elif views.dtype != torch.float32 or views.ndim != 2 or views.shape[1] != meta["dim"]:
                problem = (
                    f"holds a {views.dtype} tensor of shape {tuple(views.shape)}, not (rows, {meta['dim']})"
                )
            elif not (len(rows) == meta["count"] == views.shape[0]) or len(set(rows)) != len(rows):
                problem = f"claims {meta['count']} views but lists {len(rows)} and holds {views.shape[0]}"
            else:
                return {"index": {r: i for i, r in enumerate(rows)}, "views": views}
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            problem = f"is unreadable ({type(e).__name__}: {e})"
        log.warning("augmented-views file %s %s; recomputing the views asked for", path, problem)
        return empty

    def _write_views(self, path: Path, store: dict, key: Mapping[str, Any]) -> None:
        rows = [None] * len(store["index"])
        for r, i in store["index"].items():
            rows[i] = list(r)
        meta = {
            "key": dict(key),
            "view_seed": key["view_seed"],
            "count": len(rows),
            "dim": int(store["views"].shape[1]),
            "rows": rows,
        }
        save_tensors(path, {"views": store["views"]}, metadata={"hica_views": json.dumps(meta)})

    @torch.no_grad()
    def _encode_views(self, store, encoder, pairs, augment, view_seed, progress, desc) -> None:
        """Encode ``pairs`` [(sample, view)] into ``store`` (each image decoded once)."""

        def augmented():
            last_id, x = None, None
            for s, v in pairs:  # grouped by sample (``views`` lists each sample's views together)
                if s.id != last_id:
                    last_id, x = s.id, encoder.preprocess(load_image(s))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(view_rng_seed(view_seed, s.id, v))
                    xa = augment.fn(x)
                yield (s.id, v), xa

        was_training = encoder.training
        encoder.eval()
        dev = encoder.device
        keys, out, batch = [], [], []
        total = -(-len(pairs) // VIEW_BATCH)
        bar = tqdm(total=total, desc=f"views {desc}", disable=not progress, unit="batch")
        for i, (k, x) in enumerate(augmented()):
            keys.append(k)
            batch.append(x)
            if len(batch) == VIEW_BATCH or i == len(pairs) - 1:
                xs = torch.stack(batch + [torch.zeros_like(batch[0])] * (VIEW_BATCH - len(batch)))
                with autocast(dev, self.precision):
                    g = encoder.encode_image(xs.to(dev)).global_
                out.append(g[: len(batch)].float().cpu())
                batch = []
                bar.update(1)
        bar.close()
        encoder.train(was_training)
        base = 0 if store["views"] is None else len(store["views"])
        new = torch.cat(out)
        store["views"] = new if store["views"] is None else torch.cat([store["views"], new])
        for j, k in enumerate(keys):
            store["index"][k] = base + j

    # -- storage -------------------------------------------------------------------------------------------
    def _read(self, d: Path, with_local: bool) -> dict:
        empty = {"index": {}, "bad": [], "global": None, "local": None, "grid": None}
        meta_path = d / "index.json"
        if not meta_path.is_file():
            return empty
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(d / "features.safetensors"))
            n = len(meta["ids"])
            if len(tensors["global"]) != n:
                return empty  # stale shard: encode afresh
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            log.warning("feature cache shard %s is unreadable (%s); encoding afresh", d, e)
            return empty
        if "local" in tensors and len(tensors["local"]) != n:
            del tensors["local"]  # local tokens not row-aligned: treat as absent
        if with_local and "local" not in tensors:
            return empty  # a shard without local tokens: encode afresh
        return {
            "index": {sid: i for i, sid in enumerate(meta["ids"])},
            "bad": list(meta.get("bad", [])),
            "global": tensors["global"],
            "local": tensors.get("local"),
            "grid": meta.get("grid"),
        }

    def _write(self, d: Path, store: dict, encoder: DualEncoder, dataset: Dataset, split: str) -> None:
        tensors = {"global": store["global"]}
        if store["local"] is not None:
            tensors["local"] = store["local"]
        save_tensors(d / "features.safetensors", tensors)
        ids = [None] * len(store["index"])
        for sid, i in store["index"].items():
            ids[i] = sid
        meta = {
            "encoder": encoder.fingerprint(),
            "precision": self.precision,
            "dataset": dataset.name,
            "source": dataset.source,
            "split": split,
            "ids": ids,
            "bad": store["bad"],
            "grid": store["grid"],
        }
        write_json(d / "index.json", meta)  # written last: a crash in between leaves the old index valid

    @torch.no_grad()
    def _encode_into(self, store, encoder, samples, with_local, skip_bad, progress, desc) -> None:
        loader = DataLoader(
            ImageDataset(samples, encoder.preprocess, skip_bad),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=_collate,
        )
        was_training = encoder.training
        encoder.eval()
        dev = encoder.device
        gl, lo, ids = [], [], []
        for idx, xs, bad in tqdm(loader, desc=f"encode {desc}", disable=not progress, unit="batch"):
            store["bad"].extend(samples[i].id for i in bad)
            if xs is None:
                continue
            with autocast(dev, self.precision):
                f = encoder.encode_image(xs.to(dev))
            gl.append(f.global_.float().cpu())
            if with_local:
                lo.append(f.local.half().cpu())
                store["grid"] = list(f.grid)
            ids.extend(samples[i].id for i in idx.tolist())
        encoder.train(was_training)
        if not ids:
            return
        done = set(ids)
        store["bad"] = [b for b in store["bad"] if b not in done]
        new_g = torch.cat(gl)
        base = 0 if store["global"] is None else len(store["global"])
        store["global"] = new_g if store["global"] is None else torch.cat([store["global"], new_g])
        if with_local:
            new_l = torch.cat(lo)
            store["local"] = new_l if store["local"] is None else torch.cat([store["local"], new_l])
        for j, sid in enumerate(ids):
            store["index"][sid] = base + j
