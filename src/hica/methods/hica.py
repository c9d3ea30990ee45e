"""HiCA stage 2: hierarchical contrastive alignment on a K-shot support set (arXiv 2501.09294).

The model is :class:`hica.model.hica_model.HiCAModel` (image tower + text head; its output carries the
sampled class descriptions, the class-text prototypes and the ROIs), the objective
``L = L_global + λ1·L_local + λ2·L_cross`` is :class:`hica.losses.HierarchicalLoss`. This method trains
them in two phases:

1. *Align the text head* (the "LP" of LP-FT, Kumar et al. 2022): with the image tower frozen, only the text
   projection learns, on the support images' cached features, so that class descriptions and attribute
   phrases land on the image features before any image weight moves (a random head would first drag the
   image features towards random directions).
2. *Align both towers* on augmented support images through the training engine (Lightning Fabric):
   the image tower (stem and first ``freeze_stages`` stages frozen, BatchNorm statistics frozen — a few
   images cannot estimate them) and the text projection. The text transformer stays frozen, so its
   sentence embeddings are computed once.

``L_local`` pools ROIs from the support masks where the data has them (a normal image is pooled whole), else
from token–text similarity (``hica.model.roi.proposal_roi``), and aligns them with each support image's
*measured* attribute values (``attributes: image``, ``hica.model.attributes``; class-level phrases without
masks or with ``attributes: class``). Runs report both sources. Only support images, labels, masks are read.
Every step's named loss terms (both phases) are kept in ``loss_log``.

Prediction: cosine to the aligned class-text prototypes blended with cosine to the support-image prototypes,
``α·cos(f, t_c) + (1 − α)·cos(f, μ_c)``, α chosen on the episode's validation shots (ties: lower validation
loss, then larger α), or ``fixed_alpha`` without any (realistic protocol); zero-shot is α = 1. With
``tta: crops`` every embedding (support, validation, test, an exported checkpoint's) averages six fixed views
(``hica.model.tta``). ``lesion_crop``: that share of phase 2's crops centred on the support lesion masks.

The ablations and ``hica_fast`` are presets of the settings (``hica.methods.hica_presets``), registered under
their names.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Le
from pydantic import model_validator

from hica.errors import HicaError
from hica.losses import HierarchicalLoss
from hica.methods.base import ImageFewShotData, ImageMethod
from hica.methods.settings import (
    Fraction,
    MethodSettings,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from hica.model.attributes import model_value_posteriors, value_log_prior
from hica.model.augment import augmented_batches, modality_of, training_augment
from hica.model.hica_model import HiCAModel, TextHead
from hica.model.imagedata import InputSpec, input_spec
from hica.model.roi import masks_to_token_weights
from hica.model.training import check_input_size, fabric_precision, freeze_early
from hica.model.tta import TTA, embed_with_tta
from hica.runtime import autocast, reproducible

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
LossTerms = dict[str, torch.Tensor]


def blend_logits(
    emb: torch.Tensor, text_protos: torch.Tensor, image_protos: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """HiCA's classifier: ``(α·cos(f, t_c) + (1 − α)·cos(f, μ_c)) / τ`` for normalised ``emb`` (N, D)."""
    return (alpha * emb @ text_protos.T + (1 - alpha) * emb @ image_protos.T) / temperature


