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

Results are written per finished unit to ``parts/`` (a noise (method, p, seed) or a whole corruption
condition), so an interrupted run resumes; fitted models are rebuilt deterministically when needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator, model_validator

from hica.config import BenchmarkConfig, EncoderConfig, _Strict, distinct_seeds, dump_config
from hica.errors import HicaError
from hica.io import write_json, write_text
from hica.runtime import reproducible

log = logging.getLogger(__name__)

DEFAULT_P = [0.0, 0.25, 0.5, 0.75]


class DescriptorNoise(_Strict):
    """Which methods are refitted under descriptor noise, at which fractions ``p``, with which kinds."""

    methods: list[str]
    p: list[float] = Field(default_factory=lambda: list(DEFAULT_P))
    kinds: list[str] = Field(default_factory=lambda: ["swap", "random_words", "typos", "truncate"])

    @field_validator("p")
    @classmethod
    def _p(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 0 <= p <= 1]
        if bad or not v:
            raise ValueError(f"every p must lie in [0, 1] (and at least one given), got {v}")
        return sorted(set(v))

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        from hica.data.descriptors.noise import KINDS

        bad = [k for k in v if k not in KINDS]
        if bad or not v:
            raise ValueError(f"unknown noise kind(s) {bad}; available: {list(KINDS)}")
        return v


class ImageCorruptions(_Strict):
    """Which methods are scored on corrupted test images, with which corruptions and severities."""

    methods: list[str]
    names: list[str] | None = None  # None: every corruption in hica.eval.corruptions
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    max_images: int | None = Field(None, ge=2)  # a fixed class-stratified subset of the test split

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        from hica.eval.corruptions import corruption_names

        if v is not None:
            bad = [n for n in v if n not in corruption_names()]
            if bad or not v:
                raise ValueError(f"unknown corruption(s) {bad}; available: {corruption_names()}")
        return v

    @field_validator("severities")
    @classmethod
    def _sev(cls, v: list[int]) -> list[int]:
        if not v or any(s not in (1, 2, 3, 4, 5) for s in v):
            raise ValueError(f"severities must be integers from 1 to 5, got {v}")
        return sorted(set(v))


