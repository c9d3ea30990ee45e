"""HiCA stage 2: hierarchical contrastive alignment on a K-shot support set (arXiv 2501.09294).

``L = L_global + λ1·L_local + λ2·L_cross`` (``hica.alignment.losses``), trained in two phases:

1. *Align the text head* (the "LP" of LP-FT, Kumar et al. 2022): with the image tower frozen, only the text
   projection learns, on the support images' cached features, so that class descriptions and attribute
   phrases land on the image features before any image weight moves (a random head would first drag the
   image features towards random directions).
2. *Align both towers* on augmented support images through the training engine (Lightning Fabric):
   the image tower (stem and first ``freeze_stages`` stages frozen, BatchNorm statistics frozen — a few
   images cannot estimate them) and the text projection. The text transformer stays frozen, so its
   sentence embeddings are computed once.

ROIs for ``L_local``: the support images' lesion masks where the dataset has them (BUSI; an image of a class
without lesions, e.g. normal tissue, has an empty mask and is pooled whole), else an ROI proposed from
token–text similarity (``roi.proposal_roi``, query: the mean attribute phrase of the image's class). Each
run reports the ROI source it used. Only the support set's images, labels and masks are read.

Prediction: cosine to the aligned class-text prototypes blended with cosine to the support-image prototypes,
``α·cos(f, t_c) + (1 − α)·cos(f, μ_c)``, with α chosen on the episode's validation shots (ties: lower
validation loss, then larger α); zero-shot is α = 1.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Le
from pydantic import model_validator
from torch import nn

from hica.alignment.augment import training_augment
from hica.alignment.imagedata import input_spec
from hica.alignment.losses import HierarchicalLoss
from hica.alignment.roi import masks_to_token_weights, proposal_roi
from hica.alignment.stage1 import fabric_precision, freeze_early, pooled_sentences
from hica.errors import HicaError
from hica.methods.base import ImageFewShotData, ImageMethod, register_method
from hica.methods.finetune import _freeze_bn
from hica.methods.settings import (
    Fraction,
    MethodSettings,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    with_defaults,
)
from hica.runtime import autocast, embed_images, reproducible

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend_logits(
    emb: torch.Tensor, text_protos: torch.Tensor, image_protos: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """HiCA's classifier: ``(α·cos(f, t_c) + (1 − α)·cos(f, μ_c)) / τ`` for normalised ``emb`` (N, D)."""
    return (alpha * emb @ text_protos.T + (1 - alpha) * emb @ image_protos.T) / temperature


def modality_of(text: str) -> str:
    """Augmentation family from a descriptor file's free-text ``modality``."""
    t = text.lower()
    if "ultrasound" in t or "sonograph" in t:
        return "ultrasound"
    if "x-ray" in t or "xray" in t or "radiograph" in t:
        return "xray"
    return "generic"


class TextBank(nn.Module):
    """Frozen sentence embeddings of the class prompts and attribute phrases + the trainable text head."""

    def __init__(self, encoder: Any, descriptors: Any, classes: list[str]) -> None:
        super().__init__()
        if not hasattr(encoder, "text_proj") or not hasattr(encoder, "text_model"):
            raise HicaError(
                f"HiCA stage 2 needs an encoder with a separate text transformer and text_proj head "
                f"(like 'default'); {getattr(encoder, 'name', '?')!r} has none"
            )
        prompts = [descriptors.class_prompts(c, "ensemble") for c in classes]
        attrs = [descriptors.attribute_prompts(c) for c in classes]
        flat = [p for ps in prompts for p in ps] + [a for as_ in attrs for a in as_]
        with torch.no_grad():
            pooled = torch.cat(
                [pooled_sentences(encoder, flat[i : i + 64]).float() for i in range(0, len(flat), 64)]
            ).cpu()
        n_p = sum(len(p) for p in prompts)
        self.register_buffer("prompt_pooled", pooled[:n_p])
        self.register_buffer("prompt_labels", torch.tensor([c for c, ps in enumerate(prompts) for _ in ps]))
        self.register_buffer("attr_pooled", pooled[n_p:])
        self.register_buffer("attr_labels", torch.tensor([c for c, as_ in enumerate(attrs) for _ in as_]))
        self.proj = copy.deepcopy(encoder.text_proj)
        self.num_classes = len(classes)
        self.attr_texts = [a for as_ in attrs for a in as_]

    def prompts(self) -> torch.Tensor:
        return F.normalize(self.proj(self.prompt_pooled), dim=-1)

    def bank(self) -> torch.Tensor:
        return F.normalize(self.proj(self.attr_pooled), dim=-1)

    def class_protos(self, prompts: torch.Tensor | None = None) -> torch.Tensor:
        p = self.prompts() if prompts is None else prompts
        sums = torch.zeros(self.num_classes, p.shape[1], device=p.device, dtype=p.dtype)
        sums.index_add_(0, self.prompt_labels, p)
        return F.normalize(sums, dim=-1)