class HiCASettings(MethodSettings):
    """HiCA stage 2's settings (the ablation presets change only the ``use_*`` defaults)."""

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
    # Side of phase 2's training crops (None: the encoder's input); cost ~ side². Prediction: encoder's input.
    train_size: Annotated[int, Ge(64), Le(1024)] | None = None
    # Probability of a lesion-centred training crop for a support image with a lesion mask (0: none).
    lesion_crop: Annotated[NonNegativeFloat, Le(1)] = 0.0
    tta: TTA = "none"  # test-time augmentation of every embedding (hica.model.tta); reaches checkpoints
    roi_top_fraction: Fraction = 0.2
    roi: Literal["auto", "proposed"] = "auto"  # auto: masks where the support has them, else proposed
    # image: L_local on each support image's measured attribute values where the support has them (masks +
    # a descriptor file with attribute_values), else class-level; class: every phrase of the image's class.
    attributes: Literal["image", "class"] = "image"
    cross_scale: Literal["logit", "cosine"] = "cosine"  # L_cross margins: cosine hinge or logit space (1/τ)
    attribute_logit_adjust: bool = False  # per-image attributes: remove the support value frequencies
    fixed_alpha: Annotated[NonNegativeFloat, Le(1)] | None = 0.5  # α when an episode has no validation shots

    @model_validator(mode="after")
    def _something_to_train(self) -> HiCASettings:
        if not (self.use_global or self.use_local or self.use_cross):
            raise ValueError("use_global, use_local and use_cross are all off: there is nothing to train")
        if self.lesion_crop > 0 and self.roi == "proposed":
            raise ValueError(
                "lesion_crop needs the support masks, which roi: proposed leaves unread; use roi: auto"
            )
        return self


def make_loss(cfg: HiCASettings) -> HierarchicalLoss:
    """The objective of settings ``cfg``."""
    return HierarchicalLoss(
        lambda_local=cfg.lambda_local,
        lambda_cross=cfg.lambda_cross,
        temperature=cfg.temperature,
        margin=cfg.margin,
        use_global=cfg.use_global,
        use_local=cfg.use_local,
        use_cross=cfg.use_cross,
        cross_scale=cfg.cross_scale,
    )


