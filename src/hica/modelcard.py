"""Model cards: what a trained model folder is, in JSON (``model_card.json``) and Markdown
(``MODEL_CARD.md``).

``hica finetune`` (→ ``OUT/model``) and ``hica pretrain`` (→ ``OUT/encoder``) write a card after the weights:
classes, training data with the episode's file list, K, seed, the encoder and its lineage (base encoder →
stage 1 → this model, with fingerprints and weight hashes), validation / test metrics where measured, ROI
source, hyperparameters, intended use, known limits (measured ones cite the committed result file) and the
SHA-256 of every weights file. Loading a model checks those hashes: a card that does not match its weights
is refused; a folder without a card (made before cards existed) still loads, with a warning from the CLI.
See ``docs/model-cards.md``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.io import write_json, write_text

SCHEMA_VERSION = "hica-model-card/1"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
WEIGHTS_SUFFIX = ".safetensors"
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


# ------------------------------------------------------------------------------------------------ pieces


def sha256_file(path: Path) -> str:
    """Full SHA-256 (hex) of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_hashes(model_dir: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of every weights file (``*.safetensors``) directly in ``model_dir``."""
    d = Path(model_dir)
    return {p.name: sha256_file(p) for p in sorted(d.glob(f"*{WEIGHTS_SUFFIX}")) if p.is_file()}


def fingerprint_hash(fingerprint: Any) -> str | None:
    """A short stable id (16 hex) of an encoder fingerprint (``DualEncoder.fingerprint()``)."""
    if fingerprint is None:
        return None
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_state() -> tuple[str | None, bool | None]:
    """(commit, clean) of the git tree holding this hica source; (None, None) outside a git tree."""
    git = shutil.which("git")
    if git is None:
        return None, None
    where = Path(__file__).resolve().parent

    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(
                [git, "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = run("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (None if status is None else status.strip() == "")


def _hica_version() -> str:
    from hica import __version__

    return __version__


def _label(classes: Sequence[str], label: int) -> str | None:
    return classes[label] if 0 <= label < len(classes) else None


def _sample_row(s: Any, role: str, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "set": role,
        "id": s.id,
        "path": str(s.path) if s.path is not None else None,
        "label": _label(classes, s.label),
    }


def training_data(
    ds: Any,
    splits_used: Sequence[str],
    episode: Any = None,
    images: Sequence[Any] | None = None,
    test_split: str | None = None,
) -> dict[str, Any]:
    """The card's ``training_data``: a K-shot ``episode`` (ids of ``ds``) with labels, or, for label-free
    training (stage 1), the unlabelled ``images`` used. ``test_split``: the split scored for the test
    metrics, counted per class."""
    out: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_source": ds.source or None,
        "dataset_fingerprint": ds.fingerprint(),
        "splits_used": list(splits_used),
    }
    if episode is not None:
        by_id = {s.id: s for sp in ds.splits.values() for s in sp}
        rows = [_sample_row(by_id[i], "support", ds.classes) for i in episode.support]
        rows += [_sample_row(by_id[i], "validation", ds.classes) for i in episode.val]
        out["episode"] = rows
        counts: dict[str, dict[str, int]] = {c: {"support": 0, "validation": 0} for c in ds.classes}
        for r in rows:
            counts[r["label"]][r["set"]] += 1
        if test_split:
            for s in ds.split(test_split):
                counts[ds.classes[s.label]]["test"] = counts[ds.classes[s.label]].get("test", 0) + 1
        out["n_images"] = counts
    else:
        out["episode"] = None
        out["images"] = [s.id for s in images or []]
        out["n_images"] = {"total (labels not read)": len(images or [])}
    return out


def encoder_lineage(name: str, args: dict[str, Any], fingerprint: Any = None) -> list[dict[str, Any]]:
    """Where an encoder came from, base encoder first: ``[{stage: base, ...}, {stage: stage1, ...}, ...]``.

    A ``checkpoint`` encoder contributes its own card's lineage (its weights checked against it), or, for a
    checkpoint without a card, what its ``config.json`` says."""
    if name != "checkpoint":
        return [
            {"stage": "base", "name": name, "args": dict(args), "fingerprint": fingerprint_hash(fingerprint)}
        ]
    from hica.encoders.checkpoint import WEIGHTS_FILE, read_checkpoint_config

    path = Path(str(args.get("path", "")))
    card = verify_model_card(path)
    lineage = card.get("encoder", {}).get("lineage") if card else None
    if lineage:
        prior = [dict(e) for e in lineage]
        prior[-1]["path"] = str(path)  # where it is now (the card says where it was written)
    else:
        cfg = read_checkpoint_config(path)
        base, meta = cfg["base"], cfg.get("meta", {})
        prior = encoder_lineage(base["name"], base.get("args", {}), base.get("fingerprint"))
        prior.append(
            {
                "stage": f"stage{meta.get('stage', '?')}",
                "name": path.parent.name if path.name in ("encoder", "model") else path.name,
                "path": str(path),
                "dataset": meta.get("dataset") or meta.get("config", {}).get("dataset"),
                "weights_sha256": sha256_file(path / WEIGHTS_FILE),
                "card": False,
            }
        )
    prior[-1]["fingerprint"] = fingerprint_hash(fingerprint)  # as loaded: follows the checkpoint's weights
    return prior


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


# ------------------------------------------------------------------------------------------------ card


def build_model_card(
    model_dir: str | Path,
    *,
    kind: str,
    name: str,
    dataset: Any,
    splits_used: Sequence[str],
    encoder_name: str,
    encoder_args: dict[str, Any],
    encoder_fingerprint: Any,
    seed: int,
    method: str,
    hyperparameters: dict[str, Any],
    selected: dict[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    k: int | None = None,
    episode: Any = None,
    images: Sequence[Any] | None = None,
    metrics: dict[str, Any] | None = None,
    roi_source: str | None = None,
    test_split: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of the trained model in ``model_dir`` (call after its weights are written: they are hashed).

    ``kind``: ``classifier`` (``hica finetune``) or ``encoder`` (``hica pretrain``). ``dataset``: the
    ``hica.data.sample.Dataset`` trained on; ``episode``: its K-shot ``Episode`` (classifier) or ``images``:
    the unlabelled samples used (encoder). ``encoder_*``: the encoder training started from.
    ``metrics``: ``{"validation": {...}|None, "test": {...}|None}``."""
    if kind not in ("classifier", "encoder"):
        raise HicaError(f"model card kind must be 'classifier' or 'encoder', got {kind!r}")
    d = Path(model_dir)
    weights = weight_hashes(d)
    if not weights:
        raise HicaError(f"model folder {d} holds no {WEIGHTS_SUFFIX} file: write the weights before the card")
    commit, clean = git_state()
    metrics = dict(metrics or {})
    notes = list(metrics.pop("notes", []))
    val, test = metrics.get("validation"), metrics.get("test")
    if kind == "encoder":
        notes.append("an encoder has no classifier: no validation or test accuracy (see `training` below)")
    else:
        if val is not None:
            notes.append("validation: the episode's validation shots, which also chose α (optimistic)")
        if test is None:
            notes.append("test: not measured (the run had evaluate_test: false)")
    lineage = encoder_lineage(encoder_name, encoder_args, encoder_fingerprint)
    stage = "stage2" if kind == "classifier" else "stage1"
    lineage.append(
        {
            "stage": stage,
            "name": name,
            "path": str(d),
            "dataset": dataset.name,
            "weights_sha256": weights.get("encoder.safetensors"),
            "card": True,
        }
    )
    image_size = (encoder_args or {}).get("image_size")
    if image_size is None and isinstance(encoder_fingerprint, dict):
        image_size = (encoder_fingerprint.get("config") or {}).get("image_size")
    classes = list(classes or [])
    card: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "hica_version": _hica_version(),
        "git_commit": commit,
        "git_clean": clean,
        "classes": classes,
        "training_data": training_data(dataset, splits_used, episode, images, test_split),
        "k": k,
        "seed": seed,
        "encoder": {
            "name": encoder_name,
            "args": dict(encoder_args or {}),
            "fingerprint": fingerprint_hash(encoder_fingerprint),
            "lineage": lineage,
        },
        "metrics": {"validation": val, "test": test, "notes": notes, **metrics},
        "roi_source": roi_source,
        "method": method,
        "hyperparameters": dict(hyperparameters or {}),
        "selected": dict(selected or {}),
        "intended_use": intended_use(kind, classes, dataset.name),
        "limits": known_limits(dataset.name, kind, k, image_size),
        "weights": weights,
    }
    if extra:
        card.update(extra)
    return json.loads(json.dumps(card, default=str))


