"""The benchmark protocol: datasets × K × seeds × methods on one encoder, features cached.

It knows nothing about any single method: feature methods get an episode's cached features
(``FewShotData``), image methods get its preprocessed images (``ImageFewShotData``). Every finished
(dataset, method, K, seed) is written to ``parts/`` at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hica.cache import FeatureCache, Features
from hica.config import BenchmarkConfig, dump_config
from hica.data.catalog import load_dataset
from hica.data.episodes import Episode, sample_episode
from hica.data.sample import Dataset, Sample, load_image
from hica.encoders import DualEncoder, create_encoder
from hica.errors import HicaError
from hica.eval.metrics import bootstrap_ci, classification_metrics, confusion
from hica.io import out_lock, write_json, write_text
from hica.methods.base import ClassText, FewShotData, ImageFewShotData, method_registry
from hica.runtime import fit_threads, reproducible, resolve_device, resolve_precision

log = logging.getLogger(__name__)


def machine_info(device: torch.device, precision: str) -> dict[str, Any]:
    """Where a run ran: CPU model, cores, GPU, library versions, and the code (git commit, clean tree)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fit_threads": fit_threads(),  # torch threads while fitting (results depend on it)
        "device": str(device),
        "precision": precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    from hica.modelcard import git_state

    info["git_commit"], info["git_clean"] = git_state()  # None outside a git checkout
    return info


@dataclass
class DatasetState:
    """What the protocol holds for one dataset while it runs."""

    ds: Dataset
    text: ClassText | None
    test: Features
    test_images: torch.Tensor | None = None
    descriptors: Any = None
    by_id: dict[str, Sample] = field(default_factory=dict)


def images_of(enc: DualEncoder, samples: list[Sample]) -> torch.Tensor:
    """Samples → (N, 3, H, W) preprocessed with the encoder's own transform."""
    return torch.stack([enc.preprocess(load_image(s)) for s in samples])


def image_episode(
    enc: DualEncoder,
    ds: Dataset,
    ep: Episode,
    by_id: dict[str, Sample],
    seed: int,
    method_cls: type,
    descriptors: Any = None,
) -> ImageFewShotData:
    """An episode as images for an image-level method; text and lesion masks when the method uses them.

    Masks are read for the support images only (the few-shot annotation budget) and follow the image's
    square resize to the encoder's input size."""
    sup = [by_id[i] for i in ep.support]
    val = [by_id[i] for i in ep.val]
    data = ImageFewShotData(
        support=images_of(enc, sup),
        support_labels=torch.tensor([s.label for s in sup]),
        val=images_of(enc, val),
        val_labels=torch.tensor([s.label for s in val]),
        num_classes=len(ds.classes),
        seed=seed,
        classes=list(ds.classes),
        descriptors=descriptors if getattr(method_cls, "uses_text", False) else None,
    )
    if getattr(method_cls, "uses_masks", False) and any(s.masks for s in sup):
        from hica.alignment.imagedata import input_spec, load_store

        store = load_store(sup, input_spec(enc).size, with_masks=True)
        data.support_masks, data.support_has_mask = store.masks, store.has_mask
    return data


def _part_name(dataset: str, method: str, k: int, seed: int) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in dataset)
    return f"{safe}__{method}__K{k}__s{seed}.json"


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