class HiCA(ImageMethod):
    """HiCA stage 2 (λ1 ``lambda_local``, λ2 ``lambda_cross``, τ ``temperature``, ``margin``, switches)."""

    uses_text = True
    uses_masks = True
    Settings = HiCASettings
    run_dir: Path | None = None  # set by `hica finetune` for a resumable, checkpointed run
    resume: bool = True  # with run_dir: continue from its checkpoints (False: start again)
    run_identity: dict[str, Any] | None = None  # what a checkpoint must match to be resumed

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)  # validates every setting against ``Settings``
        self.config: HiCASettings = self.Settings.model_validate(self.hparams)
        self.loss = make_loss(self.config)
        self.model: HiCAModel | None = None
        #: Per step of the last fit, every named loss term (``total``, ``global``, ``local``, ...) as floats:
        #: ``{"head": [...], "train": [...]}`` for the text-head and the two-tower phase.
        self.loss_log: dict[str, list[dict[str, float]]] = {"head": [], "train": []}

    # -- fit ------------------------------------------------------------------------------------------------
    @reproducible
    def fit(self, encoder: Any, data: ImageFewShotData, device: torch.device, precision: str) -> HiCA:
        cfg = self.config
        if data.descriptors is None or data.classes is None:
            raise HicaError(f"method {self.name} needs the dataset's class descriptors (a descriptors YAML)")
        self._device, self._precision = device, precision
        torch.manual_seed(2000 + data.seed)
        spec = input_spec(encoder)
        enc = copy.deepcopy(encoder).to(device)
        for p in enc.parameters():
            p.requires_grad_(False)
        text = TextHead(enc, data.descriptors, data.classes).to(device)
        model = HiCAModel(enc, text, propose_roi=cfg.use_local, roi_top_fraction=cfg.roi_top_fraction)
        has = data.support_has_mask
        use_masks = cfg.roi == "auto" and data.support_masks is not None and (has is None or bool(has.any()))
        self.roi_source = "lesion masks (support set)" if use_masks else "proposed (token-text similarity)"
        if not cfg.use_local:
            self.roi_source = "none (L_local off)"
        targets = None
        if cfg.attributes == "image" and use_masks and data.support_attributes is not None and text.vocab:
            targets = text.vocab.targets(data.support_attributes).to(device)
        per_image = "per-image values measured from the support masks"
        self.attribute_source = per_image if targets is not None else "class-level phrases"
        if targets is not None and cfg.attribute_logit_adjust:
            model.value_log_prior = value_log_prior(targets, text.value_groups).to(device)
        head_log = self._align_text_head(model, data, use_masks, targets)
        summary, train_log = self._align_towers(model, data, spec, use_masks, targets)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.model = model
        self.loss_log = {"head": _floats(head_log), "train": _floats(train_log)}

        # Prototypes from the trained encoder, α on the validation shots.
        self.image_protos = self._protos(self.embed(data.support), data.support_labels, data.num_classes)
        self.text_protos = model.text.class_protos().detach()
        best, fixed = None, self.fixed_value(len(data.val_labels), "fixed_alpha", "alpha")
        if fixed is not None:
            self.alpha = fixed  # realistic protocol: the declared α, nothing embedded or scored
        else:
            val = self.embed(data.val)
            for a in ALPHAS:
                logits = self.logits(val, a)
                acc = float((logits.argmax(1) == data.val_labels.to(logits.device)).float().mean())
                nll = float(F.cross_entropy(logits, data.val_labels.to(logits.device)))
                key = (acc, -nll, a)
                if best is None or key > best[0]:
                    best = (key, a)
            self.alpha = best[1]
        head_losses = [t["total"] for t in self.loss_log["head"]]
        self.selected = {
            "alpha": self.alpha,
            "val_accuracy": None if best is None else round(best[0][0], 4),
            "roi_source": self.roi_source,
            "attribute_source": self.attribute_source,
            "head_loss": [round(head_losses[0], 4), round(head_losses[-1], 4)] if head_losses else None,
            "train_loss": [round(summary["losses"][0], 4), round(summary["losses"][-1], 4)]
            if summary["losses"]
            else None,
        }
        return self

    def _align_text_head(
        self, model: HiCAModel, data: ImageFewShotData, use_masks: bool, targets: torch.Tensor | None
    ) -> list[LossTerms]:
        """Phase 1: the text head on the support images' frozen features; each step's loss terms."""
        enc, text, device = model.encoder, model.text, self._device
        enc.eval()
        with torch.no_grad(), autocast(device, self._precision):
            feats = [
                enc.encode_image(data.support[i : i + 32].to(device)) for i in range(0, len(data.support), 32)
            ]
        glob = torch.cat([f.global_.float() for f in feats])
        local = torch.cat([f.local.float() for f in feats])
        grid = feats[0].grid
        roi = masks_to_token_weights(data.support_masks, grid).to(device) if use_masks else None
        y = data.support_labels.to(device)
        for p in text.proj.parameters():
            p.requires_grad_(True)
        opt = torch.optim.Adam(text.proj.parameters(), lr=self.config.head_lr)
        gen = torch.Generator().manual_seed(data.seed)
        log = []
        for _ in range(self.config.head_steps):
            terms = self.loss(model.align(glob, local, grid, y, roi, gen, targets), y)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            log.append({k: v.detach() for k, v in terms.items()})
        return log

    def _align_towers(
        self,
        model: HiCAModel,
        data: ImageFewShotData,
        spec: InputSpec,
        use_masks: bool,
        targets: torch.Tensor | None,
    ) -> tuple[dict[str, Any], list[LossTerms]]:
        """Phase 2: image tower and text head on augmented support images, through the training engine.
        Returns the engine's summary and each step's loss terms."""
        from hica.train.engine import TrainConfig, train

        cfg, enc, text, device = self.config, model.encoder, model.text, self._device
        for p in enc.image_parameters():
            p.requires_grad_(True)
        freeze_early(enc, cfg.freeze_stages)  # the stem and first stages keep their weights
        img_params = [p for p in enc.image_parameters() if p.requires_grad]
        size = cfg.train_size or spec.size
        if size != spec.size:
            check_input_size(enc, size, device, f"method {self.name}: train_size")
        modality = modality_of(data.descriptors.modality)
        aug = training_augment(modality, size, min_scale=cfg.min_scale, lesion_crop=cfg.lesion_crop)
        mean = torch.tensor(spec.mean).view(3, 1, 1)
        std = torch.tensor(spec.std).view(3, 1, 1)
        raw = (data.support * std + mean).clamp(0, 1)  # back to [0, 1] for photometric augmentation
        masks = data.support_masks.float() if use_masks else None
        bs = min(cfg.batch_size, len(raw))
        factory = augmented_batches(
            raw,
            data.support_labels,
            masks,
            aug,
            spec,
            bs,
            data.seed,
            None if targets is None else targets.cpu(),
        )
        log: list[LossTerms] = []

        def loss_fn(_wrapped: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LossTerms]:
            # ``model`` itself, not Fabric's wrapper: no Fabric autocast around the forward (as always).
            out = model(
                batch["images"], batch["labels"], batch.get("masks"), attr_targets=batch.get("attr_targets")
            )
            terms = self.loss(out, batch["labels"])
            log.append({k: v.detach() for k, v in terms.items()})
            return terms["total"], terms

        tcfg = TrainConfig(
            max_steps=cfg.steps,
            batch_size=bs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            precision=fabric_precision(self._precision, device),
            seed=data.seed,
            checkpoint_every=10**9,
            keep_checkpoints=1,
            log_every=max(1, cfg.steps // 5),
            devices=1,
            accelerator="cuda" if device.type == "cuda" else "cpu",
            progress=False,
        )
        groups = [
            {"params": img_params, "lr": cfg.lr},
            {"params": list(text.proj.parameters()), "lr": cfg.text_lr},
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
                resume=self.run_dir is not None and self.resume,
                param_groups=groups,
                extra={"model_config": {"method": self.name, **self.hparams, **(self.run_identity or {})}},
            )
        finally:
            if tmp is not None:
                tmp.cleanup()
        return summary, log

    def aligned_encoder(self, clone: bool = True) -> Any:
        """The aligned encoder with the trained text head folded into its ``text_proj`` (what ``hica
        finetune`` exports); a deep copy unless ``clone`` is False."""
        if self.model is None:
            raise HicaError(f"method {self.name}: fit it before asking for its encoder")
        enc = copy.deepcopy(self.model.encoder) if clone else self.model.encoder
        enc.text_proj.load_state_dict(self.model.text.proj.state_dict())
        return enc

    # -- attributes -----------------------------------------------------------------------------------------
    def attribute_posteriors(
        self, images: torch.Tensor, masks: torch.Tensor | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """(N, V) attribute-value posteriors (vocabulary: ``self.model.text.vocab``) of preprocessed images,
        as the attribute level was trained (``hica.model.attributes.image_value_posteriors``): ROIs from
        ``masks`` (N, H, W) in the images' geometry (for scoring only) or proposed (no mask read)."""
        if self.model is None:
            raise HicaError(f"method {self.name}: fit it before asking for attribute posteriors")
        return model_value_posteriors(
            self.model,
            images,
            self.config.temperature,
            self.config.roi_top_fraction,
            self._device,
            self._precision,
            masks,
            batch_size,
        )

    # -- predict --------------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images → (N, D) normalised embeddings of the aligned image tower."""
        assert self.model is not None
        return embed_with_tta(
            self.model.encoder, images, self._device, self._precision, self.config.tta, batch_size
        )

    @staticmethod
    def _protos(emb: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
        return F.normalize(torch.stack([emb[labels.to(emb.device) == k].mean(0) for k in range(c)]), dim=-1)

    def logits(self, emb: torch.Tensor, alpha: float) -> torch.Tensor:
        """HiCA's classifier logits of normalised embeddings for blend weight ``alpha``."""
        return blend_logits(emb, self.text_protos, self.image_protos, alpha, self.hparams["temperature"])

    def predict_proba(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return self.logits(self.embed(images, batch_size), self.alpha).softmax(-1).cpu()


def _floats(log: list[LossTerms]) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in t.items()} for t in log]
