"""HiCA stage 1: domain-specific pretraining of both towers, without reading a single label.

Image tower — DeepCluster-v2 (Caron et al., 2018; the centroid-classifier variant of the SwAV paper, 2020):
at the start of every epoch the current encoder embeds the unlabeled images (eval mode, stage-1
resolution), the L2-normalised embeddings are PCA-whitened and clustered with k-means, and the epoch trains
the image tower to predict each image's cluster from an augmented view, with the normalised cluster
centroids as a fixed cosine classifier (temperature τ). Sampling is uniform over clusters (DeepCluster's
guard against one cluster swallowing the data). The stem and the first ``freeze_stages`` stages keep
their ImageNet weights but their BatchNorm statistics adapt to the domain. A final BatchNorm recalibration
pass at the encoder's full input size removes the train/test resolution gap (Touvron et al., FixRes 2019).
Every epoch's clustering is saved, so a killed run resumes with the same pseudo-labels.

Text tower — SimCSE (Gao et al., 2021) on a domain corpus: each sentence's positive is its own second
dropout view, plus, for descriptor sentences, the other sentences of the same class and file (the
category → attribute hierarchy is text, not an image label). Only the top ``train_layers`` transformer
layers move. The corpus is every bundled descriptor file (class descriptions and attribute phrases rendered
into sentences) and the text files in ``hica/data/corpus`` (see its README).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hica.alignment.augment import training_augment
from hica.alignment.imagedata import ImageStore, InputSpec, input_spec, load_store
from hica.errors import HicaError
from hica.io import save_tensors, write_json
from hica.modelcard import write_model_card

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ image


class ClusterHead(nn.Module):
    """The image tower (trunk + projection) with a fixed cosine classifier over cluster centroids."""

    def __init__(self, encoder: nn.Module, clusters: int, temperature: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.temperature = temperature
        self.register_buffer("centroids", torch.zeros(clusters, encoder.embed_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder.encode_image(x).global_.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x) @ self.centroids.T / self.temperature


def freeze_early(encoder: nn.Module, stages: int) -> list[str]:
    """Freeze the stem and the first ``stages`` blocks of a timm trunk (``encoder.trunk``); returns names of
    the frozen parameter groups. BatchNorm statistics keep updating in train mode (domain adaptation)."""
    trunk = getattr(encoder, "trunk", None)
    if trunk is None or stages <= 0:
        return []
    frozen = []
    for name in ("conv_stem", "bn1"):
        if hasattr(trunk, name):
            for p in getattr(trunk, name).parameters():
                p.requires_grad_(False)
            frozen.append(f"trunk.{name}")
    blocks = getattr(trunk, "blocks", [])
    for i in range(min(stages, len(blocks))):
        for p in blocks[i].parameters():
            p.requires_grad_(False)
        frozen.append(f"trunk.blocks.{i}")
    return frozen


def kmeans_assign(emb: np.ndarray, k: int, pca_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA-whiten + L2-normalise ``emb`` (N, D), k-means into ``k`` clusters → (labels (N,), centroids (k, D)
    as normalised means of the members' original embeddings)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    n = emb.shape[0]
    if k > n:
        raise HicaError(f"stage 1 asks for {k} clusters but has only {n} images; lower image.clusters")
    x = PCA(n_components=min(pca_dim, n - 1, emb.shape[1]), whiten=True, random_state=seed).fit_transform(emb)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-8
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    cent = np.stack(
        [emb[labels == c].mean(0) if (labels == c).any() else np.zeros(emb.shape[1]) for c in range(k)]
    )
    cent /= np.linalg.norm(cent, axis=1, keepdims=True) + 1e-8
    return labels.astype(np.int64), cent.astype(np.float32)


@torch.no_grad()
def embed_store(
    model: ClusterHead,
    store: ImageStore,
    spec: InputSpec,
    size: int,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> np.ndarray:
    """Eval-mode normalised embeddings of every stored image at ``size`` px."""
    from hica.runtime import autocast

    was = model.training
    model.eval()
    out = []
    for i in range(0, len(store), batch_size):
        x = store.float_images(range(i, min(i + batch_size, len(store))))
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp_(0, 1)
        with autocast(device, precision):
            out.append(model.embed(spec.normalize(x).to(device)).float().cpu())
    model.train(was)
    return torch.cat(out).numpy()


@torch.no_grad()
def recalibrate_bn(
    encoder: nn.Module,
    store: ImageStore,
    spec: InputSpec,
    images: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> int:
    """Re-estimate BatchNorm running statistics at the full input size (cumulative average over
    ``images`` stored images, no augmentation); returns how many images were used (0: no BatchNorm)."""
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    moms = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    idx = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed))[:images]
    for i in range(0, len(idx), batch_size):
        x = store.float_images(idx[i : i + batch_size])
        if x.shape[-1] != spec.size:
            x = F.interpolate(x, size=(spec.size, spec.size), mode="bicubic", antialias=True).clamp_(0, 1)
        encoder.encode_image(spec.normalize(x).to(device))
    for m, mom in zip(bns, moms, strict=True):
        m.momentum = mom
    encoder.eval()
    return len(idx)


def fabric_precision(precision: str, device: torch.device) -> str:
    """hica precision (fp32 / bf16) → Lightning Fabric precision string."""
    return "bf16-mixed" if precision == "bf16" else "32-true"


def train_image_tower(
    encoder: nn.Module,
    store: ImageStore,
    cfg: Any,
    modality: str,
    run_dir: Path,
    device: torch.device,
    precision: str,
    seed: int,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """DeepCluster-v2 on ``store`` (labels unused); returns a summary. ``cfg``: the ``image`` section."""
    from hica.train.engine import TrainConfig, train

    spec = input_spec(encoder)
    frozen = freeze_early(encoder, cfg.freeze_stages)
    model = ClusterHead(encoder, cfg.clusters, cfg.temperature).to(device)
    aug = training_augment(modality, cfg.resolution, min_scale=cfg.min_scale)  # type: ignore[arg-type]
    per_epoch = len(store) // cfg.batch_size
    if per_epoch < 1:
        raise HicaError(f"stage 1 has {len(store)} images, fewer than image.batch_size {cfg.batch_size}")
    clusters_dir = run_dir / "clusters"
    stats: dict[int, dict[str, Any]] = {}
    prev: dict[str, np.ndarray] = {}

    def clustering(epoch: int) -> np.ndarray:
        path = clusters_dir / f"epoch-{epoch:03d}.safetensors"
        if path.is_file():
            from safetensors.torch import load_file

            saved = load_file(str(path))
            labels, cent = saved["labels"].numpy(), saved["centroids"].numpy()
        else:
            t0 = time.perf_counter()
            emb = embed_store(model, store, spec, cfg.resolution, 128, device, precision)
            labels, cent = kmeans_assign(emb, cfg.clusters, cfg.pca_dim, seed + epoch)
            save_tensors(path, {"labels": torch.from_numpy(labels), "centroids": torch.from_numpy(cent)})
            sizes = np.bincount(labels, minlength=cfg.clusters)
            st: dict[str, Any] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "largest_cluster": int(sizes.max()),
                "smallest_cluster": int(sizes.min()),
            }
            if "labels" in prev:
                from sklearn.metrics import normalized_mutual_info_score

                st["nmi_vs_previous_epoch"] = round(
                    float(normalized_mutual_info_score(prev["labels"], labels)), 4
                )
            stats[epoch] = st
            write_json(clusters_dir / f"epoch-{epoch:03d}.json", st)
        prev["labels"] = labels
        model.centroids.copy_(torch.from_numpy(cent).to(model.centroids.device))
        return labels

    def factory(epoch: int, rank: int, world: int):
        labels = torch.from_numpy(clustering(epoch))
        counts = torch.bincount(labels, minlength=cfg.clusters).clamp_min(1).float()
        weights = (1.0 / counts)[labels]
        gen = torch.Generator().manual_seed(seed * 1009 + epoch)
        order = torch.multinomial(weights, per_epoch * cfg.batch_size, replacement=True, generator=gen)
        shard = order[rank::world]
        for b in range(len(shard) // cfg.batch_size):
            idx = shard[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            raw = store.float_images(idx)
            x = torch.stack([aug(img)[0] for img in raw])
            yield {"images": spec.normalize(x).contiguous(), "targets": labels[idx]}

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]):
        logits = m(batch["images"])
        loss = F.cross_entropy(logits.float(), batch["targets"])
        acc = (logits.argmax(1) == batch["targets"]).float().mean()
        return loss, {"cluster_acc": acc}

    tcfg = TrainConfig(
        max_steps=cfg.epochs * per_epoch,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=min(per_epoch // 2, 50),
        precision=fabric_precision(precision, device),
        seed=seed,
        checkpoint_every=max(1, per_epoch // 2),
        keep_checkpoints=1,
        log_every=10,
        devices=1,
        accelerator="cuda" if device.type == "cuda" else "cpu",
        progress=progress,
    )
    t0 = time.perf_counter()
    summary = train(
        model, loss_fn, factory, tcfg, run_dir, resume=resume, extra={"model_config": {"stage": 1}}
    )
    done_file = run_dir / "summary.json"
    if summary["resumed_from"] == tcfg.max_steps and done_file.is_file():
        # Finished in an earlier call: report that run's training; the BatchNorm recalibration is redone
        # (deterministically) from the final checkpoint.
        previous = json.loads(done_file.read_text())
        recal = recalibrate_bn(encoder, store, spec, cfg.bn_recalibration_images, 64, device, seed)
        previous["bn_recalibration"]["images"] = recal
        return {**previous, "reused_finished_run": True}
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    used = recalibrate_bn(encoder, store, spec, cfg.bn_recalibration_images, 64, device, seed)
    result = {
        "images": len(store),
        "resolution": cfg.resolution,
        "steps": summary["step"],
        "resumed_from": summary["resumed_from"],
        "final_loss": summary["loss"],
        "frozen": frozen,
        "clusterings": {str(k): v for k, v in sorted(stats.items())},
        "train_seconds": round(t_train, 1),
        "bn_recalibration": {
            "images": used,
            "size": spec.size,
            "seconds": round(time.perf_counter() - t1, 1),
        },
    }
    write_json(done_file, result)
    return result


# ------------------------------------------------------------------------------------------------- text


@dataclass
class TextCorpus:
    """Sentences for text adaptation; ``group[i]`` ≥ 0 puts descriptor sentences of one class together."""

    sentences: list[str]
    group: list[int]
    sources: dict[str, int]

    def describe(self) -> dict[str, Any]:
        words = sum(len(s.split()) for s in self.sentences)
        return {"sentences": len(self.sentences), "words": words, "sources": self.sources}


def build_corpus(extra_files: list[str] | None = None, descriptors: list[str] | None = None) -> TextCorpus:
    """Bundled descriptor sentences (``descriptors``: names or paths; default every bundled file) and the
    bundled corpus files plus ``extra_files`` (one sentence per line)."""
    from importlib import resources

    from hica.data.descriptors import list_bundled, load_descriptors

    sentences: list[str] = []
    group: list[int] = []
    sources: dict[str, int] = {}
    seen: set[str] = set()
    gids: dict[str, int] = {}  # one group per class key: busi/breastmnist "malignant" are one class

    def add(s: str, g: int, src: str) -> None:
        s = " ".join(s.split())
        if s and s not in seen:
            seen.add(s)
            sentences.append(s)
            group.append(g)
            sources[src] = sources.get(src, 0) + 1

    for name in descriptors if descriptors is not None else list_bundled():
        d = load_descriptors(name)
        for cls in d.classes:
            g = gids.setdefault(cls, len(gids))
            for s in d.class_prompts(cls, "descriptions") + d.attribute_prompts(cls):
                add(s, g, f"descriptors:{d.dataset}")
    files = [p for p in resources.files("hica.data.corpus").iterdir() if p.name.endswith(".txt")]
    for p in sorted(files, key=lambda p: p.name):
        for line in p.read_text(encoding="utf-8").splitlines():
            add(line, -1, f"corpus:{p.name}")
    for f in extra_files or []:
        path = Path(f)
        if not path.is_file():
            raise HicaError(f"text corpus file {path} not found (stage 1 text.corpus_files)")
        for line in path.read_text(encoding="utf-8").splitlines():
            add(line, -1, f"file:{path.name}")
    if len(sentences) < 8:
        raise HicaError(f"the stage-1 text corpus has only {len(sentences)} sentences; give more text")
    return TextCorpus(sentences, group, sources)


def _text_params(encoder: nn.Module, layers: int) -> tuple[list[nn.Parameter], list[str]]:
    text_model = getattr(encoder, "text_model", None)
    enc_layers = getattr(getattr(text_model, "encoder", None), "layer", None)
    if enc_layers is None:
        raise HicaError(
            "stage-1 text adaptation needs a BERT-style text_model (encoder "
            f"{getattr(encoder, 'name', '?')!r} "
            "has none); set text.enabled: false"
        )
    for p in text_model.parameters():
        p.requires_grad_(False)
    n = len(enc_layers)
    chosen = list(range(max(0, n - layers), n))
    params = []
    for i in chosen:
        for p in enc_layers[i].parameters():
            p.requires_grad_(True)
            params.append(p)
    return params, [f"text_model.encoder.layer.{i}." for i in chosen]


def pooled_sentences(encoder: nn.Module, texts: list[str]) -> torch.Tensor:
    """Mean-pooled text-transformer embeddings (before ``text_proj``) of ``texts``."""
    from hica.encoders._common import encode_sentences

    return encode_sentences(encoder.tokenizer, encoder.text_model, texts, encoder.max_text_length)


@torch.no_grad()
def hierarchy_retrieval(encoder: nn.Module, corpus: TextCorpus) -> float:
    """Share of descriptor sentences whose nearest other descriptor sentence belongs to the same class."""
    idx = [i for i, g in enumerate(corpus.group) if g >= 0]
    was = encoder.text_model.training
    encoder.text_model.eval()
    emb = torch.cat(
        [
            F.normalize(pooled_sentences(encoder, [corpus.sentences[i] for i in idx[j : j + 128]]), dim=-1)
            for j in range(0, len(idx), 128)
        ]
    )
    encoder.text_model.train(was)
    sim = emb @ emb.T
    sim.fill_diagonal_(-2)
    g = torch.tensor([corpus.group[i] for i in idx])
    return float((g[sim.argmax(1)] == g).float().mean())


def adapt_text_tower(
    encoder: nn.Module, corpus: TextCorpus, cfg: Any, device: torch.device, seed: int, run_dir: Path
) -> dict[str, Any]:
    """SimCSE + descriptor-hierarchy positives on ``corpus``; returns a summary (``cfg``: text section)."""
    params, prefixes = _text_params(encoder, cfg.train_layers)
    before = hierarchy_retrieval(encoder, corpus)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    n = len(corpus.sentences)
    bs = min(cfg.batch_size, n)
    steps = cfg.epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    groups = torch.tensor(corpus.group)
    encoder.text_model.train()  # dropout on: the two views of a sentence differ by dropout
    rows, t0, step = [], time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            texts = [corpus.sentences[j] for j in idx.tolist()]
            a = F.normalize(pooled_sentences(encoder, texts).float(), dim=-1)
            b = F.normalize(pooled_sentences(encoder, texts).float(), dim=-1)
            logits = a @ b.T / cfg.temperature
            g = groups[idx]
            same = (g[:, None] == g[None, :]) & (g[:, None] >= 0)
            pos = same | torch.eye(len(idx), dtype=torch.bool)
            logp = logits.log_softmax(1)
            loss = -(logp * pos).sum(1).div(pos.sum(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            rows.append({"step": step, "epoch": epoch, "loss": round(loss.item(), 5)})
    encoder.text_model.eval()
    for p in encoder.text_model.parameters():
        p.requires_grad_(False)
    from hica.io import write_text

    write_text(
        run_dir / "log.csv",
        "step,epoch,loss\n" + "".join(f"{r['step']},{r['epoch']},{r['loss']}\n" for r in rows),
    )
    after = hierarchy_retrieval(encoder, corpus)
    return {
        "corpus": corpus.describe(),
        "trained": prefixes,
        "steps": step,
        "first_loss": rows[0]["loss"],
        "final_loss": rows[-1]["loss"],
        "seconds": round(time.perf_counter() - t0, 1),
        "descriptor_nn_same_class": {"before": round(before, 4), "after": round(after, 4)},
        "prefixes": prefixes,
    }


# ----------------------------------------------------------------------------------------------- runner


def run_stage1(cfg: Any, out_dir: str | Path, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run stage 1 from a validated ``Stage1Config`` into ``out_dir``; the adapted encoder is written to
    ``out_dir/encoder`` (load it with ``encoder: {name: checkpoint, args: {path: ...}}``). It runs at the
    config's fixed thread count with deterministic algorithms (``runtime.deterministic``)."""
    from hica.runtime import deterministic

    with deterministic(cfg.threads):
        return _run_stage1(cfg, out_dir, resume, progress)


