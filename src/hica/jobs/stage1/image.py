"""Stage-1 image tower — DeepCluster-v2 (Caron et al., 2018; the centroid-classifier variant of the SwAV
paper, 2020).

At the start of every epoch the current encoder embeds the unlabeled images (eval mode, stage-1
resolution), the L2-normalised embeddings are PCA-whitened and clustered with k-means, and the epoch trains
the image tower to predict each image's cluster from an augmented view, with the normalised cluster
centroids as a fixed cosine classifier (temperature τ). Sampling is uniform over clusters (DeepCluster's
guard against one cluster swallowing the data). The stem and the first ``freeze_stages`` stages keep
their ImageNet weights but their BatchNorm statistics adapt to the domain. A final BatchNorm recalibration
pass at the encoder's full input size removes the train/test resolution gap (Touvron et al., FixRes 2019).
Every epoch's clustering is saved, so a killed run resumes with the same pseudo-labels.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.io import save_tensors, write_json
from hica.model.augment import training_augment
from hica.model.imagedata import ImageStore, InputSpec, input_spec
from hica.model.training import fabric_precision, freeze_early


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
