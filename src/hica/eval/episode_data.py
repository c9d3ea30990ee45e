"""An episode's data for the methods that the benchmark fits: support / validation images (with lesion
masks and per-image attributes for the methods that use them) and the augmentation of cached support views.
Shared by the benchmark (:mod:`hica.eval.protocol`), ``hica finetune`` and the analyses."""

from __future__ import annotations

from typing import Any

import torch

from hica.cache import ViewAugment
from hica.data.episodes import Episode
from hica.data.sample import Dataset, Sample, load_image
from hica.encoders import DualEncoder
from hica.methods.base import ImageFewShotData


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
    square resize to the encoder's input size; with a descriptor file that has ``attribute_values``, each
    support image's attributes are measured from its mask (``support_attributes``)."""
    sup = [by_id[i] for i in ep.support]
    val = [by_id[i] for i in ep.val]
    support = images_of(enc, sup)
    data = ImageFewShotData(
        support=support,
        support_labels=torch.tensor([s.label for s in sup]),
        val=images_of(enc, val) if val else support[:0],  # realistic protocol: no validation image read
        val_labels=torch.tensor([s.label for s in val]),
        num_classes=len(ds.classes),
        seed=seed,
        classes=list(ds.classes),
        descriptors=descriptors if getattr(method_cls, "uses_text", False) else None,
    )
    if getattr(method_cls, "uses_masks", False) and any(s.masks for s in sup):
        from hica.model.imagedata import input_spec, load_store

        store = load_store(sup, input_spec(enc).size, with_masks=True)
        data.support_masks, data.support_has_mask = store.masks, store.has_mask
        if descriptors is not None and descriptors.attribute_values:
            data.support_attributes = support_attributes(sup, list(ds.classes), descriptors)
    return data


def support_attributes(sup: list[Sample], classes: list[str], descriptors: Any) -> list[dict[str, str]]:
    """Each image's BI-RADS attribute values, measured from its own mask and pixels with the bundled
    thresholds (``AttributeThresholds``, fitted on BUSI train; never on labels or test data). A few-shot run
    passes its support images only; ``hica analyze unseen`` also its evaluation images, to score with."""
    from hica.data.attributes import AttributeThresholds, image_values, measure_split, no_lesion_classes

    measured = measure_split(sup, classes, AttributeThresholds(), no_lesion_classes(descriptors, classes))
    return [image_values(r) for r in measured.results]


def view_augment(enc: DualEncoder, ds: Dataset) -> ViewAugment:
    """The augmentation of support views: HiCA stage 2's (``training_augment`` for the modality of the
    dataset's descriptors, generic without; default ``min_scale``) applied as stage 2 does — to the
    preprocessed image mapped back to [0, 1], then normalised again."""
    from hica.data.descriptors import load_descriptors
    from hica.methods.hica import HiCASettings, modality_of
    from hica.model.augment import training_augment
    from hica.model.imagedata import input_spec

    modality = modality_of(load_descriptors(ds.descriptors).modality) if ds.descriptors else "generic"
    spec = input_spec(enc)
    min_scale = HiCASettings().min_scale
    aug = training_augment(modality, spec.size, min_scale=min_scale)  # type: ignore[arg-type]
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return spec.normalize(aug((x * std + mean).clamp(0, 1))[0])

    key = {
        "augment": "training_augment",
        "modality": modality,
        "size": spec.size,
        "min_scale": min_scale,
        "strength": 1.0,
    }
    return ViewAugment(key=key, fn=fn)
