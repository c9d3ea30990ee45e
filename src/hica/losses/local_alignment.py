"""Local (attribute-level) alignment: ROI-pooled tokens vs attribute phrases, background as a negative.

Notation, per image i with label y_i: local tokens z_in (n = 1..N), soft ROI weights w_in ∈ [0, 1] (from a
lesion mask, ``hica.model.roi.mask_to_token_weights``, or a model proposal, ``hica.model.roi.proposal_roi``),
positive phrase embeddings t_ip (p ∈ P_i, the valid entries of ``positives``) and a bank of attribute-phrase
embeddings a_k with class ids c_k. All cosines are between L2-normalised vectors.

Pooling (weighted mean of L2-normalised tokens, then normalised; normalising tokens first keeps a few
high-norm tokens, e.g. ViT artefact tokens, from dominating the pool):

    r_i = norm(Σ_n w_in ẑ_in / Σ_n w_in)               ROI embedding
    b_i = norm(Σ_n (1 − w_in) ẑ_in / Σ_n (1 − w_in))   background embedding

Contrast (multi-positive InfoNCE as in SupCon / UniCL; the softmax runs over the image's positives and
every bank phrase of another class; bank phrases of the image's own class that are not among its positives
are neither positive nor negative):

    L_con,i = −(1/|P_i|) Σ_{p∈P_i} log [ exp(cos(r_i, t_ip)/τ) /
                (Σ_{q∈P_i} exp(cos(r_i, t_iq)/τ) + Σ_{k: c_k≠y_i} exp(cos(r_i, a_k)/τ)) ]

With ``positives_from_bank`` (positives = all bank phrases of y_i) this is InfoNCE against the whole bank,
positives = the phrases of the image's class.

Background as a negative (phrase-to-region InfoNCE with two regions, as in region-word contrast, e.g.
GLIP / RegionCLIP: each positive phrase must pick the ROI over the background of the same image):

    L_bg,i = (1/|P_i|) Σ_{p∈P_i} −log [ e^{cos(r_i,t_ip)/τ} / (e^{cos(r_i,t_ip)/τ} + e^{cos(b_i,t_ip)/τ}) ]
           = (1/|P_i|) Σ_{p∈P_i} softplus((cos(b_i, t_ip) − cos(r_i, t_ip)) / τ)

    L_local = mean_i L_con,i + background_weight · mean_{i with background} L_bg,i

Per-image attributes (``out.attr_targets`` given: the values measured from each support image's own mask and
pixels, ``hica.model.attributes``). With value embeddings e_v, groups g (each value in one group) and the
image's measured value v_ig per group (−1: none), the ROI is contrasted with the values of one group at a
time, so the other values of the same group (e.g. "not circumscribed" for a circumscribed lesion) are the
hard negatives:

    L_attr,ig = −log softmax_{v ∈ g}(cos(x_ig, e_v) / τ + log π_v)[v_ig]
    L_bg,ig   = softplus((cos(b_i, e_{v_ig}) − cos(r_i, e_{v_ig})) / τ)
    L_local   = mean_{(i,g) measured} L_attr,ig + background_weight · mean L_bg,ig

x_ig = r_i, or the whole image for the ``presence`` group (is there a lesion); L_bg over the lesion groups
of images with a background. log π_v (``out.value_log_prior``, None: 0) is the value's log frequency
within its group on the support set: logit adjustment (Menon et al., ICLR 2021), so the scores learned are
not the support's value frequencies.

Empty ROI (Σ_n w_in ≈ 0: normal images, which have no lesion mask, or a lesion image without one):
``empty_roi="whole"`` (default) pools the whole image as the ROI; the attribute phrases of a normal class
describe whole-tissue appearance, so the whole image is the region they describe, and the image has no
background term. ``empty_roi="skip"`` leaves such images out of the local loss. An ROI that covers the
whole image (Σ_n (1 − w_in) ≈ 0) likewise has no background term. Images with no valid positive are skipped.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.losses.global_alignment import check_temperature, multi_positive_nce
from hica.model.hica_model import HiCAOutput
from hica.model.roi import pool_tokens

EmptyRoi = Literal["whole", "skip"]
EMPTY_ROI_MODES = ("whole", "skip")
_EPS = 1e-6


def positives_from_bank(
    bank: torch.Tensor, bank_labels: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, every bank phrase of its class: ``(positives (B, P, D), valid (B, P))``, P = the largest
    count among the batch's classes (padding rows are zeros with valid False)."""
    idx = [torch.nonzero(bank_labels == y, as_tuple=True)[0] for y in labels.tolist()]
    p = max((len(i) for i in idx), default=0)
    b, d = labels.shape[0], bank.shape[-1]
    index = torch.zeros(b, max(p, 1), dtype=torch.long, device=bank.device)
    valid = torch.zeros(b, max(p, 1), dtype=torch.bool, device=bank.device)
    for row, i in enumerate(idx):
        index[row, : len(i)] = i
        valid[row, : len(i)] = True
    if bank.shape[0] == 0:
        return bank.new_zeros(b, 1, d), valid
    pos = bank[index] * valid[..., None].to(bank.dtype)
    return pos, valid


