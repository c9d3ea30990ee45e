"""The benchmark protocol: datasets × K × seeds × methods on one encoder, features cached.

It knows nothing about any single method: feature methods get an episode's cached features
(``FewShotData``, with augmented support views when the method asks for them: ``Method.views_needed``),
image methods get its preprocessed images (``ImageFewShotData``). The grid runs on
:class:`hica.eval.grid.GridRun`: every finished (dataset, method, K, seed) is written to ``parts/`` at once,
so an interrupted run resumes where it stopped. :meth:`Benchmark.run` returns the per-run records and
timings; writing metrics.json, predictions.csv and results.md is :func:`hica.jobs.benchmark.run_benchmark`'s.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hica.cache import FeatureCache, Features, ViewAugment
from hica.config import BenchmarkConfig, dump_config
from hica.data.catalog import load_dataset, split_version
from hica.data.episodes import Episode, sample_episode
from hica.data.sample import Dataset, Sample
from hica.encoders import DualEncoder, create_encoder
from hica.environment import machine_info
from hica.errors import HicaError
from hica.eval.episode_data import image_episode, images_of, view_augment
from hica.eval.grid import GridRun, config_hash, safe_key
from hica.eval.metrics import bootstrap_ci, classification_metrics, confusion
from hica.io import out_lock, write_json
from hica.methods.base import ClassText, FewShotData, method_registry
from hica.methods.settings import fixed_settings
from hica.methods.text_head import EpisodeText
from hica.runtime import fit_threads, reproducible, resolve_device, resolve_precision

log = logging.getLogger(__name__)


@dataclass
class DatasetState:
    """What the protocol holds for one dataset while it runs."""

    ds: Dataset
    text: ClassText | None
    test: Features
    test_images: torch.Tensor | None = None
    descriptors: Any = None
    by_id: dict[str, Sample] = field(default_factory=dict)


LOSS_LOGS = "loss_logs"  # <out>/loss_logs/<part key>.json: a fitted method's per-step loss terms (HiCA)


def part_key(dataset: str, method: str, k: int, seed: int) -> str:
    """One run's part (and episode file) name without ``.json``: ``<dataset>__<method>__K<k>__s<seed>``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset)
    return f"{safe}__{method}__K{k}__s{seed}"


def normalize_features(x: torch.Tensor) -> torch.Tensor:
    """Features as float32, L2-normalised along the last dimension (what feature methods are given)."""
    return F.normalize(x.float(), dim=-1)


#: Config fields that say which cells a grid has, not how one is computed (left out of a part's hash; the
#: view seed stays in the hash of a method that asks for augmented views).
GRID_FIELDS = frozenset({"name", "shots", "seeds", "methods", "method_args", "datasets"})


@dataclass
class BenchmarkRun:
    """What :meth:`Benchmark.run` returns: one record per (dataset, method, K, seed), in grid order, and the
    invocation's timings (with the grid runner's summary under ``grid``)."""

    records: list[dict[str, Any]]
    timings: dict[str, Any]


