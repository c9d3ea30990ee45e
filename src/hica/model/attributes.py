"""HiCA's per-image attribute level: the value vocabulary, each image's targets, attribute posteriors and the
composition of a class from its attribute profile.

The vocabulary is the descriptor file's ``attribute_values`` (group → value → phrases, e.g. margin →
circumscribed / not circumscribed); an image's targets are the values measured from its lesion mask and
pixels (``hica.data.attributes``). Values of one group are mutually exclusive, so an image embedding x gives
each group a posterior over its values

    P_g(v | x) = softmax_{v' ∈ g}(cos(x, e_v') / τ)[v]             e_v: the value's text embedding

Composition (zero-shot for a class never trained on, from its ``profile`` in the descriptor file). With
p_cg = Σ_{v ∈ profile_c(g)} P_g(v | x) the probability that group g shows one of the values class c allows:

    ``all``  (every feature must fit, e.g. the probably-benign pattern):   S_c = Π_g p_cg
    ``any``  (one feature is enough, e.g. a suspicious mass, Stavros 1995): S_c = 1 − Π_g (1 − p_cg)

over the profile's groups other than ``presence``; the ``presence`` group (is there a lesion at all) is the
hierarchy's root and always multiplies: P(c | x) ∝ p_c,presence · S_c. When one class allows exactly the
values another excludes (benign ``all`` vs malignant ``any`` on complementary value sets) the two scores sum
to P(mass), so the composed scores form a distribution; in general they are normalised over the classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hica.errors import HicaError

PRESENCE = "presence"
#: Measured values that give no target (``hica.data.attributes``: not measurable / no lesion to describe).
NO_TARGET = ("unknown", "no mass")
_EPS = 1e-6


@dataclass
class AttributeVocab:
    """The per-image attribute vocabulary of a descriptor file for an episode's ``classes``.

    ``groups`` (G); ``values`` (V) as (group, value); ``value_group`` (V,) group index; ``phrases`` (rendered
    sentences) with ``phrase_value`` their value index; ``class_values`` (C, V) bool, the values each class's
    profile allows; ``class_any`` (C,) whether the profile matches on any group; ``presence_group``: index of
    ``presence`` (-1 without one); ``source``: the descriptor file."""

    groups: list[str] = field(default_factory=list)
    values: list[tuple[str, str]] = field(default_factory=list)
    value_group: list[int] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    phrase_value: list[int] = field(default_factory=list)
    class_values: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    class_any: list[bool] = field(default_factory=list)
    presence_group: int = -1
    source: str = ""

    @classmethod
    def of(cls, descriptors: Any, classes: Sequence[str]) -> AttributeVocab:
        """The vocabulary of ``descriptors`` (empty when it has no ``attribute_values``)."""
        vocab = getattr(descriptors, "attribute_values", None) or {}
        out = cls(source=str(getattr(descriptors, "source", "")))
        index: dict[tuple[str, str], int] = {}
        for g, (group, values) in enumerate(vocab.items()):
            out.groups.append(group)
            for value, phrases in values.items():
                index[(group, value)] = len(out.values)
                out.values.append((group, value))
                out.value_group.append(g)
                for p in phrases:
                    out.phrases.append(descriptors.render(p))
                    out.phrase_value.append(index[(group, value)])
        out.presence_group = out.groups.index(PRESENCE) if PRESENCE in out.groups else -1
        out.class_values = torch.zeros(len(classes), len(out.values), dtype=torch.bool)
        for c, name in enumerate(classes):
            for group, allowed in (descriptors.profile(name) if vocab else {}).items():
                for v in allowed:
                    out.class_values[c, index[(group, v)]] = True
            out.class_any.append(bool(vocab) and descriptors.profile_match(name) == "any")
        return out

    def __bool__(self) -> bool:
        return bool(self.values)

    def targets(self, attributes: Sequence[dict[str, str]]) -> torch.Tensor:
        """(B, G) long: per image and group the index of its measured value, -1 where the value is
        ``unknown`` / ``no mass`` or the group was not measured. A measured value the vocabulary lacks is a
        HicaError naming the descriptor file."""
        out = torch.full((len(attributes), len(self.groups)), -1, dtype=torch.long)
        index = {gv: i for i, gv in enumerate(self.values)}
        for b, vals in enumerate(attributes):
            for g, group in enumerate(self.groups):
                v = vals.get(group)
                if v is None or (v in NO_TARGET and (group, v) not in index):
                    continue
                if (group, v) not in index:
                    known = [val for grp, val in self.values if grp == group]
                    raise HicaError(
                        f"{self.source}: attribute_values.{group} has no value {v!r} (measured on a support "
                        f"image; the file lists {known}); add its phrases to the descriptor file"
                    )
                out[b, g] = index[(group, v)]
        return out


def value_posteriors(emb: torch.Tensor, values: torch.Tensor, value_groups: torch.Tensor, tau: float):
    """(N, V) probabilities: for each group a softmax over its values of ``cos(emb, e_v) / tau`` (normalised
    ``emb`` (N, D) and ``values`` (V, D))."""
    logits = F.normalize(emb, dim=-1) @ F.normalize(values, dim=-1).T / tau
    out = torch.zeros_like(logits)
    for g in value_groups.unique().tolist():
        cols = value_groups == g
        out[:, cols] = logits[:, cols].softmax(-1)
    return out


def compose_classes(
    post: torch.Tensor,
    class_values: torch.Tensor,
    value_groups: torch.Tensor,
    class_any: Sequence[bool],
    presence_group: int = -1,
) -> torch.Tensor:
    """(N, C) class probabilities composed from value posteriors ``post`` (N, V) by each class's profile
    (module docstring); a class without a profile is a HicaError."""
    n, c = post.shape[0], class_values.shape[0]
    scores = post.new_zeros(n, c)
    for k in range(c):
        allowed = class_values[k].to(post.device)
        groups = value_groups[allowed].unique().tolist()
        if not groups:
            raise HicaError(
                f"class {k} has no attribute profile to compose it from; add `profile` to its entry"
            )
        p = {g: (post * (allowed & (value_groups.to(post.device) == g))).sum(-1) for g in groups}
        root = p.pop(presence_group, post.new_ones(n))
        if not p:
            s = post.new_ones(n)
        elif class_any[k]:
            s = 1 - torch.stack([1 - v for v in p.values()]).prod(0)
        else:
            s = torch.stack(list(p.values())).prod(0)
        scores[:, k] = root * s
    return scores / scores.sum(-1, keepdim=True).clamp_min(_EPS)


def image_value_posteriors(
    local: torch.Tensor,
    grid: tuple[int, int],
    values: torch.Tensor,
    value_groups: torch.Tensor,
    tau: float,
    presence_group: int = -1,
    roi: torch.Tensor | None = None,
    top_fraction: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) value posteriors of images from their local tokens (N, T, D), as the attribute level was
    trained: the ``presence`` group on the whole image, the lesion groups on the ROI. ``roi`` (N, T) token
    weights (e.g. from a mask, for scoring) or None: proposed from token–text similarity to the mean lesion
    value embedding (no mask read). Returns the posteriors and the ROI used."""
    from hica.model.roi import pool_tokens, proposal_roi

    lesion = value_groups != presence_group
    if roi is None:
        query = F.normalize(values[lesion].mean(0), dim=-1)
        roi = proposal_roi(local.float(), query.float(), grid, top_fraction, smooth=3)
    w = roi.to(local.dtype)
    w = torch.where((w.sum(-1) <= _EPS)[:, None], torch.ones_like(w), w)
    r, _ = pool_tokens(local, w)
    whole, _ = pool_tokens(local, torch.ones_like(w))
    post = value_posteriors(r, values, value_groups, tau)
    if presence_group >= 0:
        cols = value_groups == presence_group
        post[:, cols] = value_posteriors(whole, values, value_groups, tau)[:, cols]
    return post, roi