class RobustnessConfig(_Strict):
    """``hica analyze robustness``: one dataset, one K, several seeds."""

    name: str = "robustness"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any]
    k: int = Field(16, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    _seeds = field_validator("seeds")(distinct_seeds)
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    text_mode: str = "ensemble"
    descriptor_noise: DescriptorNoise | None = None
    corruptions: ImageCorruptions | None = None
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RobustnessConfig:
        from hica.methods.base import method_registry

        if self.descriptor_noise is None and self.corruptions is None:
            raise ValueError("give descriptor_noise, corruptions or both")
        reg = method_registry()
        for part, spec in (("descriptor_noise", self.descriptor_noise), ("corruptions", self.corruptions)):
            if spec is None:
                continue
            unknown = [m for m in spec.methods if m not in reg]
            if unknown or not spec.methods:
                raise ValueError(f"{part}.methods: unknown method(s) {unknown}; available: {sorted(reg)}")
        if self.descriptor_noise is not None:
            textless = [m for m in self.descriptor_noise.methods if not reg[m].uses_text]
            if textless:
                raise ValueError(
                    f"descriptor_noise.methods {textless} do not use text, so descriptor noise cannot change "
                    "them; list only text-using methods there"
                )
        extra = [m for m in self.method_args if m not in self.methods]
        if extra:
            raise ValueError(f"method_args given for method(s) not in any part: {extra}")
        from hica.methods.base import check_method_args

        for method, args in self.method_args.items():  # each method's settings, checked before any work
            try:
                check_method_args(method, args)
            except HicaError as e:
                raise ValueError(str(e)) from e
        return self

    @property
    def methods(self) -> list[str]:
        out: list[str] = []
        for spec in (self.descriptor_noise, self.corruptions):
            for m in spec.methods if spec else []:
                if m not in out:
                    out.append(m)
        return out

    def benchmark_config(self) -> BenchmarkConfig:
        """The equivalent one-K benchmark grid (fitting goes through the benchmark's code)."""
        return BenchmarkConfig(
            name=self.name,
            encoder=self.encoder,
            datasets=[self.dataset],
            shots=[self.k],
            seeds=self.seeds,
            methods=self.methods,
            method_args=self.method_args,
            text_mode=self.text_mode,
            device=self.device,
            precision=self.precision,
            data_root=self.data_root,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
        )


def load_robustness_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RobustnessConfig:
    """Read a robustness YAML; errors name the file and the key."""
    from hica.config import load_model_config

    return load_model_config(RobustnessConfig, path, overrides)


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


# -- the run -----------------------------------------------------------------------------------------------


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _load_part(path: Path, h: str) -> Any:
    if path.is_file():
        rec = json.loads(path.read_text())
        if rec.get("config_hash") == h:
            return rec
    return None


def _score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from hica.eval.metrics import classification_metrics

    m = classification_metrics(labels, probs)
    keep = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
    return {k: m[k] for k in keep if k in m}


@reproducible
def run_robustness(cfg: RobustnessConfig, out_dir: str | Path, resume: bool = True, progress: bool = True):
    """Run (or resume) both parts of ``cfg`` into ``out_dir``; returns the summary also in metrics.json."""
    from tqdm.auto import tqdm

    from hica.alignment.imagedata import input_spec, load_store
    from hica.data.catalog import load_dataset
    from hica.data.descriptors.noise import corrupt_descriptors
    from hica.data.episodes import sample_episode
    from hica.eval.corruptions import corruption_names
    from hica.eval.protocol import Benchmark, _norm, machine_info
    from hica.runtime import embed_images
    from hica.textbank import build_class_text

    t_start = time.perf_counter()
    out = Path(out_dir)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    bench = Benchmark(cfg.benchmark_config(), out, progress=progress)
    enc = bench._encoder()
    write_json(
        out / "environment.json",
        {**machine_info(bench.device, bench.precision), "encoder": enc.fingerprint()},
    )
    scope = cfg.model_dump(mode="json", exclude={"cache_dir", "data_root"})
    ds = load_dataset(cfg.dataset, bench.cfg.data_root, skip_bad=False)
    st = bench.state(enc, ds)
    reg = bench.registry
    labels = st.test.labels.numpy()
    episodes = {s: sample_episode(ds, cfg.k, s) for s in cfg.seeds}
    fitted: dict[tuple[str, int], Any] = {}
    fit_seconds: dict[str, list[float]] = {}

    def fit(method: str, seed: int, state=st) -> Any:
        t0 = time.perf_counter()
        ep = None if reg[method].zero_shot else episodes[seed]
        m = bench.fit(enc, state, method, seed, ep)
        fit_seconds.setdefault(method, []).append(round(time.perf_counter() - t0, 2))
        return m

    def clean_model(method: str, seed: int) -> Any:
        if (method, seed) not in fitted:
            fitted[(method, seed)] = fit(method, seed)
        return fitted[(method, seed)]

    test_images = None

    def predict_clean(method: str, m: Any) -> np.ndarray:
        nonlocal test_images
        if getattr(reg[method], "image_level", False):
            if test_images is None:
                from hica.eval.protocol import images_of

                test_images = images_of(enc, [st.by_id[i] for i in st.test.ids])
            return m.predict_proba(test_images).float().numpy()
        return m.predict_proba(_norm(st.test.global_)).float().numpy()

    records: list[dict[str, Any]] = []
    reused = 0  # parts taken from an earlier invocation
    # -- descriptor noise ----------------------------------------------------------------------------------
    noise = cfg.descriptor_noise
    if noise is not None:
        h = _hash({"scope": scope, "part": "noise"})
        units = [(s, p, m) for s in cfg.seeds for p in noise.p for m in noise.methods]
        bar = tqdm(units, desc="descriptor noise", disable=not progress, unit="fit")
        noisy_state: dict[tuple[int, float], Any] = {}
        for seed, p, method in bar:
            bar.set_postfix_str(f"{method} p={p} seed={seed}")
            path = parts / f"noise__{method}__p{p:g}__s{seed}.json"
            if resume and (rec := _load_part(path, h)):
                records.append(rec)
                reused += 1
                continue
            if p == 0:
                m = clean_model(method, seed)
            else:
                if (seed, p) not in noisy_state:
                    changes: list[dict[str, Any]] = []
                    desc = corrupt_descriptors(
                        st.descriptors, p, seed=seed, kinds=tuple(noise.kinds), log=changes
                    )
                    write_json(out / "noise_logs" / f"p{p:g}__s{seed}.json", changes)
                    with torch.no_grad():
                        text = build_class_text(enc, desc, ds.classes, mode=cfg.text_mode)
                    noisy_state[(seed, p)] = replace(st, text=text, descriptors=desc)
                m = fit(method, seed, noisy_state[(seed, p)])
            probs = predict_clean(method, m)
            rec = {
                "part": "noise",
                "method": method,
                "seed": seed,
                "p": p,
                "n": len(labels),
                "metrics": _score(labels, probs),
                "selected": getattr(m, "selected", {}),
                "config_hash": h,
            }
            write_json(path, rec)
            records.append(rec)

    # -- image corruptions ---------------------------------------------------------------------------------
    corr = cfg.corruptions
    if corr is not None:
        h = _hash({"scope": scope, "part": "corruptions"})
        names = corr.names or corruption_names()
        keep = stratified_subset(labels.tolist(), corr.max_images)
        ids = [st.test.ids[i] for i in keep]
        y = labels[keep]
        store = None
        spec = input_spec(enc)
        conditions: list[tuple[str | None, int]] = [(None, 0)] + [
            (n, s) for n in names for s in corr.severities
        ]
        bar = tqdm(conditions, desc="corruptions", disable=not progress, unit="condition")
        for name, sev in bar:
            label = "clean" if name is None else f"{name}-{sev}"
            bar.set_postfix_str(label)
            path = parts / f"corruption__{label}.json"
            if resume and (rec := _load_part(path, h)):
                records.extend(rec["records"])
                reused += 1
                continue
            if store is None:
                store = load_store([st.by_id[i] for i in ids], spec.size)
            x = torch.cat(
                [
                    spec.normalize(corrupt_batch(store.images[i : i + 64], name, sev, first_index=i))
                    for i in range(0, len(store), 64)
                ]
            )
            frozen = None
            recs = []
            for method in corr.methods:
                for seed in cfg.seeds:
                    m = clean_model(method, seed)
                    if getattr(reg[method], "image_level", False):
                        probs = m.predict_proba(x).float().numpy()
                    else:
                        if frozen is None:
                            frozen = embed_images(enc, x, bench.device, bench.precision, cfg.batch_size).cpu()
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
            write_json(path, {"config_hash": h, "records": recs})
            records.extend(recs)

    summary = summarize(records, cfg)
    result = {
        "analysis": "robustness",
        "name": cfg.name,
        "dataset": ds.name,
        "classes": ds.classes,
        "k": cfg.k,
        "seeds": cfg.seeds,
        "encoder": cfg.encoder.model_dump(),
        "method_args": cfg.method_args,
        "n_test": len(labels),
        "n_corruption_images": len(keep) if corr is not None else None,
        "majority_accuracy": round(float(np.bincount(labels).max() / len(labels)), 4),
        "corruption_majority_accuracy": round(float(np.bincount(labels[keep]).max() / len(keep)), 4)
        if corr is not None
        else None,
        "summary": summary,
        "fit_seconds": fit_seconds,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "reused_parts": reused,
        "records": records,
    }
    write_json(out / "metrics.json", result)
    write_text(out / "results.md", markdown(result, cfg))
    return result


# -- summaries ---------------------------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4)}


def summarize(records: list[dict[str, Any]], cfg: RobustnessConfig) -> dict[str, Any]:
    """Mean ± std over seeds: accuracy vs p per method; per method and corruption, accuracy vs severity,
    mean accuracy under corruption (mCA, over all corruptions × severities) and mCA / clean accuracy."""
    out: dict[str, Any] = {}
    noise = [r for r in records if r["part"] == "noise"]
    if noise:
        nz: dict[str, Any] = {}
        for m in cfg.descriptor_noise.methods:  # type: ignore[union-attr]
            nz[m] = {}
            for p in cfg.descriptor_noise.p:  # type: ignore[union-attr]
                rs = [r for r in noise if r["method"] == m and r["p"] == p]
                if rs:
                    nz[m][f"{p:g}"] = {
                        metric: _ms([r["metrics"][metric] for r in rs if metric in r["metrics"]])
                        for metric in ("accuracy", "auc")
                        if all(metric in r["metrics"] for r in rs)
                    }
                    alphas = [r.get("selected", {}).get("alpha") for r in rs]
                    if m.startswith("hica") and all(a is not None for a in alphas):  # text weight
                        nz[m][f"{p:g}"]["alpha"] = _ms(alphas)
        out["descriptor_noise"] = nz
    corr = [r for r in records if r["part"] == "corruption"]
    if corr:
        cs: dict[str, Any] = {}
        for m in cfg.corruptions.methods:  # type: ignore[union-attr]
            rs = [r for r in corr if r["method"] == m]
            clean_by_seed = {r["seed"]: r["metrics"]["accuracy"] for r in rs if r["corruption"] == "clean"}
            if not clean_by_seed:
                continue
            per: dict[str, dict[str, Any]] = {}
            mca_by_seed: dict[int, list[float]] = {}
            for r in rs:
                if r["corruption"] == "clean":
                    continue
                per.setdefault(r["corruption"], {}).setdefault(str(r["severity"]), []).append(
                    r["metrics"]["accuracy"]
                )
                mca_by_seed.setdefault(r["seed"], []).append(r["metrics"]["accuracy"])
            mca = {s: float(np.mean(v)) for s, v in mca_by_seed.items()}
            by_sev: dict[int, dict[int, list[float]]] = {}  # severity -> seed -> accuracies
            for r in rs:
                if r["corruption"] != "clean":
                    by_sev.setdefault(r["severity"], {}).setdefault(r["seed"], []).append(
                        r["metrics"]["accuracy"]
                    )
            cs[m] = {
                "clean_accuracy": _ms(list(clean_by_seed.values())),
                "mean_corrupted_accuracy": _ms(list(mca.values())) if mca else None,
                "relative": _ms([mca[s] / clean_by_seed[s] for s in mca if clean_by_seed.get(s)])
                if mca
                else None,
                "per_severity": {
                    str(sev): _ms([float(np.mean(v)) for v in seeds.values()])
                    for sev, seeds in sorted(by_sev.items())
                },
                "per_corruption": {
                    c: {sev: _ms(v) for sev, v in sorted(d.items(), key=lambda kv: int(kv[0]))}
                    for c, d in per.items()
                },
            }
        out["corruptions"] = cs
    return out


def _pm(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def markdown(result: dict[str, Any], cfg: RobustnessConfig) -> str:
    """The run's tables as Markdown."""
    s = result["summary"]
    lines = [
        f"# Robustness: {result['dataset']} (K={result['k']}, seeds {', '.join(map(str, result['seeds']))})",
        "",
        "Accuracy on the test split, mean ± std over seeds (each seed: its own K-shot episode). "
        "Produced by `hica analyze robustness`; the machine is in `environment.json`.",
        "",
    ]
    enc = result.get("encoder")
    if enc:
        args = ", ".join(f"{k}: {v}" for k, v in enc.get("args", {}).items())
        lines += [
            f"Every method uses the encoder `{enc['name']}`{f' ({args})' if args else ''}. Method arguments "
            f"other than the defaults: {json.dumps(result.get('method_args') or {})}.",
            "",
        ]
    if "descriptor_noise" in s:
        ps = [f"{p:g}" for p in cfg.descriptor_noise.p]  # type: ignore[union-attr]
        lines += [
            "## Noisy descriptors",
            "",
            f"A fraction p of the descriptor phrases corrupted ({', '.join(cfg.descriptor_noise.kinds)}; "  # type: ignore[union-attr]
            "drawn with the episode seed, logged in `noise_logs/`); methods fitted with the noisy text, "
            f"scored on the clean test images (n = {result['n_test']}).",
            "",
            "| method | " + " | ".join(f"p = {p}" for p in ps) + " | drop at largest p |",
            "|---|" + "---|" * (len(ps) + 1),
        ]
        for m, by_p in s["descriptor_noise"].items():
            cells = [_pm(by_p.get(p, {}).get("accuracy")) for p in ps]
            a0, a1 = by_p.get(ps[0], {}).get("accuracy"), by_p.get(ps[-1], {}).get("accuracy")
            drop = f"{a1['mean'] - a0['mean']:+.3f}" if a0 and a1 else "–"
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {drop} |")
        lines.append("")
        for m, by_p in s["descriptor_noise"].items():
            if all("alpha" in by_p.get(p, {}) for p in ps):
                lines.append(
                    f"{m}: weight α of the class-text prototypes in its classifier (chosen on the validation "
                    "shots), mean ± std over seeds: "
                    + ", ".join(f"p = {p}: {_pm(by_p[p]['alpha'], 2)}" for p in ps)
                    + "."
                )
                lines.append("")
    if "corruptions" in s:
        cs = s["corruptions"]
        names = sorted({c for v in cs.values() for c in v["per_corruption"]})
        lines += [
            "## Image corruptions",
            "",
            f"Each method fitted once on the clean episode, scored on n = {result['n_corruption_images']} "
            "test images corrupted at the encoder's input size (ImageNet-C severities; "
            "`hica.eval.corruptions`). mCA: mean accuracy over all corruptions × severities; relative: "
            "mCA / clean accuracy (per seed, then averaged).",
            "",
            "| method | clean | mCA | relative | " + " | ".join(names) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
        for m, v in cs.items():
            per = []
            for c in names:
                d = v["per_corruption"].get(c, {})
                per.append(f"{np.mean([x['mean'] for x in d.values()]):.3f}" if d else "–")
            lines.append(
                f"| {m} | {_pm(v['clean_accuracy'])} | {_pm(v['mean_corrupted_accuracy'])} | "
                f"{_pm(v['relative'])} | " + " | ".join(per) + " |"
            )
        lines += ["", "Per-corruption columns: accuracy averaged over severities (mean over seeds).", ""]
    reused = result.get("reused_parts", 0)
    note = f" ({reused} finished part(s) reused from an earlier invocation)" if reused else ""
    lines += [f"Wall time of this invocation {result['wall_seconds']:.0f} s{note}.", ""]
    return "\n".join(lines)