class HiCASettings(MethodSettings):
    """HiCA stage 2's settings (the ablations change only the ``use_*`` defaults)."""

    steps: PositiveInt = 30
    batch_size: PositiveInt = 16
    lr: PositiveFloat = 1e-4
    text_lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-4
    head_steps: NonNegativeInt = 100  # 0: no text-head phase
    head_lr: PositiveFloat = 1e-2
    lambda_local: NonNegativeFloat = 0.5
    lambda_cross: NonNegativeFloat = 0.5
    temperature: PositiveFloat = 0.07
    margin: Annotated[NonNegativeFloat, Le(2)] = 0.2  # a cosine margin
    use_global: bool = True
    use_local: bool = True
    use_cross: bool = True
    freeze_stages: NonNegativeInt = 3
    min_scale: Fraction = 0.6
    roi_top_fraction: Fraction = 0.2
    roi: Literal["auto", "proposed"] = "auto"  # auto: masks where the support has them, else proposed

    @model_validator(mode="after")
    def _something_to_train(self) -> HiCASettings:
        if not (self.use_global or self.use_local or self.use_cross):
            raise ValueError("use_global, use_local and use_cross are all off: there is nothing to train")
        return self


class HiCAModel(nn.Module):
    """Image tower + text bank; ``forward`` is not used (the loss function calls the parts)."""

    def __init__(self, encoder: Any, text: TextBank) -> None:
        super().__init__()
        self.encoder = encoder
        self.text = text