def _run_stage1(cfg: Any, out_dir: str | Path, resume: bool, progress: bool) -> dict[str, Any]:
    from hica.config import dump_config
    from hica.data.catalog import load_dataset
    from hica.encoders import create_encoder
    from hica.encoders.checkpoint import save_encoder
    from hica.eval.efficiency import peak_rss_mb
    from hica.eval.protocol import machine_info
    from hica.io import write_text
    from hica.runtime import resolve_device, resolve_precision

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    encoder = create_encoder(cfg.encoder.name, **cfg.encoder.args).to(device)
    base_fp = json.loads(json.dumps(encoder.fingerprint(), default=str))
    for p in encoder.parameters():
        p.requires_grad_(False)
    summary: dict[str, Any] = {"machine": machine_info(device, precision)}
    prefixes: list[str] = []
    ds, samples = None, []
    if cfg.image.enabled:
        ds = load_dataset(cfg.dataset, cfg.data_root, skip_bad=cfg.skip_bad)
        samples = [s for sp in cfg.splits for s in ds.split(sp)]
        if cfg.max_images and cfg.max_images < len(samples):  # seeded subset (splits are sorted by class)
            pick = np.random.default_rng(cfg.seed).choice(len(samples), cfg.max_images, replace=False)
            samples = [samples[i] for i in sorted(pick)]
        t0 = time.perf_counter()
        spec = input_spec(encoder)
        store = load_store(
            samples,
            max(spec.size, cfg.image.resolution),
            skip_bad=cfg.skip_bad,
            progress=progress,
            desc="stage-1 images",
        )
        t_load = time.perf_counter() - t0
        for p in encoder.image_parameters():
            p.requires_grad_(True)
        img = train_image_tower(
            encoder,
            store,
            cfg.image,
            cfg.modality,
            out / "image",
            device,
            precision,
            cfg.seed,
            resume=resume,
            progress=progress,
        )
        img.update(dataset=ds.name, splits=list(cfg.splits), load_seconds=round(t_load, 1), labels_read=False)
        summary["image"] = img
        for p in encoder.parameters():
            p.requires_grad_(False)
        prefixes += ["trunk.", "image_proj."] if hasattr(encoder, "trunk") else ["model.visual."]
        del store
    if cfg.text.enabled:
        corpus = build_corpus(cfg.text.corpus_files, cfg.text.descriptors)
        txt = adapt_text_tower(encoder, corpus, cfg.text, device, cfg.seed, out / "text")
        summary["text"] = txt
        prefixes += txt.pop("prefixes")
    if not prefixes:
        raise HicaError("stage 1 config turns off both image and text adaptation: nothing to do")
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    save_encoder(
        encoder,
        out / "encoder",
        base={"name": cfg.encoder.name, "args": cfg.encoder.args, "fingerprint": base_fp},
        prefixes=prefixes,
        meta={
            "stage": 1,
            "config": cfg.model_dump(mode="json", exclude={"data_root"}),
            "summary": {k: v for k, v in summary.items() if k != "machine"},
        },
    )
    write_model_card(out / "encoder", stage1_card(cfg, out / "encoder", ds, samples, base_fp, summary))
    write_json(out / "summary.json", summary)
    return summary