class LocalAlignmentLoss(nn.Module):
    """ROI-pooled tokens vs their class's attribute phrases, with the background pool as a negative.

    ``temperature``: τ of both terms; ``background_weight``: weight of L_bg (0 turns it off);
    ``empty_roi``: what an all-zero ROI means (``"whole"`` or ``"skip"``, see the module docstring).
    """

    def __init__(
        self, temperature: float = 0.07, background_weight: float = 1.0, empty_roi: EmptyRoi = "whole"
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        if not background_weight >= 0:
            raise HicaError(f"background_weight must be >= 0, got {background_weight!r}")
        if empty_roi not in EMPTY_ROI_MODES:
            raise HicaError(f"empty_roi must be one of {', '.join(EMPTY_ROI_MODES)}, got {empty_roi!r}")
        self.background_weight = float(background_weight)
        self.empty_roi = empty_roi

    def forward(self, out: HiCAOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``L_local`` of ``out.local`` (B, N, D) tokens pooled with ``out.roi`` (B, N) weights in [0, 1],
        against ``out.positives`` (B, P, D) with ``out.positive_mask`` (B, P) (default: every phrase of
        the image's class in ``out.bank``), with ``out.bank`` (A, D) / ``out.bank_labels`` (A,) as the
        phrases; ``labels`` (B,). Returns ``{"local": L_local, "local/<name>": ...}``, the diagnostics
        detached 0-d tensors: ``contrast``, ``background``, ``roi_pos_sim`` / ``bg_pos_sim`` (mean cosine
        of the ROI / background pool to the positive phrases), ``n_images``, ``n_whole_roi``,
        ``n_background``."""
        local, roi, bank, bank_labels = out.local, out.roi, out.bank, out.bank_labels
        if roi is None:
            raise ValueError("the local term needs roi (ROI token weights); pass them or set use_local=False")
        if out.attr_targets is not None and out.values is not None and out.values.shape[0] > 0:
            return self._per_image(out)
        positives, positive_mask = out.positives, out.positive_mask
        if positives is None:
            positives, positive_mask = positives_from_bank(bank, bank_labels, labels)
        elif positive_mask is None:
            positive_mask = torch.ones(positives.shape[:2], dtype=torch.bool, device=positives.device)
        b, n, d = local.shape
        if roi.shape != (b, n):
            raise ValueError(f"roi must be ({b}, {n}) like the tokens, got {tuple(roi.shape)}")
        if positives.ndim != 3 or positives.shape[0] != b or positives.shape[2] != d:
            raise ValueError(f"positives must be ({b}, P, {d}), got {tuple(positives.shape)}")
        if positive_mask.shape != positives.shape[:2]:
            raise ValueError(f"positive_mask must be {tuple(positives.shape[:2])}, got {positive_mask.shape}")
        if bank.ndim != 2 or bank.shape[1] != d or bank_labels.shape != bank.shape[:1]:
            raise ValueError(
                f"bank must be (A, {d}) with bank_labels (A,), got {tuple(bank.shape)} and "
                f"{tuple(bank_labels.shape)}"
            )
        if labels.shape != (b,):
            raise ValueError(f"labels must be ({b},), got {tuple(labels.shape)}")

        w = roi.to(local.dtype).clamp(0, 1)
        empty = w.sum(-1) <= _EPS
        if self.empty_roi == "whole":
            w = torch.where(empty[:, None], torch.ones_like(w), w)
            used = torch.ones_like(empty)
        else:
            used = ~empty
        used = used & positive_mask.any(-1)

        r, _ = pool_tokens(local, w)
        bg, bg_mass = pool_tokens(local, 1 - w)
        has_bg = used & (bg_mass > _EPS)

        t = F.normalize(positives, dim=-1)
        a = F.normalize(bank, dim=-1)
        sim_pos = torch.einsum("bd,bpd->bp", r, t)  # cos(r_i, t_ip)
        sim_bank = r @ a.T  # (B, A)
        logits = torch.cat([sim_pos, sim_bank], dim=1) / self.temperature
        other = bank_labels[None, :] != labels[:, None]
        cand = torch.cat([positive_mask, other], dim=1)
        pos = torch.cat([positive_mask, torch.zeros_like(other)], dim=1)
        zero = local.sum() * 0.0  # keeps the graph when nothing contributes
        contrast = zero
        if used.any():
            contrast = multi_positive_nce(logits[used], pos[used], cand[used]).mean()

        sim_bg = torch.einsum("bd,bpd->bp", bg, t)
        n_pos = positive_mask.sum(-1).clamp_min(1)
        per_bg = (F.softplus((sim_bg - sim_pos) / self.temperature) * positive_mask).sum(-1) / n_pos
        background = per_bg[has_bg].mean() if has_bg.any() else zero
        total = contrast + self.background_weight * background

        with torch.no_grad():
            mean_pos = (sim_pos * positive_mask).sum(-1) / n_pos
            mean_bg = (sim_bg * positive_mask).sum(-1) / n_pos
            nan = torch.tensor(float("nan"), device=local.device)
            zero_count = torch.zeros((), dtype=torch.long, device=local.device)
            terms = {
                "local": total,
                "local/contrast": contrast.detach(),
                "local/background": background.detach(),
                "local/roi_pos_sim": mean_pos[used].mean() if used.any() else nan,
                "local/bg_pos_sim": mean_bg[has_bg].mean() if has_bg.any() else nan,
                "local/n_images": used.sum(),
                "local/n_whole_roi": (empty & used).sum() if self.empty_roi == "whole" else zero_count,
                "local/n_background": has_bg.sum(),
            }
        return terms

    def _per_image(self, out: HiCAOutput) -> dict[str, torch.Tensor]:
        """``L_local`` on each image's measured attribute values (module docstring, "Per-image")."""
        local, tgt, groups = out.local, out.attr_targets, out.value_groups
        assert tgt is not None and out.values is not None and groups is not None
        b, n, _ = local.shape
        if out.roi is None or out.roi.shape != (b, n):
            raise ValueError(f"roi must be ({b}, {n}) like the tokens")
        if tgt.ndim != 2 or tgt.shape[0] != b:
            raise ValueError(f"attr_targets must be ({b}, G), got {tuple(tgt.shape)}")
        w = out.roi.to(local.dtype).clamp(0, 1)
        empty = w.sum(-1) <= _EPS
        w = torch.where(empty[:, None], torch.ones_like(w), w)
        r, _ = pool_tokens(local, w)
        whole, _ = pool_tokens(local, torch.ones_like(w))
        bg, bg_mass = pool_tokens(local, 1 - w)
        has_bg = ~empty & (bg_mass > _EPS)
        e = F.normalize(out.values, dim=-1)
        zero = local.sum() * 0.0
        ce, hits, bgs, presence = [], [], [], []
        for g in range(tgt.shape[1]):
            valid = tgt[:, g] >= 0
            if self.empty_roi == "skip" and g != out.presence_group:
                valid = valid & ~empty
            if not valid.any():
                continue
            cols = torch.nonzero(groups == g, as_tuple=True)[0]
            anchor = whole if g == out.presence_group else r
            logits = anchor[valid] @ e[cols].T / self.temperature
            if out.value_log_prior is not None:  # logit adjustment: learn scores free of the support's prior
                logits = logits + out.value_log_prior.to(logits)[cols]
            target = (cols[None, :] == tgt[valid, g][:, None]).float().argmax(-1)
            loss = F.cross_entropy(logits, target, reduction="none")
            ce.append(loss)
            hits.append((logits.argmax(-1) == target).float())
            if g == out.presence_group:
                presence.append(loss.detach())
                continue
            keep = valid & has_bg
            if keep.any():
                et = e[tgt[keep, g]]
                gap = ((bg[keep] * et).sum(-1) - (r[keep] * et).sum(-1)) / self.temperature
                bgs.append(F.softplus(gap))
        attribute = torch.cat(ce).mean() if ce else zero
        background = torch.cat(bgs).mean() if bgs else zero
        total = attribute + self.background_weight * background
        nan = torch.tensor(float("nan"), device=local.device)
        return {
            "local": total,
            "local/attribute": attribute.detach(),
            "local/background": background.detach(),
            "local/presence": torch.cat(presence).mean() if presence else nan,
            "local/attr_acc": torch.cat(hits).mean() if hits else nan,
            "local/n_targets": torch.tensor(sum(len(c) for c in ce), device=local.device),
            "local/n_background": has_bg.sum(),
        }