@register_method("hica")
class HiCA(ImageMethod):
    """HiCA stage 2 (λ1 ``lambda_local``, λ2 ``lambda_cross``, τ ``temperature``, ``margin``, switches)."""

    uses_text = True
    uses_masks = True
    Settings = HiCASettings

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)  # validates every setting against ``Settings``
        self.loss = self._make_loss()
        self.model: HiCAModel | None = None

    def _make_loss(self) -> HierarchicalLoss:
        hp = self.hparams
        return HierarchicalLoss(
            lambda_local=hp["lambda_local"],
            lambda_cross=hp["lambda_cross"],
            temperature=hp["temperature"],
            margin=hp["margin"],
            use_global=hp["use_global"],
            use_local=hp["use_local"],
            use_cross=hp["use_cross"],
        )

    # -- the loss on one batch -----------------------------------------------------------------------------
    def _batch_loss(
        self,
        model: HiCAModel,
        glob: torch.Tensor,
        local: torch.Tensor,
        grid: tuple[int, int],
        labels: torch.Tensor,
        roi: torch.Tensor | None,
        gen: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        text = model.text
        prompts = text.prompts()
        # One class description per image, drawn from its class's prompts (the hierarchy's category level).
        choice = []
        for y in labels.tolist():
            idx = torch.nonzero(text.prompt_labels == y, as_tuple=True)[0]
            choice.append(idx[torch.randint(len(idx), (1,), generator=gen).item()])
        text_global = prompts[torch.stack(choice)]
        protos = text.class_protos(prompts)
        bank = text.bank()
        if self.loss.local_loss is not None and roi is None:
            query = torch.stack([bank[text.attr_labels == y].mean(0) for y in labels.tolist()])
            roi = proposal_roi(
                local.detach().float(), query.detach(), grid, self.hparams["roi_top_fraction"], 3
            )
        return self.loss(
            image_global=glob.float(),
            labels=labels,
            text_global=text_global,
            local=local.float(),
            roi=roi,
            bank=bank,
            bank_labels=text.attr_labels,
            text_protos=protos,
        )

    # -- fit ------------------------------------------------------------------------------------------------
    @reproducible
    def fit(self, encoder: Any, data: ImageFewShotData, device: torch.device, precision: str) -> HiCA:
        hp = self.hparams
        if data.descriptors is None or data.classes is None:
            raise HicaError(f"method {self.name} needs the dataset's class descriptors (a descriptors YAML)")
        self._device, self._precision = device, precision
        torch.manual_seed(2000 + data.seed)
        spec = input_spec(encoder)
        enc = copy.deepcopy(encoder).to(device)
        for p in enc.parameters():
            p.requires_grad_(False)
        text = TextBank(enc, data.descriptors, data.classes).to(device)
        model = HiCAModel(enc, text)
        has = data.support_has_mask
        use_masks = (
            hp["roi"] == "auto" and data.support_masks is not None and (has is None or bool(has.any()))
        )
        self.roi_source = "lesion masks (support set)" if use_masks else "proposed (token-text similarity)"
        if not self.loss.local_loss:
            self.roi_source = "none (L_local off)"

        # Phase 1: the text head on frozen support features.
        enc.eval()
        with torch.no_grad(), autocast(device, precision):
            feats = [
                enc.encode_image(data.support[i : i + 32].to(device)) for i in range(0, len(data.support), 32)
            ]
        glob = torch.cat([f.global_.float() for f in feats])
        local = torch.cat([f.local.float() for f in feats])
        grid = feats[0].grid
        roi0 = masks_to_token_weights(data.support_masks, grid).to(device) if use_masks else None
        y = data.support_labels.to(device)
        for p in text.proj.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(text.proj.parameters(), lr=hp["head_lr"])
        gen = torch.Generator().manual_seed(data.seed)
        head_losses = []
        for _ in range(hp["head_steps"]):
            loss, _ = self._batch_loss(model, glob, local, grid, y, roi0, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            head_losses.append(float(loss.detach()))

        # Phase 2: both towers on augmented support images, through the engine.
        from hica.train.engine import TrainConfig, train

        for p in enc.image_parameters():
            p.requires_grad_(True)
        freeze_early(enc, hp["freeze_stages"])  # the stem and first stages keep their weights
        img_params = [p for p in enc.image_parameters() if p.requires_grad]
        aug = training_augment(modality_of(data.descriptors.modality), spec.size, min_scale=hp["min_scale"])
        mean = torch.tensor(spec.mean).view(3, 1, 1)
        std = torch.tensor(spec.std).view(3, 1, 1)
        raw = (data.support * std + mean).clamp(0, 1)  # back to [0, 1] for photometric augmentation
        masks = data.support_masks.float() if use_masks else None
        n = len(raw)
        bs = min(hp["batch_size"], n)

        def factory(epoch: int, rank: int, world: int):
            g = torch.Generator().manual_seed(data.seed * 7919 + epoch)
            order = torch.randperm(n, generator=g)[rank::world]
            for b in range(max(1, len(order) // bs)):
                idx = order[b * bs : (b + 1) * bs]
                xs, ms = [], []
                for i in idx.tolist():
                    x, m = aug(raw[i], masks[i] if masks is not None else None)
                    xs.append(spec.normalize(x))
                    ms.append(m)
                batch = {"images": torch.stack(xs), "labels": data.support_labels[idx]}
                if masks is not None:
                    batch["masks"] = torch.stack(ms)
                yield batch

        def loss_fn(m: HiCAModel, batch: dict[str, torch.Tensor]):
            _freeze_bn(m.encoder)
            f = m.encoder.encode_image(batch["images"])
            roi = (
                masks_to_token_weights(batch["masks"], f.grid).to(f.local.device)
                if "masks" in batch
                else None
            )
            return self._batch_loss(m, f.global_, f.local, f.grid, batch["labels"], roi)

        tcfg = TrainConfig(
            max_steps=hp["steps"],
            batch_size=bs,
            lr=hp["lr"],
            weight_decay=hp["weight_decay"],
            precision=fabric_precision(precision, device),
            seed=data.seed,
            checkpoint_every=10**9,
            keep_checkpoints=1,
            log_every=max(1, hp["steps"] // 5),
            devices=1,
            accelerator="cuda" if device.type == "cuda" else "cpu",
            progress=False,
        )
        groups = [
            {"params": img_params, "lr": hp["lr"]},
            {"params": list(text.proj.parameters()), "lr": hp["text_lr"]},
        ]
        for p in text.proj.parameters():
            p.requires_grad_(True)
        run_dir = self.run_dir
        tmp = None
        if run_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="hica-stage2-")
            run_dir = Path(tmp.name)
        try:
            summary = train(
                model,
                loss_fn,
                factory,
                tcfg,
                run_dir,
                resume=self.run_dir is not None,
                param_groups=groups,
                extra={"model_config": {"method": self.name, **hp}},
            )
        finally:
            if tmp is not None:
                tmp.cleanup()
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.model = model

        # Prototypes from the trained encoder, α on the validation shots.
        self.image_protos = self._protos(self.embed(data.support), data.support_labels, data.num_classes)
        self.text_protos = model.text.class_protos().detach()
        val = self.embed(data.val)
        best = None
        for a in ALPHAS:
            logits = self.logits(val, a)
            acc = float((logits.argmax(1) == data.val_labels.to(logits.device)).float().mean())
            nll = float(F.cross_entropy(logits, data.val_labels.to(logits.device)))
            key = (acc, -nll, a)
            if best is None or key > best[0]:
                best = (key, a)
        self.alpha = best[1]
        self.selected = {
            "alpha": self.alpha,
            "val_accuracy": round(best[0][0], 4),
            "roi_source": self.roi_source,
            "head_loss": [round(head_losses[0], 4), round(head_losses[-1], 4)] if head_losses else None,
            "train_loss": [round(summary["losses"][0], 4), round(summary["losses"][-1], 4)]
            if summary["losses"]
            else None,
        }
        return self

    run_dir: Path | None = None  # set by `hica finetune` for a resumable, checkpointed run

    def aligned_encoder(self, clone: bool = True) -> Any:
        """The aligned encoder with the trained text head folded into its ``text_proj`` (what ``hica
        finetune`` exports); a deep copy unless ``clone`` is False."""
        if self.model is None:
            raise HicaError(f"method {self.name}: fit it before asking for its encoder")
        enc = copy.deepcopy(self.model.encoder) if clone else self.model.encoder
        enc.text_proj.load_state_dict(self.model.text.proj.state_dict())
        return enc

    # -- predict --------------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images → (N, D) normalised embeddings of the aligned image tower."""
        assert self.model is not None
        return embed_images(self.model.encoder, images, self._device, self._precision, batch_size)

    @staticmethod
    def _protos(emb: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
        return F.normalize(torch.stack([emb[labels.to(emb.device) == k].mean(0) for k in range(c)]), dim=-1)

    def logits(self, emb: torch.Tensor, alpha: float) -> torch.Tensor:
        """HiCA's classifier logits of normalised embeddings for blend weight ``alpha``."""
        return blend_logits(emb, self.text_protos, self.image_protos, alpha, self.hparams["temperature"])

    def predict_proba(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return self.logits(self.embed(images, batch_size), self.alpha).softmax(-1).cpu()


def _variant(name: str, doc: str, **overrides: Any) -> type:
    settings = with_defaults(HiCASettings, f"{name}_settings", **overrides)
    cls = type(name, (HiCA,), {"__doc__": doc, "Settings": settings})
    return register_method(name)(cls)


HiCAGlobalOnly = _variant(
    "hica_global_only", "HiCA ablation: L_global only.", use_local=False, use_cross=False
)
HiCANoLocal = _variant("hica_no_local", "HiCA ablation: without L_local.", use_local=False)
HiCANoCross = _variant("hica_no_cross", "HiCA ablation: without L_cross.", use_cross=False)