def write_model_card(model_dir: str | Path, card: dict[str, Any]) -> None:
    """Write ``MODEL_CARD.md`` and ``model_card.json`` (the JSON last: a folder has a card once both
    exist)."""
    d = Path(model_dir)
    write_text(d / CARD_MD, render_markdown(card))
    write_json(d / CARD_JSON, card)


def read_model_card(model_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``model_card.json``, or None when it has none; a damaged card raises HicaError."""
    p = Path(model_dir) / CARD_JSON
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HicaError(f"model card {p}: not valid JSON ({e}); restore it or retrain the model") from e
    if not isinstance(card, dict) or not isinstance(card.get("weights"), dict) or not card["weights"]:
        raise HicaError(f"model card {p}: no 'weights' hashes; the file is damaged, restore it or retrain")
    return card


_VERIFIED: dict[str, tuple[tuple, dict[str, Any]]] = {}
_VERIFIED_LOCK = threading.Lock()


def _folder_state(d: Path) -> tuple:
    """What changes when any file of the folder is written or replaced: (name, inode, size, mtime, ctime) of
    each. ctime is set by the kernel on every write or utime call, so a file edited and given back its old
    mtime still counts as changed."""
    out = []
    for p in sorted(d.iterdir()):
        if p.is_file():
            st = p.stat()
            out.append((p.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def verify_model_card(model_dir: str | Path) -> dict[str, Any]:
    """The folder's card, checked against its weights files; ``{}`` when the folder has no card (made before
    cards existed: it still loads). A card whose hashes do not match the weights raises HicaError.

    Hashing reads every weights file, so a successful check is remembered until a file of the folder
    changes (a model loaded by ``Predictor`` and its checkpoint encoder, or listed by the app, is hashed
    once).
    """
    d = Path(model_dir)
    state = _folder_state(d) if d.is_dir() else None
    key = str(d.resolve())
    with _VERIFIED_LOCK:
        hit = _VERIFIED.get(key)
    if hit is not None and hit[0] == state:
        return copy.deepcopy(hit[1])
    card = _verify(d)
    if state is not None:
        with _VERIFIED_LOCK:
            _VERIFIED[key] = (state, copy.deepcopy(card))
    return card


def _verify(d: Path) -> dict[str, Any]:
    card = read_model_card(d)
    if card is None:
        return {}
    fix = "restore the original files or retrain the model (`hica finetune` / `hica pretrain`)"
    listed = card["weights"]
    for fname, want in listed.items():
        if not isinstance(fname, str) or "/" in fname or "\\" in fname or not fname.endswith(WEIGHTS_SUFFIX):
            raise HicaError(
                f"model card {d / CARD_JSON}: {fname!r} is not a weights file of this folder; {fix}"
            )
        f = d / fname
        if not f.is_file():
            raise HicaError(f"model {d}: {fname} is listed in its {CARD_JSON} but missing; {fix}")
        got = sha256_file(f)
        if got != want:
            raise HicaError(
                f"model {d}: {fname} does not match its model card (sha256 {got[:12]}…, card says "
                f"{str(want)[:12]}…): the weights were changed after training or the card belongs to "
                f"another model; {fix}"
            )
    extra = sorted(p.name for p in d.glob(f"*{WEIGHTS_SUFFIX}") if p.name not in listed)
    if extra:
        raise HicaError(f"model {d}: weights file {extra[0]} is not in its model card {CARD_JSON}; {fix}")
    return card


def missing_card_warning(model_dir: str | Path) -> str:
    """The one-line warning for a model folder without a card."""
    return (
        f"warning: {model_dir} has no {CARD_JSON} (made before model cards): its data, K, lineage and "
        "weights cannot be checked; retrain it to get a card. Research use only."
    )


def lineage_text(lineage: Sequence[dict[str, Any]]) -> str:
    """``default→stage1(1a2b3c4)``: the chain of encoders (stages with a short weights hash)."""
    parts = []
    for e in lineage:
        if e.get("stage") == "base":
            parts.append(str(e.get("name")))
        else:
            sha = e.get("weights_sha256") or e.get("fingerprint") or ""
            parts.append(f"{e.get('stage')}({str(sha)[:7]})")
    return "→".join(parts)


def card_summary(card: dict[str, Any]) -> str:
    """One line: name, data, K, seed, classes, encoder lineage, metrics, intended use."""
    td = card.get("training_data") or {}
    bits = [f"{card.get('kind', 'model')} {card.get('name')}", f"{td.get('dataset')}"]
    if card.get("k") is not None:
        bits[-1] += f" K={card['k']}"
    bits[-1] += f" seed {card.get('seed')}"
    if card.get("classes"):
        bits.append("classes " + "/".join(card["classes"]))
    lineage = (card.get("encoder") or {}).get("lineage") or []
    bits.append("encoder " + lineage_text(lineage[:-1] if len(lineage) > 1 else lineage))
    m = card.get("metrics") or {}
    for key, label in (("validation", "val"), ("test", "test")):
        if isinstance(m.get(key), dict) and m[key].get("accuracy") is not None:
            bits.append(f"{label} acc {m[key]['accuracy']:.2f}")
        elif card.get("kind") == "classifier":
            bits.append(f"{label} not measured")
    bits.append("research use only")
    return " · ".join(bits)


# -------------------------------------------------------------------------------------------- markdown


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (dict, list)):
        v = json.dumps(v, default=str)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out + [""]


def render_markdown(card: dict[str, Any]) -> str:
    """A readable Markdown card rendered from the JSON card."""
    td = card.get("training_data") or {}
    enc = card.get("encoder") or {}
    m = card.get("metrics") or {}
    lines = [
        f"# Model card: {card.get('name')} ({card.get('kind')})",
        "",
        f"**{RESEARCH_ONLY}**",
        "",
        f"`{card_summary(card)}`",
        "",
        "| field | value |",
        "|---|---|",
    ]
    commit = card.get("git_commit")
    if commit:
        commit = f"{commit[:12]}" + ("" if card.get("git_clean") else " (uncommitted changes)")
    for k, v in (
        ("kind", card.get("kind")),
        ("classes", ", ".join(card.get("classes") or []) or None),
        ("dataset", td.get("dataset")),
        ("dataset fingerprint", td.get("dataset_fingerprint")),
        ("K (shots per class)", card.get("k")),
        ("seed", card.get("seed")),
        ("method", card.get("method")),
        ("ROI source", card.get("roi_source")),
        ("created (UTC)", card.get("created")),
        ("hica version", card.get("hica_version")),
        ("git commit", commit),
        ("card schema", card.get("schema_version")),
    ):
        lines.append(f"| {k} | {_cell(v)} |")
    lines += ["", "## Intended use", "", str(card.get("intended_use")), ""]
    lines += ["## Known limits", ""]
    for lim in card.get("limits") or []:
        src = f" (source: `{lim['source']}`)" if lim.get("source") else ""
        lines.append(f"- {lim.get('text')}{src}")
    lines += ["", "## Training data", ""]
    lines += [
        f"Dataset `{td.get('dataset')}` (fingerprint `{td.get('dataset_fingerprint')}`), splits used: "
        f"{', '.join(td.get('splits_used') or [])}.",
        "",
    ]
    counts = td.get("n_images") or {}
    if counts and all(isinstance(v, dict) for v in counts.values()):
        cols = list(dict.fromkeys(c for v in counts.values() for c in v))
        lines += _table(["class", *cols], [[c, *[v.get(col, 0) for col in cols]] for c, v in counts.items()])
    elif counts:
        lines += _table(["images", "count"], list(counts.items()))
    if td.get("episode"):
        lines += ["### Episode files", ""]
        lines += _table(
            ["set", "label", "id", "path"],
            [[r["set"], r["label"], r["id"], r["path"]] for r in td["episode"]],
        )
    elif td.get("images") is not None:
        lines += [
            f"{len(td['images'])} unlabelled image ids are listed in `{CARD_JSON}` (`training_data.images`).",
            "",
        ]
    lines += ["## Encoder and lineage", ""]
    lines += [
        f"Started from encoder `{enc.get('name')}` with arguments `{json.dumps(enc.get('args') or {})}` "
        f"(fingerprint `{enc.get('fingerprint')}`): {lineage_text(enc.get('lineage') or [])}.",
        "",
    ]
    lines += _table(
        ["step", "name", "dataset", "fingerprint", "weights sha256", "path"],
        [
            [
                e.get("stage"),
                e.get("name"),
                e.get("dataset"),
                e.get("fingerprint"),
                (e.get("weights_sha256") or "")[:16] or None,
                e.get("path"),
            ]
            for e in enc.get("lineage") or []
        ],
    )
    lines += ["## Metrics", ""]
    measured = {k: v for k, v in (("validation", m.get("validation")), ("test", m.get("test"))) if v}
    if measured:
        keys = list(dict.fromkeys(k for v in measured.values() for k in v))
        lines += _table(["metric", *measured], [[k, *[v.get(k) for v in measured.values()]] for k in keys])
    else:
        lines += ["No validation or test metrics were measured for this model.", ""]
    lines += [f"- {n}" for n in m.get("notes") or []]
    if m.get("training"):
        lines += ["", "Training summary:", "", "```json", json.dumps(m["training"], indent=2), "```"]
    lines += ["", "## Method and hyperparameters", ""]
    if card.get("selected"):
        lines += ["Chosen on validation data:", ""]
        lines += _table(["hyperparameter", "value"], list(card["selected"].items()))
    lines += ["Settings:", "", "```json", json.dumps(card.get("hyperparameters") or {}, indent=2), "```", ""]
    lines += ["## Weights", ""]
    lines += _table(["file", "sha256"], [[f, f"`{h}`"] for f, h in (card.get("weights") or {}).items()])
    lines += [
        f"Rendered from `{CARD_JSON}` by `hica.modelcard`. `hica predict` / `evaluate` / `explain` refuse "
        "this model if a weights file no longer matches these hashes.",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "CARD_JSON",
    "CARD_MD",
    "build_model_card",
    "card_summary",
    "missing_card_warning",
    "read_model_card",
    "verify_model_card",
    "write_model_card",
]
