"""Run the HiCA grid (both datasets, K, seeds, HiCA + ablations) from a bundle, on one GPU (issue 13 §6).

Made for a bare GPU machine with no data, weights or network: the bundle (``scripts/gpu_bundle.py``) brings
them, and wheels for what the image lacks. The methods are hica's own (``src/`` of the working tree); each
cell mirrors ``hica.eval.protocol.Benchmark._run_one`` (fit, predict the test split, metrics, bootstrap CI)
on the episode the protocol built on CPU. Cells run in ``--workers`` processes sharing the GPU, longest K
first. Writes to ``--out`` (at most 6 files, what the device tool brings back): ``summary.json`` (wall time
from the start of this command, set-up included, seconds per episode, device), ``runs.csv`` (per episode
metrics and timings), ``records.jsonl.gz`` (full records with probabilities) and, where the committed CPU
results are in the tree, ``comparison.md`` / ``comparison.json`` (``scripts/gpu_grid_compare.py``).

    python3 scripts/gpu_grid.py --bundle build/gpu_bundle --out $OUT
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "scripts")]
import gpu_bundle_io as gb  # noqa: E402  (standard library only: nothing imports torch before the wheels)

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
_STATE: dict[str, Any] = {}  # per worker process: device, precision, dataset runs


class DatasetRun:
    """One dataset part loaded in a worker: encoder on the device, images, episodes, descriptors."""

    def __init__(self, part: Path, device: Any) -> None:
        import numpy as np
        import torch

        from hica.data.descriptors import load_descriptors

        self.grid = json.loads((part / "grid.json").read_text(encoding="utf-8"))
        self.enc = gb.build_encoder(part).to(device).eval()
        self.pack = gb.ImagePack(part)
        eps = json.loads((part / "episodes.json").read_text(encoding="utf-8"))
        self.episodes = {(e["k"], e["seed"]): e for e in eps["episodes"]}
        packed = np.load(part / "masks.npz")
        side = int(packed["side"])
        self.masks = {
            i: torch.from_numpy(np.unpackbits(packed["packed"][n], axis=-1, count=side).astype(bool))
            for n, i in enumerate(eps["mask_ids"])
        }
        self.has_mask = dict(zip(eps["mask_ids"], eps["has_mask"], strict=True))
        self.desc = load_descriptors(self.grid["descriptors"])
        src = Path(self.desc.source)
        if src.is_file() and gb.sha256(src) != self.grid.get("descriptors_sha256"):
            print(
                f"warning: {src} changed since the bundle was built (a sentence may be missing)", flush=True
            )
        self._pre: dict[str, torch.Tensor] = {}
        self.test = self.images(self.grid["test_ids"])
        self.test_labels = np.array(self.grid["test_labels"])

    def images(self, ids: list[str]) -> Any:
        import torch

        for i in ids:
            if i not in self._pre:
                self._pre[i] = self.enc.preprocess(self.pack.pil(i))
        return torch.stack([self._pre[i] for i in ids])

    def data(self, cls: Any, k: int, seed: int) -> Any:
        """The episode as ``ImageFewShotData``, as ``hica.eval.episode_data.image_episode`` built it."""
        import torch

        from hica.methods.base import ImageFewShotData

        e = self.episodes[(k, seed)]
        sup = self.images(e["support"])
        d = ImageFewShotData(
            support=sup,
            support_labels=torch.tensor(e["support_labels"]),
            val=self.images(e["val"]) if e["val"] else sup[:0],
            val_labels=torch.tensor(e["val_labels"], dtype=torch.long),
            num_classes=len(self.grid["classes"]),
            seed=seed,
            classes=list(self.grid["classes"]),
            descriptors=self.desc if getattr(cls, "uses_text", False) else None,
            **e["extra"],
        )
        if e["masks"] and getattr(cls, "uses_masks", False):
            d.support_masks = torch.stack([self.masks[i] for i in e["support"]])
            d.support_has_mask = torch.tensor([self.has_mask[i] for i in e["support"]])
            d.support_attributes = e["support_attributes"]
        return d

    def run(self, method: str, k: int, seed: int, device: Any, precision: str) -> dict[str, Any]:
        import numpy as np
        import torch

        from hica.eval.metrics import bootstrap_ci, classification_metrics, confusion
        from hica.methods.base import method_registry

        cls = method_registry()[method]
        t0 = time.perf_counter()
        m = cls(**self.grid["method_args"].get(method, {})).fit(
            self.enc, self.data(cls, k, seed), device, precision
        )
        t_fit = time.perf_counter() - t0
        probs = m.predict_proba(self.test).float().cpu().numpy()
        labels = self.test_labels
        rec = {
            "dataset": self.grid["dataset"],
            "classes": self.grid["classes"],
            "method": method,
            "k": k,
            "seed": seed,
            "metrics": classification_metrics(labels, probs),
            "ci95": bootstrap_ci(labels, probs, n_boot=self.grid["bootstrap"], seed=seed),
            "confusion": confusion(labels, probs),
            "selected": m.selected,
            "fit_seconds": round(t_fit, 3),
            "total_seconds": round(time.perf_counter() - t0, 3),
            "worker": os.getpid(),
            "test_ids": self.grid["test_ids"],
            "probs": np.round(probs, 6).tolist(),
            "seeded_heads_exact": getattr(self.enc, "seeded_exact", None),
        }
        if device.type == "cuda":
            rec["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / (1 << 20))
        return rec


def _init(parts: dict[str, str], device: str) -> None:
    import torch

    from hica.runtime import resolve_device

    _STATE.update(device=resolve_device(device), parts=parts, runs={})
    torch.set_num_threads(1)


def _cell(cell: tuple[str, str, int, int]) -> dict[str, Any]:
    from hica.runtime import resolve_precision

    key, method, k, seed = cell
    runs, device = _STATE["runs"], _STATE["device"]
    if key not in runs:
        runs[key] = DatasetRun(Path(_STATE["parts"][key]), device)
    run = runs[key]
    return run.run(method, k, seed, device, resolve_precision(run.grid["precision"], device))


def run_cells(cells: list[tuple], parts: dict[str, str], device: str, workers: int) -> list[dict[str, Any]]:
    """Every cell's record, in ``workers`` spawned processes (1: in this process); progress on stdout."""
    out: list[dict[str, Any]] = []

    def done(rec: dict[str, Any]) -> None:
        out.append(rec)
        m = rec["metrics"]
        print(
            f"[{len(out)}/{len(cells)}] {rec['dataset']} {rec['method']} K={rec['k']} s={rec['seed']} "
            f"acc={m['accuracy']:.3f} auc={m['auc']:.3f} {rec['total_seconds']:.1f}s "
            f"t={time.perf_counter() - T_START:.0f}s",
            flush=True,
        )

    if workers <= 1:
        _init(parts, device)
        for c in cells:
            done(_cell(c))
        return out
    import multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(parts, device)) as pool:
        for rec in pool.imap_unordered(_cell, cells, chunksize=1):
            done(rec)
    return out