class Benchmark:
    """Runs one ``BenchmarkConfig`` into ``out_dir``."""

    def __init__(self, cfg: BenchmarkConfig, out_dir: str | Path, progress: bool = True) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.registry = method_registry()
        for method in cfg.methods:  # settings checked before any encoding (also when cfg was changed in code)
            self.registry[method].check_settings(cfg.method_args.get(method, {}))
        # Where data and features are read from does not change a result: resuming ignores it.
        scope = cfg.model_dump(mode="json", exclude={"cache_dir", "data_root"})
        self.cfg_hash = hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:12]
        self.cache = FeatureCache(cfg.cache_dir, batch_size=cfg.batch_size, precision=self.precision)
        self.timings: dict[str, float] = {}

    # -- setup ---------------------------------------------------------------------------------------------
    def _encoder(self) -> DualEncoder:
        enc = create_encoder(self.cfg.encoder.name, **self.cfg.encoder.args)
        return enc.to(self.device).eval()

    def _class_text(self, enc: DualEncoder, ds: Dataset) -> ClassText | None:
        if not any(self.registry[m].uses_text for m in self.cfg.methods):
            return None
        from hica.textbank import build_class_text

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
        get its cached, normalised features and ``st.text``."""
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
                for split, ids in (("train", ep.support), ("val", ep.val))
            )
            sup_x, sup_y, val_x, val_y = sup_f.global_, sup_f.labels, val_f.global_, val_f.labels
        data = FewShotData(
            support=_norm(sup_x),
            support_labels=sup_y,
            val=_norm(val_x),
            val_labels=val_y,
            num_classes=len(st.ds.classes),
            text=st.text,
            seed=seed,
        )
        return cls(**args).fit(data)

    def _run_one(
        self, enc: DualEncoder, st: DatasetState, method: str, k: int, seed: int, ep: Episode | None
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        m = self.fit(enc, st, method, seed, ep)
        t_fit = time.perf_counter() - t0
        if getattr(self.registry[method], "image_level", False):
            if st.test_images is None:
                st.test_images = images_of(enc, [st.by_id[i] for i in st.test.ids])
            probs = m.predict_proba(st.test_images)
        else:
            probs = m.predict_proba(_norm(st.test.global_))
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
            "config_hash": self.cfg_hash,
        }

    # -- the grid ------------------------------------------------------------------------------------------
    @reproducible
    def run(self, resume: bool = True) -> dict[str, Any]:
        """Run (or resume) the grid; returns the aggregated results also written to ``out_dir``.

        ``out_dir`` is locked for the run: a second run writing it at the same time is refused (HicaError)."""
        with out_lock(self.out):
            return self._run_grid(resume)

    def _run_grid(self, resume: bool) -> dict[str, Any]:
        t_start = time.perf_counter()
        parts = self.out / "parts"
        parts.mkdir(exist_ok=True)
        write_text(self.out / "config.resolved.yaml", dump_config(self.cfg))
        enc = self._encoder()
        write_json(
            self.out / "environment.json",
            {**machine_info(self.device, self.precision), "encoder": enc.fingerprint()},
        )
        records: list[dict[str, Any]] = []
        for spec in self.cfg.datasets:
            ds = load_dataset(spec, self.cfg.data_root, skip_bad=self.cfg.skip_bad)
            st = self.state(enc, ds)
            grid: list[tuple[str, int, int, Episode | None]] = []
            for method in self.cfg.methods:
                if self.registry[method].zero_shot:
                    grid.append((method, 0, 0, None))
            for k in self.cfg.shots:
                for seed in self.cfg.seeds:
                    ep = sample_episode(ds, k, seed)
                    write_json(self.out / "episodes" / _part_name(ds.name, "episode", k, seed), ep.to_json())
                    for method in self.cfg.methods:
                        if not self.registry[method].zero_shot:
                            grid.append((method, k, seed, ep))
            bar = tqdm(grid, desc=ds.name, disable=not self.progress, unit="run")
            for method, k, seed, ep in bar:
                bar.set_postfix_str(f"{method} K={k} seed={seed}")
                path = parts / _part_name(ds.name, method, k, seed)
                if resume and path.is_file():
                    rec = json.loads(path.read_text())
                    if rec.get("config_hash") == self.cfg_hash:
                        records.append(rec)
                        continue
                rec = self._run_one(enc, st, method, k, seed, ep)
                write_json(path, rec)
                records.append(rec)
        self.timings["total"] = round(time.perf_counter() - t_start, 2)
        self.timings["cache_hits"], self.timings["cache_misses"] = self.cache.hits, self.cache.misses
        from hica.report.tables import write_outputs

        return write_outputs(self.out, self.cfg, records, self.timings)
