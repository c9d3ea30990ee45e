"""Build the bundle that ``scripts/gpu_grid.py`` runs the HiCA grid from on a bare GPU machine (issue 13 §6).

Runs here, on CPU, from the real data (``$HICA_DATA``) and the encoders the committed benchmark configs name
(``configs/gpu_grid.yaml``). Every episode is built by the protocol's own ``image_episode`` (support / val
images, lesion masks, measured attributes), on the episodes of the committed CPU results; images are stored
as bytes that decode to exactly the encoder's input (PNG of the resized image, or the source file when it
already is that) unless a lossy ``--codec`` is asked for; the frozen text transformer is replaced by its
pooled outputs for every sentence HiCA reads (recorded from a 1-step fit of each method). See
``scripts/gpu_bundle_io.py`` for the layout and ``results/gpu/README.md`` for sizes and how to run it.

    python scripts/gpu_bundle.py --out build/gpu_bundle            # the full grid
    python scripts/gpu_bundle.py --smoke --out /tmp/gpu_smoke      # tiny (the CI test)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]
import gpu_bundle_io as gb  # noqa: E402

from hica.config import load_config  # noqa: E402
from hica.data.catalog import load_dataset  # noqa: E402
from hica.data.descriptors import load_descriptors  # noqa: E402
from hica.data.episodes import sample_episode  # noqa: E402
from hica.data.sample import load_image  # noqa: E402
from hica.encoders import create_encoder  # noqa: E402
from hica.eval.episode_data import image_episode  # noqa: E402
from hica.eval.protocol import part_key  # noqa: E402
from hica.methods.base import ImageFewShotData, method_registry  # noqa: E402
from hica.model.text import pooled_sentences  # noqa: E402

MIB = 1 << 20
HANDLED = {"support", "support_labels", "val", "val_labels", "num_classes", "seed", "classes", "descriptors"}
HANDLED |= {"support_masks", "support_has_mask", "support_attributes"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout


def tree_bytes() -> int:
    """Bytes of what the device tool sends besides carried paths: tracked + untracked-not-ignored files."""
    names = git("ls-files", "-z").split("\0") + git("ls-files", "-o", "--exclude-standard", "-z").split("\0")
    return sum((ROOT / n).stat().st_size for n in set(names) if n and (ROOT / n).is_file())


# -- episodes and texts --------------------------------------------------------------------------------------
def episodes(ds: Any, shots: list[int], seeds: list[int], cpu_results: Path) -> tuple[list[Any], str]:
    """The grid's episodes: the committed CPU run's where its episode file exists (so the numbers compare),
    else ``sample_episode``; and which source was used."""
    out, committed, differ = [], 0, 0
    for k in shots:
        for seed in seeds:
            ep = sample_episode(ds, k, seed)
            f = cpu_results / "episodes" / f"{part_key(ds.name, 'episode', k, seed)}.json"
            if f.is_file():
                c = json.loads(f.read_text(encoding="utf-8"))
                committed += 1
                if (list(c["support"]), list(c["val"])) != (list(ep.support), list(ep.val)):
                    differ += 1
                    ep = dataclasses.replace(ep, support=tuple(c["support"]), val=tuple(c["val"]))
            out.append(ep)
    return (
        out,
        f"{committed} of {len(out)} from {cpu_results}/episodes ({differ} differ from sample_episode now)",
    )


class _Recorder:
    """Tokenizer wrapper that records every sentence (shared by deep copies of the encoder)."""

    def __init__(self, tok: Any, seen: set[str]) -> None:
        self.tok, self.seen = tok, seen

    def __call__(self, texts: list[str], **kw: Any) -> Any:
        self.seen.update(texts)
        return self.tok(texts, **kw)

    def __deepcopy__(self, memo: dict) -> _Recorder:
        return self


def record_texts(
    enc: Any, classes: dict[str, Any], args: dict[str, dict], data: Any, test: torch.Tensor
) -> list:
    """Every sentence each method's fit and predict send to the text tower (a 1-step fit on ``data``)."""
    seen: set[str] = set()
    tok, enc.tokenizer = enc.tokenizer, _Recorder(enc.tokenizer, seen)
    try:
        for name, cls in classes.items():
            m = cls(**{**args.get(name, {}), "steps": 1, "head_steps": 1})
            m.fit(enc, copy.copy(data), torch.device("cpu"), "fp32").predict_proba(test)
    finally:
        enc.tokenizer = tok
    return sorted(seen)


def seeded_heads(enc: Any, state: dict[str, torch.Tensor]) -> dict[str, list]:
    """Pop the projection heads still at their seeded initialisation (the runner regenerates them):
    name -> [seed, digest of the fp32 tensor]."""
    from hica.encoders._common import seeded_projection

    seed0 = enc.config.get("head_seed", 0)
    out = {}
    for name, seed in (("image_proj.weight", seed0), ("text_proj.weight", seed0 + 1)):
        w = state.get(name)
        if w is not None and torch.equal(w, seeded_projection(w.shape[1], w.shape[0], seed=seed).weight):
            out[name] = [seed, gb.tensor_digest(state.pop(name))]
    return out