def model_value_posteriors(
    model: Any,
    images: torch.Tensor,
    tau: float,
    top_fraction: float,
    device: torch.device,
    precision: str,
    masks: torch.Tensor | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """(N, V) value posteriors of preprocessed ``images`` under a trained ``HiCAModel`` (its text head's
    vocabulary), batch by batch through :func:`image_value_posteriors`; ``masks`` (N, H, W) in the images'
    geometry give the ROIs (for scoring only), else they are proposed."""
    from hica.model.roi import masks_to_token_weights
    from hica.runtime import autocast

    text, enc = model.text, model.encoder
    if not text.vocab:
        raise HicaError(f"{text.vocab.source or 'the descriptor file'} has no attribute_values to score")
    values = text.values().detach()
    out = []
    for i in range(0, len(images), batch_size):
        with torch.no_grad(), autocast(device, precision):
            f = enc.encode_image(images[i : i + batch_size].to(device))
        roi = None if masks is None else masks_to_token_weights(masks[i : i + batch_size], f.grid).to(device)
        post, _ = image_value_posteriors(
            f.local.float(),
            f.grid,
            values,
            text.value_groups,
            tau,
            text.vocab.presence_group,
            roi,
            top_fraction,
        )
        out.append(post.cpu())
    return torch.cat(out)


def value_log_prior(targets: torch.Tensor, value_groups: torch.Tensor) -> torch.Tensor:
    """(V,) log π_v: each value's Laplace-smoothed frequency within its group among ``targets`` (B, G) (−1 =
    no target): π_v = (n_v + 1) / (n_g + |g|). Added to the training logits of the per-image attribute loss
    (logit adjustment, Menon et al., ICLR 2021), so the learned scores are not the support's value
    frequencies: a value rare in a few-shot support (a non-circumscribed benign mass) can still win."""
    counts = torch.zeros(len(value_groups), dtype=torch.float64)
    valid = targets[targets >= 0].cpu()
    counts.index_add_(0, valid, torch.ones(len(valid), dtype=torch.float64))
    out = torch.zeros_like(counts)
    vg = value_groups.cpu()
    for g in vg.unique().tolist():
        cols = vg == g
        out[cols] = torch.log((counts[cols] + 1) / (counts[cols].sum() + int(cols.sum())))
    return out.float()