def write_outputs(out: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records.sort(key=lambda r: (r["dataset"], r["method"], r["k"], r["seed"]))
    with gzip.open(out / "records.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with (out / "runs.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "method", "k", "seed", *METRICS, "alpha", "fit_seconds", "total_seconds"])
        for r in records:
            w.writerow(
                [
                    r["dataset"],
                    r["method"],
                    r["k"],
                    r["seed"],
                    *(round(r["metrics"][m], 6) for m in METRICS),
                    r["selected"].get("alpha"),
                    r["fit_seconds"],
                    r["total_seconds"],
                ]
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "build" / "gpu_bundle")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--datasets", nargs="*", help="dataset parts to run (default: every one in the bundle)")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes sharing the GPU (0: cores - 2, at most 12; 1 on CPU)",
    )
    ap.add_argument("--methods", nargs="*", help="only these methods")
    ap.add_argument("--shots", nargs="*", type=int, help="only these K")
    ap.add_argument("--seeds", nargs="*", type=int, help="only these seeds")
    ap.add_argument("--limit", type=int, default=0, help="run only the first N cells (a timing probe)")
    ap.add_argument("--no-compare", dest="compare", action="store_false", help="skip comparison.md")
    opts = ap.parse_args(argv)
    found = gb.find_parts(opts.bundle)
    mans = {n: gb.verify_part(p) for n, p in found.items()}
    t_verify = time.perf_counter() - T_START
    wheels = gb.ensure_wheels(found.get(gb.COMMON), Path(tempfile.gettempdir()) / "hica_gpu_site")
    import torch  # only now: carried wheels (typing_extensions) must come first

    from hica.runtime import resolve_device

    device = resolve_device(opts.device)
    keys = list(opts.datasets or [n for n in found if n != gb.COMMON])
    missing = [k for k in keys if k not in found]
    if missing or not keys:
        raise SystemExit(
            f"dataset parts {missing or '(none)'} not in {opts.bundle}: carry them (results/gpu)"
        )
    grids = {k: json.loads((found[k] / "grid.json").read_text(encoding="utf-8")) for k in keys}
    cells = [
        (k, m, shot, s)
        for k, g in grids.items()
        for m in g["methods"]
        for shot in g["shots"]
        for s in g["seeds"]
    ]
    for i, want in ((1, opts.methods), (2, opts.shots), (3, opts.seeds)):
        cells = [c for c in cells if not want or c[i] in want]
    cells.sort(key=lambda c: -c[2])  # longest first
    if opts.limit:
        cells = cells[: opts.limit]
    auto = min(len(cells), max(1, min(12, (os.cpu_count() or 2) - 2))) if device.type == "cuda" else 1
    workers = opts.workers or auto  # an explicit count is kept (the CPU smoke test spawns 2)
    t_setup = time.perf_counter() - T_START
    print(
        f"bundle verified in {t_verify:.1f}s; wheels unpacked: {wheels or 'none'}; {len(cells)} cells on "
        f"{device} with {workers} worker(s)",
        flush=True,
    )
    t0 = time.perf_counter()
    records = run_cells(cells, {k: str(found[k]) for k in keys}, str(device), workers)
    t_grid = time.perf_counter() - t0
    ep_seconds = [r["total_seconds"] for r in records]
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "workers": workers,
        "episodes": len(records),
        "setup_seconds": round(t_setup, 2),
        "grid_seconds": round(t_grid, 2),
        "wall_seconds": round(time.perf_counter() - T_START, 2),
        "seconds_per_episode": round((time.perf_counter() - T_START) / max(1, len(records)), 3),
        "mean_episode_seconds": round(sum(ep_seconds) / max(1, len(ep_seconds)), 3),
        "seeded_heads_exact": sorted({str(r.get("seeded_heads_exact")) for r in records}),
        "wheels_unpacked": wheels,
        "peak_gpu_mib": max((r.get("peak_gpu_mib", 0) for r in records), default=0),
        "bundle": {
            n: {k: m.get(k) for k in ("weights", "codec", "images", "git_commit", "git_dirty")}
            for n, m in mans.items()
            if n in keys
        },
    }
    write_outputs(opts.out, records, summary)
    if opts.compare:
        import gpu_grid_compare

        cpu = [ROOT / g["cpu_results"] for g in grids.values() if (ROOT / g["cpu_results"]).is_dir()]
        if cpu:
            gpu_grid_compare.compare(opts.out, cpu, opts.out)
    summary["wall_seconds"] = round(time.perf_counter() - T_START, 2)
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "bundle"}, indent=1), flush=True)
    return summary


if __name__ == "__main__":
    main()
