"""Robustness of few-shot methods: noisy class descriptors, and image corruptions at severities 1-5.

*Descriptor noise.* For each p, ``round(p·N)`` of the descriptor file's N phrases are corrupted
(:func:`hica.data.descriptors.noise.corrupt_descriptors`: attribute swapped to another class's, random
medical words, typos, truncation), drawn with the episode seed. Every text-using method is fitted on the
same K-shot episode with the noisy descriptors, then scored on the clean test split.

*Image corruptions.* Each method is fitted once on the clean episode. The test images are resized to the
encoder's input (the square bicubic resize of the preprocessing), corrupted there (the ImageNet-C severity
parameters assume ~224 px images), normalised and scored. Grayscale images (equal RGB channels: X-ray,
ultrasound) are corrupted as one channel, so noise stays monochrome as a scanner's would. The corrupted
pixels of image i are seeded by (corruption, severity, i): every method sees the same corrupted images.

The cells run on :class:`hica.eval.grid.GridRun`: one part per noise (method, p, seed) and one per whole
corruption condition, written as each finishes, so an interrupted run resumes; fitted models are rebuilt
deterministically when needed. Settings: :mod:`hica.analysis.robustness_config`; the summary and its
Markdown: :mod:`hica.report.robustness`.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from hica.analysis.registry import Analysis, register_analysis
from hica.analysis.robustness_config import (
    DEFAULT_P,
    DescriptorNoise,
    ImageCorruptions,
    RobustnessConfig,
    load_robustness_config,
)
from hica.config import dump_config
from hica.data.catalog import split_version
from hica.environment import machine_info
from hica.eval.grid import STAMP, GridRun
from hica.io import out_lock, write_json, write_text
from hica.report.robustness import markdown, summarize
from hica.runtime import reproducible

if TYPE_CHECKING:  # the protocol pulls in every encoder and method: imported when a run starts
    from hica.encoders import DualEncoder
    from hica.eval.protocol import Benchmark, DatasetState

__all__ = [
    "DEFAULT_P",
    "DescriptorNoise",
    "ImageCorruptions",
    "RobustnessConfig",
    "corrupt_batch",
    "load_robustness_config",
    "markdown",
    "run_robustness",
    "stratified_subset",
    "summarize",
]

# -- corrupted inputs --------------------------------------------------------------------------------------


def stratified_subset(labels: list[int], n: int | None, seed: int = 0) -> list[int]:
    """Indices of a fixed class-stratified subset of size ``n`` (all, in order, when ``n`` is None/large)."""
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    classes = sorted(set(y.tolist()))
    picked: list[int] = []
    quota = {c: int(round(n * float((y == c).mean()))) for c in classes}
    for c in classes:
        idx = np.flatnonzero(y == c)
        picked += rng.choice(idx, size=min(len(idx), max(1, quota[c])), replace=False).tolist()
    return sorted(picked)


def corrupt_batch(
    images: torch.Tensor, name: str | None, severity: int, first_index: int = 0
) -> torch.Tensor:
    """uint8 (N, 3, S, S) → float [0, 1] (N, 3, S, S), corrupted (``name`` None: clean).

    Image ``first_index + i`` is seeded by (name, severity, index); grayscale images are corrupted as 'L'."""
    if name is None:
        return images.float().div(255)
    from hica.eval.corruptions import corrupt

    out = []
    salt = zlib.crc32(name.encode())
    for i, x in enumerate(images):
        a = x.permute(1, 2, 0).numpy()
        gray = bool((a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all())
        pil = Image.fromarray(a[..., 0] if gray else a, mode="L" if gray else "RGB")
        seed = (salt * 31 + severity * 1_000_003 + first_index + i) % (2**32)
        b = np.array(corrupt(pil, name, severity, seed=seed))
        if gray:
            b = np.repeat(b[..., None], 3, axis=2)
        out.append(torch.from_numpy(np.ascontiguousarray(b)).permute(2, 0, 1))
    return torch.stack(out).float().div(255)


# -- the cells ---------------------------------------------------------------------------------------------


def _score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from hica.eval.metrics import classification_metrics

    m = classification_metrics(labels, probs)
    keep = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
    return {k: m[k] for k in keep if k in m}


class RobustnessCells:
    """The fitting behind the parts: one noise cell per (method, p, seed), one corruption cell per condition.

    Fits go through the benchmark's code (``Benchmark.fit``) on the config's episodes; a method fitted on a
    clean episode is kept for every cell that needs it (p = 0, every corruption condition)."""

    def __init__(self, cfg: RobustnessConfig, bench: Benchmark, enc: DualEncoder, out: Path) -> None:
        from hica.data.catalog import load_dataset
        from hica.data.episodes import sample_episode

        self.cfg, self.bench, self.enc, self.out = cfg, bench, enc, out
        self.ds = load_dataset(cfg.dataset, bench.cfg.data_root, skip_bad=False)
        self.st = bench.state(enc, self.ds)
        self.reg = bench.registry
        self.labels = self.st.test.labels.numpy()
        self.episodes = {s: sample_episode(self.ds, cfg.k, s) for s in cfg.seeds}
        self.fitted: dict[tuple[str, int], Any] = {}
        self.fit_seconds: dict[str, list[float]] = {}
        self.noisy: dict[tuple[int, float], DatasetState] = {}
        self.test_images: torch.Tensor | None = None
        self.keep = stratified_subset(
            self.labels.tolist(), cfg.corruptions.max_images if cfg.corruptions else None
        )
        self.store: Any = None

    # -- fitting and clean scoring -------------------------------------------------------------------------
    def fit(self, method: str, seed: int, state: DatasetState | None = None) -> Any:
        t0 = time.perf_counter()
        ep = None if self.reg[method].zero_shot else self.episodes[seed]
        m = self.bench.fit(self.enc, self.st if state is None else state, method, seed, ep)
        self.fit_seconds.setdefault(method, []).append(round(time.perf_counter() - t0, 2))
        return m

    def clean_model(self, method: str, seed: int) -> Any:
        if (method, seed) not in self.fitted:
            self.fitted[(method, seed)] = self.fit(method, seed)
        return self.fitted[(method, seed)]

    def predict_clean(self, method: str, m: Any) -> np.ndarray:
        from hica.eval.episode_data import images_of
        from hica.eval.protocol import normalize_features

        if getattr(self.reg[method], "image_level", False):
            if self.test_images is None:
                self.test_images = images_of(self.enc, [self.st.by_id[i] for i in self.st.test.ids])
            return m.predict_proba(self.test_images).float().numpy()
        return m.predict_proba(normalize_features(self.st.test.global_)).float().numpy()

    # -- descriptor noise ----------------------------------------------------------------------------------
    def noisy_state(self, seed: int, p: float) -> DatasetState:
        """The dataset state with descriptors noised at ``p`` (seeded by ``seed``); the changes are logged."""
        from hica.data.descriptors.noise import corrupt_descriptors
        from hica.model.class_text import build_class_text

        if (seed, p) not in self.noisy:
            noise = self.cfg.descriptor_noise
            assert noise is not None
            changes: list[dict[str, Any]] = []
            desc = corrupt_descriptors(
                self.st.descriptors, p, seed=seed, kinds=tuple(noise.kinds), log=changes
            )
            write_json(self.out / "noise_logs" / f"p{p:g}__s{seed}.json", changes)
            with torch.no_grad():
                text = build_class_text(self.enc, desc, self.ds.classes, mode=self.cfg.text_mode)
            self.noisy[(seed, p)] = replace(self.st, text=text, descriptors=desc)
        return self.noisy[(seed, p)]

    def noise_cell(self, method: str, p: float, seed: int) -> dict[str, Any]:
        """``method`` fitted with descriptors noised at ``p``, scored on the clean test split."""
        m = self.clean_model(method, seed) if p == 0 else self.fit(method, seed, self.noisy_state(seed, p))
        probs = self.predict_clean(method, m)
        return {
            "part": "noise",
            "method": method,
            "seed": seed,
            "p": p,
            "n": len(self.labels),
            "metrics": _score(self.labels, probs),
            "selected": getattr(m, "selected", {}),
        }

    # -- image corruptions ---------------------------------------------------------------------------------
    def corruption_cell(self, name: str | None, sev: int) -> dict[str, Any]:
        """Every (method, seed) fitted on its clean episode, scored on the test subset corrupted by
        ``name`` at ``sev`` (``name`` None: clean); ``{"records": [...]}``."""
        from hica.model.imagedata import input_spec, load_store
        from hica.runtime import embed_images

        corr = self.cfg.corruptions
        assert corr is not None
        ids = [self.st.test.ids[i] for i in self.keep]
        y = self.labels[self.keep]
        spec = input_spec(self.enc)
        if self.store is None:
            self.store = load_store([self.st.by_id[i] for i in ids], spec.size)
        store = self.store
        x = torch.cat(
            [
                spec.normalize(corrupt_batch(store.images[i : i + 64], name, sev, first_index=i))
                for i in range(0, len(store), 64)
            ]
        )
        frozen = None
        recs = []
        for method in corr.methods:
            for seed in self.cfg.seeds:
                m = self.clean_model(method, seed)
                if getattr(self.reg[method], "image_level", False):
                    probs = m.predict_proba(x).float().numpy()
                else:
                    if frozen is None:
                        b = self.bench
                        frozen = embed_images(self.enc, x, b.device, b.precision, self.cfg.batch_size).cpu()
                    probs = m.predict_proba(frozen).float().numpy()
                recs.append(
                    {
                        "part": "corruption",
                        "method": method,
                        "seed": seed,
                        "corruption": name or "clean",
                        "severity": sev,
                        "n": len(y),
                        "metrics": _score(y, probs),
                    }
                )
        return {"records": recs}


# -- the run -----------------------------------------------------------------------------------------------


@reproducible
def run_robustness(
    cfg: RobustnessConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool = True,
    rerun_other_code: bool = False,
) -> dict[str, Any]:
    """Run (or resume) both parts of ``cfg`` into ``out_dir``; returns the summary also in metrics.json."""
    from tqdm.auto import tqdm

    from hica.eval.corruptions import corruption_names
    from hica.eval.protocol import Benchmark

    t_start = time.perf_counter()
    out = Path(out_dir)
    with out_lock(out):
        bench = Benchmark(cfg.benchmark_config(), out, progress=progress)
        enc = bench.encoder()
        scope = cfg.model_dump(mode="json", exclude={"cache_dir", "data_root"})
        version = split_version(cfg.dataset)
        if version is not None:  # a carved split that changed: parts of the old one are not reused
            scope["split_version"] = version
        with GridRun(
            out,
            scope=scope,
            encoder=enc.fingerprint(),
            resume=resume,
            rerun_other_code=rerun_other_code,
            config_yaml=dump_config(cfg),
            environment=machine_info(bench.device, bench.precision),
        ) as run:
            cells = RobustnessCells(cfg, bench, enc, out)
            records: list[dict[str, Any]] = []
            noise = cfg.descriptor_noise
            if noise is not None:
                h = run.hash_of({"scope": scope, "part": "noise"})
                units = [(s, p, m) for s in cfg.seeds for p in noise.p for m in noise.methods]
                bar = tqdm(units, desc="descriptor noise", disable=not progress, unit="fit")
                for seed, p, method in bar:
                    bar.set_postfix_str(f"{method} p={p} seed={seed}")
                    rec = run.part(
                        f"noise__{method}__p{p:g}__s{seed}",
                        lambda m=method, p=p, s=seed: cells.noise_cell(m, p, s),
                        hash=h,
                    )
                    records.append({k: v for k, v in rec.items() if k != STAMP})
            corr = cfg.corruptions
            if corr is not None:
                h = run.hash_of({"scope": scope, "part": "corruptions"})
                names = corr.names or corruption_names()
                conditions = [(None, 0)] + [(n, s) for n in names for s in corr.severities]
                bar = tqdm(conditions, desc="corruptions", disable=not progress, unit="condition")
                for name, sev in bar:
                    label = "clean" if name is None else f"{name}-{sev}"
                    bar.set_postfix_str(label)
                    rec = run.part(
                        f"corruption__{label}", lambda n=name, s=sev: cells.corruption_cell(n, s), hash=h
                    )
                    records.extend(rec["records"])
        result = _result(cfg, cells, records, run, t_start)
        write_json(out / "metrics.json", result)
        write_text(out / "results.md", markdown(result, cfg))
    return result


def _result(
    cfg: RobustnessConfig, cells: RobustnessCells, records: list[dict[str, Any]], run: GridRun, t_start: float
) -> dict[str, Any]:
    """What metrics.json holds: the run's facts, the summary, the records and how this invocation went."""
    labels, keep, corr = cells.labels, cells.keep, cfg.corruptions is not None
    return {
        "analysis": "robustness",
        "name": cfg.name,
        "dataset": cells.ds.name,
        "classes": cells.ds.classes,
        "k": cfg.k,
        "seeds": cfg.seeds,
        "encoder": cfg.encoder.model_dump(),
        "method_args": cfg.method_args,
        "n_test": len(labels),
        "n_corruption_images": len(keep) if corr else None,
        "majority_accuracy": round(float(np.bincount(labels).max() / len(labels)), 4),
        "corruption_majority_accuracy": round(float(np.bincount(labels[keep]).max() / len(keep)), 4)
        if corr
        else None,
        "summary": summarize(records, cfg),
        "fit_seconds": cells.fit_seconds,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "compute_seconds": round(run.stats.compute_seconds, 1),
        "reused_parts": run.stats.resumed,
        "grid": run.summary(),
        "records": records,
    }


register_analysis(
    Analysis(
        name="robustness",
        help="Accuracy under noisy descriptors (fraction p) and image corruptions (severities 1-5), "
        "per method.",
        load_config=load_robustness_config,
        run=run_robustness,
        table="results.md",
    )
)