def stage1_card(
    cfg: Any, enc_dir: Path, ds: Any, samples: list, base_fp: Any, summary: dict[str, Any]
) -> dict[str, Any]:
    """The model card of a stage-1 encoder folder (its weights already written)."""
    from hica.modelcard import build_model_card

    training = {
        k: {kk: vv for kk, vv in v.items() if kk not in ("clusterings", "frozen")}
        if isinstance(v, dict)
        else v
        for k, v in summary.items()
        if k in ("image", "text", "total_seconds")
    }
    return build_model_card(
        enc_dir,
        kind="encoder",
        name=cfg.name,
        dataset=ds,
        splits_used=list(cfg.splits) if ds is not None else [],
        encoder_name=cfg.encoder.name,
        encoder_args=cfg.encoder.args,
        encoder_fingerprint=base_fp,
        seed=cfg.seed,
        images=samples,
        method="hica stage 1 (image: DeepCluster-v2; text: SimCSE on the descriptor corpus)",
        hyperparameters=cfg.model_dump(mode="json", exclude={"data_root"}),
        metrics={"training": training},
        extra={"modality": cfg.modality, "labels_read": False},
    )


__all__ = [
    "ClusterHead",
    "TextCorpus",
    "adapt_text_tower",
    "build_corpus",
    "kmeans_assign",
    "run_stage1",
    "train_image_tower",
]
