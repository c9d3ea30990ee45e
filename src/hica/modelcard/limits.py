"""What a model card says a model is for and where it fails: intended use and known limits (measured ones
cite the committed result file whose numbers they quote)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

RESEARCH_ONLY = "Research use only; not for clinical decisions."

# Measured failures, each citing the committed file whose numbers it quotes (tests/test_model_card.py checks
# that every number quoted here is in its file). ``datasets``: built-in dataset names it applies to; None:
# every model (a measured caution from another dataset, said so in the text).
MEASURED_LIMITS: tuple[dict[str, Any], ...] = (
    {
        "datasets": None,
        "text": "Resolution shift (measured on chest X-ray, K=16, 3 seeds): a HiCA model trained on 224 px "
        "radiographs scores 0.630 ± 0.008 accuracy (the majority-class rate) and 0.659 ± 0.076 AUC on the "
        "same test radiographs at 28 px (PneumoniaMNIST), against 0.880 ± 0.031 / 0.950 ± 0.009 at 224 px. "
        "Do not score images much smaller than the training images.",
        "source": "results/generalization/cross_resolution/table.md",
    },
    {
        "datasets": ("pneumoniamnist",),
        "text": "Trained at 28 px (PneumoniaMNIST, K=16, 3 seeds): 0.796 ± 0.017 accuracy on 28 px test "
        "images; scored on the same radiographs at 224 px it falls to 0.756 ± 0.057.",
        "source": "results/generalization/cross_resolution/table.md",
    },
    {
        "datasets": ("busi", "busi_medmnist_split"),
        "text": "Resolution shift (BUSI, K=16, 3 seeds, malignant vs benign-or-normal): a full-size BUSI "
        "model scored on the same kind of images at 28 px (BreastMNIST) drops from 0.826 ± 0.033 to "
        "0.744 ± 0.058 AUC, and its accuracy (0.707 ± 0.029) falls below the 0.73 majority rate.",
        "source": "results/generalization/cross_resolution_busi/table.md",
    },
    {
        "datasets": ("breastmnist",),
        "text": "Trained at 28 px (BreastMNIST, K=16, 3 seeds): accuracy 0.716 ± 0.004, at or below the 0.73 "
        "majority-class rate; AUC 0.784 ± 0.026 is the number to read.",
        "source": "results/generalization/cross_resolution_busi/table.md",
    },
    {
        "datasets": ("busi", "busi_medmnist_split", "breastmnist"),
        "text": "Classes outside training (BUSI, K=16, 3 seeds): a class held out of stage 2 and classified "
        "zero-shot is never predicted (recall 0.000 ± 0.000 for held-out malignant and for held-out "
        "benign); `hica predict --zero-shot` on new classes is not reliable.",
        "source": "results/generalization/unseen_busi/table.md",
    },
    {
        "datasets": ("busi", "busi_medmnist_split"),
        "text": "Image noise (BUSI, K=16, 3 seeds): HiCA accuracy falls from 0.689 ± 0.048 on clean test "
        "images to 0.437 under Gaussian noise (mean over 5 severities); mean corrupted accuracy "
        "0.565 ± 0.030.",
        "source": "results/robustness/busi/results.md",
    },
    {
        "datasets": ("chest_xray",),
        "text": "Image noise (chest X-ray, K=16, 3 seeds): HiCA accuracy falls from 0.897 ± 0.039 on clean "
        "test images to 0.597 under Gaussian noise (mean over 5 severities); mean corrupted accuracy "
        "0.717 ± 0.015.",
        "source": "results/robustness/chest_xray/results.md",
    },
)


def known_limits(dataset: str, kind: str, k: int | None, image_size: Any = None) -> list[dict[str, Any]]:
    """General limits of a HiCA model plus the measured ones that apply to ``dataset`` (with their source)."""
    base = dataset.split("[", 1)[0]
    out: list[dict[str, Any]] = []
    if kind == "classifier":
        out.append(
            {
                "text": f"K-shot: trained on K={k} labelled images per class; the validation metrics come "
                "from a few validation shots (which also chose α) and vary strongly from one episode to "
                "another.",
                "source": None,
            }
        )
        out.append(
            {
                "text": "Closed set: every image gets one of the training classes; there is no rejection "
                "of images from other modalities, body parts or classes. Probabilities are not calibrated "
                "risks.",
                "source": None,
            }
        )
    else:
        out.append(
            {
                "text": "Encoder only: it classifies nothing by itself; fine-tune it (`hica finetune`) or "
                "use it as a benchmark encoder. Labels were not read to train it.",
                "source": None,
            }
        )
    out.append(
        {
            "text": f"Single source: trained on one dataset ({dataset}), i.e. one site / device family; "
            "accuracy on other sites, scanners, protocols or populations has not been measured. Test "
            "metrics (where present) are on a split of the same dataset, not an external validation.",
            "source": None,
        }
    )
    if image_size:
        out.append(
            {"text": f"Input: images are resized to {image_size} px squares before encoding.", "source": None}
        )
    for lim in MEASURED_LIMITS:
        if lim["datasets"] is None or base in lim["datasets"]:
            out.append({"text": lim["text"], "source": lim["source"]})
    return out


def intended_use(kind: str, classes: Sequence[str], dataset: str) -> str:
    """The card's ``intended_use`` sentence(s)."""
    if kind == "classifier":
        what = (
            f"Research on few-shot classification of {dataset} images into {', '.join(classes)}: "
            "reproducing and comparing results, studying failure modes, explaining predictions."
        )
    else:
        what = (
            f"Research: a domain-adapted encoder (HiCA stage 1 on {dataset}) to start few-shot fine-tuning "
            "or benchmarks from."
        )
    return f"{RESEARCH_ONLY} {what}"