# -- one dataset part ----------------------------------------------------------------------------------------
def episode_record(
    ep: Any, data: ImageFewShotData, masks: dict[str, np.ndarray], has: dict[str, bool]
) -> dict:
    """What the runner needs to rebuild ``data`` (images by id; masks kept once per image)."""
    extra = {}
    for f in dataclasses.fields(ImageFewShotData):
        v = getattr(data, f.name)
        if f.name in HANDLED or v is None or v == f.default:
            continue
        try:
            extra[f.name] = json.loads(json.dumps(v))
        except TypeError as e:
            raise SystemExit(
                f"ImageFewShotData.{f.name} is new: teach scripts/gpu_bundle.py to carry it"
            ) from e
    if data.support_masks is not None:
        for i, sid in enumerate(ep.support):
            m = data.support_masks[i].numpy().astype(bool)
            if sid in masks and not np.array_equal(masks[sid], m):
                raise SystemExit(f"support image {sid}: two different masks in two episodes")
            masks[sid], has[sid] = m, bool(data.support_has_mask[i])
    return {
        "k": ep.k,
        "seed": ep.seed,
        "support": list(ep.support),
        "val": list(ep.val),
        "support_labels": data.support_labels.tolist(),
        "val_labels": data.val_labels.tolist(),
        "masks": data.support_masks is not None,
        "support_attributes": data.support_attributes,
        "extra": extra,
    }


