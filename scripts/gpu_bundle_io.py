"""The GPU bundle's formats, shared by ``scripts/gpu_bundle.py`` (builds it here, on CPU) and
``scripts/gpu_grid.py`` (runs the HiCA grid from it on a machine that has no data, weights or network).

A bundle is a folder of *parts*, each with its own ``manifest.json`` (sha256 and size of every file):
``common/`` (the Python packages a bare GPU image may lack, unpacked from their wheels into
``site.tar.xz``) and one part per dataset (``busi/``, ``chest_xray/``) holding

- ``encoder.safetensors`` + ``encoder.json``: the image tower and heads of the benchmark's encoder (fp16, or
  int8 with a per-row scale) and what rebuilds it (timm model name, sizes, the CPU encoder's fingerprint);
- ``text.safetensors`` + ``texts.json``: the frozen text transformer's mean-pooled output for every sentence
  HiCA reads (HiCA stage 2 never trains the text transformer, so these replace MiniLM and its tokenizer);
- ``images.bin`` + ``images.json``: the test and episode images as bytes that decode to the encoder's input;
- ``episodes.json`` + ``masks.npz``: each episode's ids, support lesion masks and attributes;
- ``grid.json``: methods, their settings, K, seeds, test ids and labels.

Only the standard library is imported at module level: the runner checks the bundle and installs carried
wheels before anything imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FORMAT = "hica-gpu-bundle/1"
MANIFEST = "manifest.json"
COMMON = "common"
QUANT_SUFFIX = ".__scale"  # int8 tensors carry a per-row fp16 scale under "<name>.__scale"


# -- integrity -----------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    """Hex sha256 of a file (``hica.integrity``: standard library only, safe before the bundle is checked)."""
    from hica.integrity import sha256_file

    return sha256_file(path)


def write_manifest(part: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``part/manifest.json``: ``meta`` plus every file's size and sha256; returns it."""
    files = {
        str(p.relative_to(part)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(part.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    man = {"format": FORMAT, **meta, "files": files, "bytes": sum(f["bytes"] for f in files.values())}
    (part / MANIFEST).write_text(json.dumps(man, indent=1) + "\n", encoding="utf-8")
    return man


def verify_part(part: Path) -> dict[str, Any]:
    """Check every file of a part against its manifest; the manifest, or SystemExit naming the bad file."""
    man_path = part / MANIFEST
    if not man_path.is_file():
        raise SystemExit(f"{part}: no {MANIFEST}; build the bundle with scripts/gpu_bundle.py")
    man = json.loads(man_path.read_text(encoding="utf-8"))
    if man.get("format") != FORMAT:
        raise SystemExit(f"{man_path}: format {man.get('format')!r} is not {FORMAT!r}; rebuild the bundle")
    for rel, info in man["files"].items():
        p = part / rel
        if not p.is_file() or p.stat().st_size != info["bytes"] or sha256(p) != info["sha256"]:
            raise SystemExit(f"{p}: missing or not the file the manifest lists (size/sha256); rebuild")
    return man


def find_parts(bundle: Path) -> dict[str, Path]:
    """Part name -> folder, for every sub-folder of ``bundle`` with a manifest."""
    if not bundle.is_dir():
        raise SystemExit(f"bundle {bundle} not found: build it with scripts/gpu_bundle.py (see results/gpu)")
    return {p.name: p for p in sorted(bundle.iterdir()) if (p / MANIFEST).is_file()}


# -- carried wheels ------------------------------------------------------------------------------------------
def pack_wheels(wheels: list[Path], dest: Path) -> None:
    """The wheels unpacked as one site-packages tree in ``dest`` (tar.xz: a third smaller than the wheels;
    a wheel is a zip laid out for site-packages, and these need no install scripts)."""
    with tempfile.TemporaryDirectory() as tmp:
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                z.extractall(tmp)
        with tarfile.open(dest, "w:xz", preset=9) as tar:
            for p in sorted(Path(tmp).rglob("*")):
                tar.add(p, arcname=str(p.relative_to(tmp)), recursive=False)


def ensure_wheels(common: Path | None, site: Path) -> list[str]:
    """Unpack the carried packages into ``site`` and put it first on ``sys.path`` / ``PYTHONPATH`` when a
    module they provide is missing here; the wheels unpacked (none when nothing is missing)."""
    info_path = common / "wheels.json" if common else None
    if info_path is None or not info_path.is_file():
        return []
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if all(importlib.util.find_spec(m) is not None for m in info["provides"]):
        return []
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(common / "site.tar.xz") as tar:
        tar.extractall(site, filter="data")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()
    return list(info["wheels"])


# -- weights -------------------------------------------------------------------------------------------------
def encode_weights(state: dict[str, Any], mode: str) -> dict[str, Any]:
    """Float tensors of rank >= 2 as fp16 (``mode`` fp16) or int8 + per-row fp16 scale (int8); other float
    tensors (BatchNorm statistics, biases: small) and every tensor with ``mode`` fp32 stay fp32."""
    import torch

    out: dict[str, Any] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if mode == "fp32" or not v.is_floating_point() or v.ndim < 2:
            out[k] = v.float().contiguous() if v.is_floating_point() else v.contiguous()
        elif mode == "fp16":
            out[k] = v.half().contiguous()
        elif mode == "int8":
            flat = v.float().reshape(v.shape[0], -1)
            scale = (flat.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127).half().float()
            out[k] = torch.round(flat / scale).clamp(-127, 127).to(torch.int8).reshape(v.shape).contiguous()
            out[k + QUANT_SUFFIX] = scale.half().reshape(-1).contiguous()
        else:
            raise SystemExit(f"weights must be fp32, fp16 or int8, got {mode!r}")
    return out


def decode_weights(tensors: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`encode_weights`, as float32."""
    out: dict[str, Any] = {}
    for k, v in tensors.items():
        if k.endswith(QUANT_SUFFIX):
            continue
        scale = tensors.get(k + QUANT_SUFFIX)
        if scale is not None:
            shape = (v.shape[0],) + (1,) * (v.ndim - 1)
            out[k] = v.float() * scale.float().reshape(shape)
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


def tensor_digest(t: Any) -> str:
    """sha256 of a tensor's float32 bytes (is a regenerated tensor bit-identical to the one here?)."""
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()[:20]


# -- images --------------------------------------------------------------------------------------------------
def decode_image(blob: bytes) -> Any:
    """Bundle bytes -> RGB PIL image (what the encoder's ``preprocess`` takes)."""
    from PIL import Image

    im = Image.open(io.BytesIO(blob))
    im.load()
    return im.convert("RGB")


def encode_u8(u8: Any, codec: str, quality: int) -> bytes:
    """A (3, S, S) uint8 image as PNG / JPEG / WebP bytes (one channel when it is grey)."""
    from PIL import Image

    gray = bool((u8[0] == u8[1]).all() and (u8[1] == u8[2]).all())
    arr = u8[0].numpy() if gray else u8.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    kw = {"png": {"optimize": True}, "jpeg": {"quality": quality}, "webp": {"quality": quality}}[codec]
    Image.fromarray(arr, "L" if gray else "RGB").save(buf, codec.upper(), **kw)
    return buf.getvalue()


def pack_images(part: Path, pils: list[Any], samples: list[Any], enc: Any, opts: Any) -> dict[str, Any]:
    """Write ``images.bin`` / ``images.json`` for ``samples`` (decoded as ``pils``): the source file where
    it decodes to exactly the encoder's input and is not larger, else the resized image in ``opts.codec``.
    Each entry records whether it decodes to exactly the CPU run's input (``exact``, ``rmse``)."""
    import torch
    from torchvision.transforms import v2 as T

    pre = enc.preprocess.transforms
    to_u8, to_float = T.Compose(pre[:3]), T.Compose(pre[3:])
    blob, index = bytearray(), []
    for s, pil in zip(samples, pils, strict=True):
        u8 = to_u8(pil)
        if not torch.equal(to_float(u8), enc.preprocess(pil)):
            raise SystemExit("the encoder's preprocess is not (to uint8, resize) then (to float, normalise)")
        data, codec = encode_u8(u8, opts.codec, opts.quality), opts.codec
        if opts.source and s.path is not None:
            raw = s.path.read_bytes()
            if len(raw) <= len(data) and torch.equal(to_u8(decode_image(raw)), u8):
                data, codec = raw, "source"
        rmse = float((to_u8(decode_image(data)).float() - u8.float()).pow(2).mean().sqrt())
        index.append({"id": s.id, "label": s.label, "offset": len(blob), "length": len(data), "codec": codec})
        index[-1].update(exact=rmse == 0.0, rmse=round(rmse, 3))
        blob += data
    (part / "images.bin").write_bytes(bytes(blob))
    (part / "images.json").write_text(json.dumps(index, indent=0), encoding="utf-8")
    rmses = [e["rmse"] for e in index]
    return {
        "count": len(index),
        "exact": sum(e["exact"] for e in index),
        "mib": round(len(blob) / (1 << 20), 2),
        "mean_rmse": round(sum(rmses) / len(rmses), 3),
        "max_rmse": max(rmses),
        "codecs": sorted({e["codec"] for e in index}),
    }


class ImagePack:
    """``images.bin`` + ``images.json`` of a part: id -> bytes."""

    def __init__(self, part: Path) -> None:
        self.index = {e["id"]: e for e in json.loads((part / "images.json").read_text(encoding="utf-8"))}
        self.blob = (part / "images.bin").read_bytes()

    def bytes(self, image_id: str) -> bytes:
        e = self.index[image_id]
        return self.blob[e["offset"] : e["offset"] + e["length"]]

    def pil(self, image_id: str) -> Any:
        return decode_image(self.bytes(image_id))


# -- the frozen text transformer as a table ------------------------------------------------------------------
class SentenceTable:
    """Tokenizer stand-in: each sentence becomes one "token", its row in the pooled-output table."""

    def __init__(self, texts: list[str]) -> None:
        self.row = {t: i for i, t in enumerate(texts)}

    def __call__(self, texts: list[str], **_: Any) -> Any:
        import torch

        missing = [t for t in texts if t not in self.row]
        if missing:
            raise KeyError(
                f"sentence not in the bundle's text table: {missing[0]!r}; the descriptors or HiCA's text "
                "changed since the bundle was built: rebuild it (scripts/gpu_bundle.py)"
            )
        ids = torch.tensor([[self.row[t]] for t in texts])
        return _Batch(input_ids=ids, attention_mask=torch.ones_like(ids))


class _Batch(dict):
    def to(self, device: Any) -> _Batch:
        return _Batch({k: v.to(device) for k, v in self.items()})


def pooled_text_model(pooled: Any) -> Any:
    """Module stand-in for the text transformer: ``last_hidden_state`` (B, 1, H) = the pooled rows, so the
    encoder's mean pooling over its one token returns them unchanged."""
    import torch
    from torch import nn

    class PooledText(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pooled = nn.Parameter(pooled.float().clone(), requires_grad=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
            return SimpleNamespace(last_hidden_state=self.pooled[input_ids])

    return PooledText()


# -- the encoder ---------------------------------------------------------------------------------------------
def build_encoder(part: Path) -> Any:
    """The benchmark's encoder rebuilt from a dataset part: hica's ``DefaultEncoder`` (its own
    ``encode_image`` / ``encode_text``) with timm's trunk and the bundle's weights; the text transformer is
    the pooled-output table. Its fingerprint is the CPU encoder's."""
    import timm
    import torch
    from safetensors.torch import load_file
    from torch import nn

    from hica.encoders._common import IMAGENET_MEAN, IMAGENET_STD, image_transform, seeded_projection
    from hica.encoders.default import DefaultEncoder

    info = json.loads((part / "encoder.json").read_text(encoding="utf-8"))
    texts = json.loads((part / "texts.json").read_text(encoding="utf-8"))
    pooled = load_file(str(part / "text.safetensors"))["pooled"]

    class BundleEncoder(DefaultEncoder):
        def __init__(self) -> None:
            nn.Module.__init__(self)  # not DefaultEncoder.__init__: no transformers, no PyPI weight packages
            self.trunk = timm.create_model(info["timm_model"], pretrained=False)
            self.trunk.reset_classifier(0)
            self.trunk.to(memory_format=torch.channels_last)
            self.tokenizer = SentenceTable(texts)
            self.text_model = pooled_text_model(pooled)
            self.max_text_length = info["max_text_length"]
            self.embed_dim = info["embed_dim"]
            self.image_proj = nn.Linear(self.trunk.num_features, self.embed_dim, bias=False)
            self.text_proj = nn.Linear(pooled.shape[1], self.embed_dim, bias=False)
            self.logit_scale_param = nn.Parameter(torch.zeros(()))
            self.image_size = info["image_size"]
            self._preprocess = image_transform(self.image_size, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
            self.config = info["config"]

    enc = BundleEncoder()
    state = decode_weights(load_file(str(part / "encoder.safetensors")))
    for name, (seed, digest) in info.get("seeded", {}).items():  # heads still at their seeded initialisation
        head = seeded_projection(*reversed(getattr(enc, name.split(".")[0]).weight.shape), seed=seed)
        state[name] = head.weight.detach()
        enc.seeded_exact = getattr(enc, "seeded_exact", True) and tensor_digest(state[name]) == digest
    missing, unexpected = enc.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text_model.")]
    if missing or unexpected:
        raise SystemExit(
            f"{part}: encoder weights do not fit (missing {missing[:3]}, extra {unexpected[:3]})"
        )
    return enc.eval()
