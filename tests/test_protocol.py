"""End to end: the benchmark protocol on a tiny real BUSI subset with the real default encoder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from needs import missing_data

from hica.config import validate_config
from hica.jobs.benchmark import run_benchmark

CLASSES = ("benign", "malignant", "normal")
PER_SPLIT = {"train": 3, "val": 2, "test": 3}


@pytest.fixture(scope="module")
def tiny_busi_folder(tmp_path_factory) -> Path:
    from conftest import find_data_root

    src = find_data_root() / "busi" / "Dataset_BUSI_with_GT"
    if not src.is_dir():
        missing_data(f"real data not found at {src}")
    dst = tmp_path_factory.mktemp("busi_folder")
    for cls in CLASSES:
        files = sorted(p for p in (src / cls).glob("*).png"))[: sum(PER_SPLIT.values())]
        i = 0
        for split, n in PER_SPLIT.items():
            (dst / split / cls).mkdir(parents=True)
            for f in files[i : i + n]:
                shutil.copy2(f, dst / split / cls / f.name)
            i += n
    return dst


def _config(folder: Path, cache: Path, methods: list[str]) -> dict:
    return {
        "name": "tiny",
        "datasets": [
            {"path": str(folder), "format": "imagefolder", "descriptors": "busi", "name": "tiny-busi"}
        ],
        "shots": [1, 2],
        "seeds": [1, 2],
        "methods": methods,
        "method_args": {"finetune": {"steps": 2, "eval_every": 1, "batch_size": 4}}
        if "finetune" in methods
        else {},
        "bootstrap": 50,
        "cache_dir": str(cache),
        "precision": "fp32",
        "device": "cpu",
    }


ALL_METHODS = [
    "zeroshot",
    "prototype",
    "knn",
    "linear_probe",
    "tip_adapter",
    "tip_adapter_f",
    "clap",
    "finetune",
]


@pytest.fixture(scope="module")
def finished_run(tiny_busi_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    cfg = validate_config(_config(tiny_busi_folder, cache, ALL_METHODS))
    result = run_benchmark(cfg, out, progress=False)
    return cfg, out, cache, result


def test_outputs_written(finished_run) -> None:
    cfg, out, _, result = finished_run
    for name in ("results.md", "metrics.json", "predictions.csv", "config.resolved.yaml", "environment.json"):
        assert (out / name).is_file(), name
    env = json.loads((out / "environment.json").read_text())
    assert len(env["git_commit"]) == 40 and isinstance(env["git_clean"], bool)  # the code that made the run
    assert env["fit_threads"] >= 1
    # zero-shot once; every other method for each K × seed
    n_runs = 1 + (len(ALL_METHODS) - 1) * 2 * 2
    assert len(result["runs"]) == n_runs
    assert len(list((out / "episodes").glob("*.json"))) == 4
    metrics = json.loads((out / "metrics.json").read_text())
    for run in metrics["runs"]:
        for v in run["metrics"].values():
            assert 0.0 <= v <= 1.0 or v != v
        lo, hi = run["ci95"]["accuracy"]
        assert lo <= run["metrics"]["accuracy"] <= hi
        assert sum(map(sum, run["confusion"])) == 9  # 3 test images per class
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_runs * 9
    assert abs(sum(float(rows[0][f"p{i}"]) for i in range(3)) - 1) < 1e-4
    md = (out / "results.md").read_text()
    assert "| linear_probe |" in md and "K=2" in md and "chance level" in md


def test_views_only_when_a_method_asks(finished_run) -> None:
    """Augmented views are made only for methods that ask (``Method.views_needed``), and the view seed is in
    the config hash only then (configs without such methods keep their hash)."""
    from hica.eval.protocol import Benchmark

    cfg, out, cache, result = finished_run
    bench = Benchmark(cfg, out, progress=False)
    asks = any(bench.views_needed[m] > 0 for m in cfg.methods if not bench.registry[m].zero_shot)
    assert ("view_cache_misses" in result["timings"]) == asks == (cache / "views").is_dir()
    assert ("view_seed" in bench.scope) == any(bench.views_needed.values())


def test_episodes_never_touch_test(finished_run) -> None:
    _, out, _, result = finished_run
    for run in result["runs"]:
        ep = run["episode"]
        if ep is None:
            continue
        assert all(i.startswith("train/") for i in ep["support"])
        assert all(i.startswith("val/") for i in ep["val"])


def test_resume_reuses_parts_and_recomputes_missing(finished_run, tiny_busi_folder) -> None:
    cfg, out, cache, first = finished_run
    parts = sorted((out / "parts").glob("*.json"))
    victim = next(p for p in parts if "__linear_probe__K2__s2" in p.name)
    victim.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in parts if p != victim}
    second = run_benchmark(cfg, out, progress=False)
    assert victim.is_file()
    after = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.json") if p != victim}
    assert after == before  # untouched parts were reused, not rewritten
    assert second["timings"]["cache_misses"] == 0  # all features came from the cache
    a = {(r["method"], r["k"], r["seed"]): r["metrics"] for r in first["runs"]}
    b = {(r["method"], r["k"], r["seed"]): r["metrics"] for r in second["runs"]}
    assert a == b  # the recomputed run is deterministic


def test_a_grown_grid_reuses_every_part_it_had(finished_run, tiny_busi_folder, tmp_path) -> None:
    """More seeds, fewer methods and a new name: the parts the first grid made are reused as they are, only
    the new cells are computed, and a reused part scores what a fresh run of it scores."""
    cfg, out, cache, first = finished_run
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    methods = ["prototype", "knn", "clap"]
    raw = {**_config(tiny_busi_folder, cache, methods), "name": "tiny-grown", "seeds": [1, 2, 3]}
    second = run_benchmark(validate_config(raw), grown, progress=False)
    grid = second["timings"]["grid"]
    assert (grid["parts_resumed"], grid["parts_computed"]) == (len(methods) * 2 * 2, len(methods) * 2)
    a = {(r["method"], r["k"], r["seed"]): r["metrics"] for r in first["runs"]}
    b = {(r["method"], r["k"], r["seed"]): r["metrics"] for r in second["runs"]}
    assert {key: b[key] for key in b if key[2] != 3} == {key: a[key] for key in b if key[2] != 3}
    fresh = run_benchmark(validate_config(raw), tmp_path / "fresh", progress=False)
    assert {(r["method"], r["k"], r["seed"]): r["metrics"] for r in fresh["runs"]} == b
    # a changed setting of one method recomputes that method's parts only
    raw["method_args"] = {"knn": {"ks": [1, 3]}}
    third = run_benchmark(validate_config(raw), grown, progress=False)["timings"]["grid"]
    assert (third["parts_resumed"], third["parts_computed"]) == (2 * 2 * 3, 2 * 3)


def test_parts_made_before_part_hashes_are_reused_by_their_config(finished_run, tmp_path) -> None:
    """A part stamped with the whole-run hash (how parts were hashed before) is reused by the unchanged
    config; stamped with any other hash it is recomputed."""
    from hica.eval.grid import config_hash
    from hica.eval.protocol import Benchmark

    cfg, out, cache, first = finished_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    bench = Benchmark(cfg, old, progress=False)
    legacy = config_hash(bench.scope, bench.encoder().fingerprint())
    parts = sorted((old / "parts").glob("*__prototype__*.json"))
    for i, p in enumerate(parts):
        rec = json.loads(p.read_text())
        rec["config_hash"] = legacy if i else "0123456789ab"
        p.write_text(json.dumps(rec))
    grid = run_benchmark(cfg, old, progress=False)["timings"]["grid"]
    assert (grid["parts_computed"], grid["parts_resumed"]) == (1, len(first["runs"]) - 1)


def test_a_run_made_before_part_hashes_can_grow(finished_run, tiny_busi_folder, tmp_path) -> None:
    """Parts stamped with the whole-run hash of the config the folder holds are reused by a grown config
    when their own part (dataset, method settings) is unchanged; a method whose settings changed is not."""
    from hica.eval.grid import config_hash
    from hica.eval.protocol import Benchmark

    cfg, out, cache, first = finished_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    bench = Benchmark(cfg, old, progress=False)
    legacy = config_hash(bench.scope, bench.encoder().fingerprint())
    for p in (old / "parts").glob("*.json"):
        p.write_text(json.dumps({**json.loads(p.read_text()), "config_hash": legacy}))
    raw = {**_config(tiny_busi_folder, cache, ["prototype", "knn"]), "seeds": [1, 2, 3]}
    raw["method_args"] = {"knn": {"ks": [1, 3]}}  # knn's part changes, prototype's does not
    grid = run_benchmark(validate_config(raw), old, progress=False)["timings"]["grid"]
    assert (grid["parts_resumed"], grid["parts_computed"]) == (2 * 2, 2 * 1 + 2 * 3)
    # the reused parts now carry their own hash: a later run needs no earlier config to find them
    (old / "config.resolved.yaml").unlink()
    again = run_benchmark(validate_config(raw), old, progress=False)["timings"]["grid"]
    assert (again["parts_resumed"], again["parts_computed"]) == (2 * 3 * 2, 0)


def test_text_methods_need_descriptors(tiny_busi_folder, tmp_path) -> None:
    from hica.errors import HicaError

    raw = _config(tiny_busi_folder, tmp_path / "c", ["zeroshot"])
    raw["datasets"][0].pop("descriptors")
    with pytest.raises(HicaError, match="descriptors"):
        run_benchmark(validate_config(raw), tmp_path / "o", progress=False)