def build_dataset(
    out: Path, key: str, spec: dict[str, Any], opts: argparse.Namespace, smoke: dict | None
) -> dict:
    """Write the part ``out/key`` for one dataset of the grid (``smoke``: the tiny variant); its manifest."""
    t0 = time.perf_counter()
    cfg = load_config(ROOT / spec["benchmark"])
    sm = smoke or {}
    shots, seeds, methods = (
        sm.get("shots", cfg.shots),
        sm.get("seeds", cfg.seeds),
        sm.get("methods", cfg.methods),
    )
    method_args = {m: {**cfg.method_args.get(m, {}), **sm.get("method_args", {}).get(m, {})} for m in methods}
    ds = load_dataset(cfg.datasets[0], opts.data_root, skip_bad=cfg.skip_bad)
    enc_args = {**cfg.encoder.args, **({"image_size": smoke["image_size"]} if smoke else {})}
    enc = create_encoder(cfg.encoder.name, **enc_args).eval()
    desc = load_descriptors(ds.descriptors)
    desc.check_classes(ds.classes, ds.name)
    registry = method_registry()
    classes = {m: registry[m] for m in methods}
    flags = {(getattr(c, "uses_text", False), getattr(c, "uses_masks", False)) for c in classes.values()}
    if len(flags) != 1 or not all(getattr(c, "image_level", False) for c in classes.values()):
        raise SystemExit(f"{key}: the grid's methods must be image-level with the same text/mask needs")
    eps, ep_source = episodes(ds, shots, seeds, ROOT / spec["cpu_results"])
    by_id = {s.id: s for sp in ds.splits.values() for s in sp}
    test = list(ds.split(cfg.eval_split))
    if smoke:
        test = [
            s
            for c in range(len(ds.classes))
            for s in [t for t in test if t.label == c][: smoke["test_per_class"]]
        ]
    part = out / key
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    first = next(iter(classes.values()))
    masks: dict[str, np.ndarray] = {}
    has: dict[str, bool] = {}
    records, datas = [], []
    for ep in eps:
        data = image_episode(enc, ds, ep, by_id, ep.seed, first, desc)
        records.append(episode_record(ep, data, masks, has))
        datas.append(data)
    ids = sorted({s.id for s in test} | {i for ep in eps for i in (*ep.support, *ep.val)})
    images = gb.pack_images(part, [load_image(by_id[i]) for i in ids], [by_id[i] for i in ids], enc, opts)
    probe = torch.stack([enc.preprocess(load_image(s)) for s in test[:2]])
    texts = record_texts(enc, classes, method_args, min(datas, key=lambda d: len(d.support)), probe)
    with torch.no_grad():
        pooled = torch.cat(
            [pooled_sentences(enc, texts[i : i + 64]).float() for i in range(0, len(texts), 64)]
        )
    from safetensors.torch import save_file

    save_file({"pooled": pooled.contiguous()}, str(part / "text.safetensors"))
    (part / "texts.json").write_text(json.dumps(texts, indent=0), encoding="utf-8")
    state = {k: v for k, v in enc.state_dict().items() if not k.startswith("text_model.")}
    seeded = seeded_heads(enc, state)
    save_file(gb.encode_weights(state, opts.weights), str(part / "encoder.safetensors"))
    info = {
        "timm_model": enc.trunk.default_cfg.get("architecture", "tf_efficientnet_lite0"),
        "image_size": enc.image_size,
        "embed_dim": enc.embed_dim,
        "max_text_length": enc.max_text_length,
        "config": json.loads(json.dumps(enc.config, default=str)),
        "fingerprint": enc.fingerprint(),
        "weights": opts.weights,
        "seeded": seeded,
    }
    (part / "encoder.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    mids = sorted(masks)
    np.savez_compressed(
        part / "masks.npz",
        packed=np.stack([np.packbits(masks[i], axis=-1) for i in mids])
        if mids
        else np.zeros((0, 0, 0), np.uint8),
        side=np.int64(enc.image_size),
    )
    (part / "episodes.json").write_text(
        json.dumps({"mask_ids": mids, "has_mask": [has[i] for i in mids], "episodes": records}),
        encoding="utf-8",
    )
    grid = {
        "key": key,
        "dataset": ds.name,
        "classes": list(ds.classes),
        "descriptors": ds.descriptors,
        "descriptors_sha256": gb.sha256(Path(desc.source)) if Path(desc.source).is_file() else None,
        "methods": methods,
        "method_args": method_args,
        "shots": shots,
        "seeds": seeds,
        "bootstrap": sm.get("bootstrap", cfg.bootstrap),
        "precision": cfg.precision,
        "eval_split": cfg.eval_split,
        "test_ids": [s.id for s in test],
        "test_labels": [s.label for s in test],
        "benchmark": spec["benchmark"],
        "cpu_results": spec["cpu_results"],
        "episodes_source": ep_source,
        "smoke": bool(smoke),
    }
    (part / "grid.json").write_text(json.dumps(grid, indent=1), encoding="utf-8")
    meta = {
        "part": key,
        "kind": "dataset",
        "weights": opts.weights,
        "codec": opts.codec,
        "quality": opts.quality,
        "images": images,
        "texts": len(texts),
        "episodes": len(records),
        "git_commit": git("rev-parse", "HEAD").strip(),
        "git_dirty": bool(git("status", "--porcelain").strip()),
        "built_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    return gb.write_manifest(part, meta)


def build_common(out: Path, conf: dict[str, Any], opts: argparse.Namespace) -> dict:
    """``common/``: wheels of the packages a bare GPU image may lack (pip download, for its Python)."""
    part = out / gb.COMMON
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    cache = ROOT / "build" / "wheel_cache"
    pins = [f"{n}=={metadata.version(n)}" for n in conf["wheels"]]
    plats = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        str(conf["python_version"]),
        *[f"--platform={p}" for p in plats],
        "-d",
        str(cache),
        *pins,
    ]
    subprocess.run(cmd, check=True)
    wheels = []
    for pin in pins:
        name, version = pin.split("==")
        stem = name.replace("-", "_").lower()
        hits = sorted(w for w in cache.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-"))
        if not hits:
            raise SystemExit(f"no wheel for {pin} in {cache}")
        wheels.append(hits[0])
    gb.pack_wheels(wheels, part / "site.tar.xz")
    wheels = [w.name for w in wheels]
    info = {"wheels": wheels, "provides": conf["provides"], "python_version": str(conf["python_version"])}
    (part / "wheels.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    return gb.write_manifest(part, {"part": gb.COMMON, "kind": "wheels", "pins": pins})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "gpu_bundle")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "gpu_grid.yaml")
    ap.add_argument(
        "--datasets", nargs="*", help="dataset parts to (re)build (default: all; none: only common/)"
    )
    ap.add_argument("--weights", choices=["fp32", "fp16", "int8"], default="fp16")
    ap.add_argument("--codec", choices=["png", "jpeg", "webp"], default="png", help="png: lossless (default)")
    ap.add_argument("--quality", type=int, default=95, help="jpeg / webp quality")
    ap.add_argument("--no-source", dest="source", action="store_false", help="never store source file bytes")
    ap.add_argument("--no-wheels", dest="wheels", action="store_false", help="skip common/ (no pip download)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny bundle for the CPU smoke test (no wheels)")
    opts = ap.parse_args(argv)
    conf = yaml.safe_load(opts.config.read_text(encoding="utf-8"))
    smoke = conf["smoke"] if opts.smoke else None
    keys = [smoke["dataset"]] if smoke else list(conf["datasets"] if opts.datasets is None else opts.datasets)
    opts.out.mkdir(parents=True, exist_ok=True)
    parts = {k: build_dataset(opts.out, k, conf["datasets"][k], opts, smoke) for k in keys}
    if opts.wheels and not smoke:
        parts[gb.COMMON] = build_common(opts.out, conf, opts)
    limit, tree = conf["travel_limit_mib"] * MIB, tree_bytes()
    found = gb.find_parts(opts.out)
    sizes = {n: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for n, p in found.items()}
    report = {
        "parts_mib": {n: round(b / MIB, 2) for n, b in sizes.items()},
        "bundle_mib": round(sum(sizes.values()) / MIB, 2),
        "tree_mib": round(tree / MIB, 2),
        "room_mib": round((limit - tree) / MIB, 2),
        "fits_one_call": tree + sum(sizes.values()) <= limit,
        "images": {n: m["images"] for n, m in parts.items() if "images" in m},
    }
    (opts.out / "bundle.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