class Benchmark:
    """Runs one ``BenchmarkConfig`` into ``out_dir``."""

    def __init__(self, cfg: BenchmarkConfig, out_dir: str | Path, progress: bool = True) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.registry = method_registry()
        self.views_needed: dict[str, int] = {}
        resolved: dict[str, dict[str, Any]] = {}
        for method in cfg.methods:  # settings checked before any encoding (also when cfg was changed in code)
            cls = self.registry[method]
            hp = resolved[method] = cls.check_settings(cfg.method_args.get(method, {}))
            self.views_needed[method] = cls.views_needed(hp) if hasattr(cls, "views_needed") else 0
        # Where data and features are read from does not change a result: resuming ignores it; nor does the
        # view seed when no method uses augmented views.
        exclude = {"cache_dir", "data_root"} | (set() if any(self.views_needed.values()) else {"view_seed"})
        exclude |= {"text_head"} if cfg.text_head.source == "encoder" else set()  # hashes stay as before
        standard = cfg.protocol == "standard"  # standard configs keep the hash they had before protocols
        self.scope = cfg.model_dump(mode="json", exclude=exclude | ({"protocol"} if standard else set()))
        # What a part really depends on: each method's complete settings (a default changed by a commit is a
        # new computation) — less, in the standard protocol, the fixed settings used only without validation
        # shots, which it always has — and the resolved device type, precision and fitting thread count.
        unused = {m: set(fixed_settings(self.registry[m].Settings)) if standard else set() for m in resolved}
        self.scope["method_args"] = {
            m: {k: v for k, v in hp.items() if k not in unused[m]} for m, hp in resolved.items()
        }
        self.scope["resolved"] = {
            "device": self.device.type,
            "precision": self.precision,
            "fit_threads": fit_threads(),
        }
        self.cache = FeatureCache(cfg.cache_dir, batch_size=cfg.batch_size, precision=self.precision)
        self.timings: dict[str, Any] = {}
        self._augments: dict[str, ViewAugment] = {}
        self.text_heads = EpisodeText(cfg.text_head.model_dump(), cfg.text_mode)

    def part_scope(self, dataset: int, method: str) -> dict[str, Any]:
        """What one part of ``method`` on the ``dataset``-th dataset depends on: the run's scope less the grid
        (``GRID_FIELDS``: name, shots, seeds, the other methods and datasets), plus that dataset's spec, that
        method's settings and, when it asks for augmented views, the view seed. A grid grown by seeds, K,
        methods or datasets (or renamed) reuses every part it had; the part's key and its ``match`` (the
        episode itself) tell which cell it is."""
        common = {k: v for k, v in self.scope.items() if k not in GRID_FIELDS | {"view_seed"}}
        views = {"view_seed": self.cfg.view_seed} if self.views_needed[method] else {}
        return {
            **common,
            **views,
            "dataset": self.scope["datasets"][dataset],
            "method": method,
            "settings": self.scope["method_args"][method],
        }

    def earlier_hashes(self, fingerprint: dict[str, Any]) -> dict[tuple[int, str], list[str]]:
        """Per (dataset index, method): the whole-run hashes that parts made before part hashes carry for the
        same computation — this config's, and that of the earlier config the run folder holds
        (``config.resolved.yaml``) where its part of that dataset and method is the same as this one's."""
        runs: list[Benchmark] = [self]
        earlier = self.out / "config.resolved.yaml"
        if earlier.is_file():
            from hica.config import load_config

            try:
                runs.append(Benchmark(load_config(earlier), self.out, progress=False))
            except (HicaError, ValueError, OSError) as e:  # not a config this code reads: nothing reused
                log.warning(
                    "%s is not a config this code reads (%s): parts made before part hashes are recomputed",
                    earlier,
                    e,
                )
        found: dict[tuple[int, str], list[str]] = {}
        for run in runs:
            whole = config_hash(run.scope, fingerprint)
            n = len(run.cfg.datasets)
            theirs = [run.part_scope(j, m) for j in range(n) for m in run.scope["method_args"]]
            for i in range(len(self.cfg.datasets)):
                for m in self.scope["method_args"]:
                    if self.part_scope(i, m) in theirs and whole not in found.setdefault((i, m), []):
                        found[(i, m)].append(whole)
        return found

    # -- setup ---------------------------------------------------------------------------------------------
    def encoder(self) -> DualEncoder:
        """The config's encoder on the run's device, in eval mode."""
        enc = create_encoder(self.cfg.encoder.name, **self.cfg.encoder.args)
        return enc.to(self.device).eval()

    def _class_text(self, enc: DualEncoder, ds: Dataset) -> ClassText | None:
        if not any(self.registry[m].uses_text for m in self.cfg.methods):
            return None
        from hica.model.class_text import build_class_text

        with torch.no_grad():
            return build_class_text(enc, self._descriptors(ds), ds.classes, mode=self.cfg.text_mode)

    def _descriptors(self, ds: Dataset) -> Any:
        if not ds.descriptors:
            raise HicaError(
                f"dataset {ds.name} has no class descriptors but methods "
                f"{[m for m in self.cfg.methods if self.registry[m].uses_text]} need text; give the dataset "
                "a 'descriptors' YAML (see docs/descriptors.md) or drop the text-using methods"
            )
        from hica.data.descriptors import load_descriptors

        desc = load_descriptors(ds.descriptors)
        desc.check_classes(ds.classes, ds.name)
        return desc

    # -- one run -------------------------------------------------------------------------------------------
    def state(self, enc: DualEncoder, ds: Dataset) -> DatasetState:
        """Class text, descriptors and the (cached) features of the scored split for one dataset."""
        t0 = time.perf_counter()
        text = self._class_text(enc, ds)
        test = self.cache.get(
            enc, ds, self.cfg.eval_split, skip_bad=self.cfg.skip_bad, progress=self.progress
        )
        self.timings[f"{ds.name}/encode_test"] = round(time.perf_counter() - t0, 2)
        return DatasetState(
            ds=ds,
            text=text,
            test=test,
            descriptors=self._descriptors(ds) if text is not None else None,
            by_id={s.id: s for sp in ds.splits.values() for s in sp},
        )

    def fit(self, enc: DualEncoder, st: DatasetState, method: str, seed: int, ep: Episode | None) -> Any:
        """Fit ``method`` on episode ``ep`` (None: zero-shot) with the config's arguments; the fitted method.

        Image-level methods get the episode's images (and text / masks when they use them); feature methods
        get its cached, normalised features and ``st.text``, and the first ``views_needed`` cached augmented
        views of each support image when they ask for some."""
        cls = self.registry[method]
        args = self.cfg.method_args.get(method, {})
        if getattr(cls, "image_level", False):
            assert ep is not None
            data = image_episode(enc, st.ds, ep, st.by_id, seed, cls, st.descriptors)
            return cls(**args).fit(enc, data, self.device, self.precision)
        if ep is None:  # zero-shot: no labelled image
            d = st.test.global_.shape[1]
            sup_x = val_x = torch.empty(0, d)
            sup_y = val_y = torch.empty(0, dtype=torch.long)
        else:
            sup_f, val_f = (
                self.cache.get(
                    enc, st.ds, split, [st.by_id[i] for i in ids], skip_bad=self.cfg.skip_bad, progress=False
                )
                if ids
                else None  # realistic protocol: no validation shots, the val shard is never opened
                for split, ids in (("train", ep.support), ("val", ep.val))
            )
            assert sup_f is not None
            sup_x, sup_y = sup_f.global_, sup_f.labels
            val_x, val_y = (sup_x[:0], sup_y[:0]) if val_f is None else (val_f.global_, val_f.labels)
        n_views = cls.views_needed(cls.check_settings(args))
        views = None
        if n_views > 0 and ep is None:
            views = torch.empty(0, n_views, sup_x.shape[1])
        elif n_views > 0:
            sup = [st.by_id[i] for i in sup_f.ids]  # the support rows (unreadable ones dropped: skip_bad)
            views = normalize_features(self.support_views(enc, st.ds, sup, n_views))
        data = FewShotData(
            support=normalize_features(sup_x),
            support_labels=sup_y,
            val=normalize_features(val_x),
            val_labels=val_y,
            num_classes=len(st.ds.classes),
            text=self.text_heads.text(enc, st.ds, st.descriptors, st.text, sup_x, sup_y, seed)
            if cls.uses_text and ep is not None
            else st.text,
            seed=seed,
            support_views=views,
        )
        return cls(**args).fit(data)

    def support_views(self, enc: DualEncoder, ds: Dataset, samples: list[Sample], n: int) -> torch.Tensor:
        """(len(samples), n, D) cached augmented views (train split, the config's ``view_seed``)."""
        if ds.name not in self._augments:
            self._augments[ds.name] = view_augment(enc, ds)
        return self.cache.views(enc, ds, "train", samples, n, self._augments[ds.name], self.cfg.view_seed)

    def _run_one(
        self, enc: DualEncoder, st: DatasetState, method: str, k: int, seed: int, ep: Episode | None
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        m = self.fit(enc, st, method, seed, ep)
        t_fit = time.perf_counter() - t0
        if getattr(m, "loss_log", None):  # beside its part, written just before it; never in it (tables)
            key = safe_key(part_key(st.ds.name, method, k, seed))
            write_json(self.out / LOSS_LOGS / f"{key}.json", m.loss_log)
        if getattr(self.registry[method], "image_level", False):
            if st.test_images is None:
                st.test_images = images_of(enc, [st.by_id[i] for i in st.test.ids])
            probs = m.predict_proba(st.test_images)
        else:
            probs = m.predict_proba(normalize_features(st.test.global_))
        probs = probs.float().cpu().numpy()
        labels = st.test.labels.numpy()
        ids = st.test.ids
        if self.cfg.eval_split == "val" and ep is not None:  # tuning: never score the episode's val shots
            held = set(ep.val)
            keep = np.array([i not in held for i in ids])
            probs, labels, ids = probs[keep], labels[keep], [i for i, k in zip(ids, keep, strict=True) if k]
        return {
            "dataset": st.ds.name,
            "classes": st.ds.classes,
            "method": method,
            "k": k,
            "seed": seed,
            "metrics": classification_metrics(labels, probs),
            "ci95": bootstrap_ci(labels, probs, n_boot=self.cfg.bootstrap, seed=seed),
            "confusion": confusion(labels, probs),
            "selected": m.selected,
            "fit_seconds": round(t_fit, 3),
            "total_seconds": round(time.perf_counter() - t0, 3),
            "episode": ep.to_json() if ep else None,
            "eval_split": self.cfg.eval_split,
            "test_ids": ids,
            "test_labels": labels.tolist(),
            "probs": np.round(probs, 6).tolist(),
        }  # GridRun.part adds config_hash (and its "grid" stamp)

    # -- the grid ------------------------------------------------------------------------------------------
    @reproducible
    def run(self, resume: bool = True, rerun_other_code: bool = False) -> BenchmarkRun:
        """Run (or resume) the grid into ``out_dir/parts``; the per-run records and the timings.

        ``out_dir`` is locked for the run: a second run writing it at the same time is refused (HicaError).
        ``rerun_other_code`` recomputes parts that another code commit made (by default they are reused)."""
        with out_lock(self.out):
            return self._run_grid(resume, rerun_other_code)

    def _run_grid(self, resume: bool, rerun_other_code: bool) -> BenchmarkRun:
        t_start = time.perf_counter()
        enc = self.encoder()
        records: list[dict[str, Any]] = []
        older = self.earlier_hashes(enc.fingerprint())  # before the folder's config is overwritten
        with GridRun(
            self.out,
            scope=self.scope,
            encoder=enc.fingerprint(),
            resume=resume,
            rerun_other_code=rerun_other_code,
            config_yaml=dump_config(self.cfg),
            environment=machine_info(self.device, self.precision),
        ) as grid:
            for i, spec in enumerate(self.cfg.datasets):
                ds = load_dataset(spec, self.cfg.data_root, skip_bad=self.cfg.skip_bad)
                hashes = {m: grid.hash_of(self.part_scope(i, m)) for m in self.cfg.methods}
                # a part is reused only for the same episode, and the same carved split where it has a version
                version = split_version(spec)
                same_split = {} if version is None else {"split_version": version}
                st = self.state(enc, ds)
                cells: list[tuple[str, int, int, Episode | None]] = []
                for method in self.cfg.methods:
                    if self.registry[method].zero_shot:
                        cells.append((method, 0, 0, None))
                for k in self.cfg.shots:
                    for seed in self.cfg.seeds:
                        ep = sample_episode(ds, k, seed, self.cfg.protocol)
                        episode_file = self.out / "episodes" / f"{part_key(ds.name, 'episode', k, seed)}.json"
                        write_json(episode_file, ep.to_json())
                        for method in self.cfg.methods:
                            if not self.registry[method].zero_shot:
                                cells.append((method, k, seed, ep))
                bar = tqdm(cells, desc=ds.name, disable=not self.progress, unit="run")
                for method, k, seed, ep in bar:
                    bar.set_postfix_str(f"{method} K={k} seed={seed}")
                    rec = grid.part(
                        part_key(ds.name, method, k, seed),
                        lambda st=st, m=method, k=k, s=seed, e=ep: self._run_one(enc, st, m, k, s, e),
                        match={"episode": json.loads(json.dumps(ep.to_json())) if ep else None, **same_split},
                        hash=hashes[method],
                        also=older.get((i, method), ()),  # parts made before part hashes
                    )
                    records.append(rec)
        self.timings["total"] = round(time.perf_counter() - t_start, 2)
        self.timings["cache_hits"], self.timings["cache_misses"] = self.cache.hits, self.cache.misses
        if self.cache.view_hits or self.cache.view_misses:  # (image, view) pairs; absent when none was asked
            self.timings["view_cache_hits"] = self.cache.view_hits
            self.timings["view_cache_misses"] = self.cache.view_misses
        self.timings["grid"] = grid.summary()
        return BenchmarkRun(records=records, timings=self.timings)
