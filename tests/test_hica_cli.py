"""`hica finetune` → `hica predict` end to end on a tiny real BUSI episode, and their bad-input errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hica.cli import app
from hica.errors import HicaError

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj))
    return path


def _finetune(tmp: Path, data_root: Path, **method_args) -> Path:
    """`hica finetune` on a tiny real BUSI episode (K = 1, 64 px, CPU fp32) into ``tmp/run``."""
    cfg = _write(
        tmp / "s2.yaml",
        {
            "encoder": {"name": "default", "args": {"image_size": 64}},
            "dataset": "busi",
            "k": 1,
            "seed": 1,
            "method_args": {"steps": 2, "head_steps": 3, "batch_size": 3, **method_args},
            "evaluate_test": False,
            "device": "cpu",
            "precision": "fp32",
        },
    )
    args = ["finetune", "--config", str(cfg), "--out", str(tmp / "run"), "--data-root", str(data_root)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return tmp / "run"


@pytest.fixture(scope="module")
def finetuned(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _finetune(tmp_path_factory.mktemp("stage2"), data_root)


def test_finetune_writes_model_and_summary(finetuned: Path) -> None:
    import json

    model = finetuned / "model"
    for f in ("config.json", "encoder.safetensors", "classifier.safetensors"):
        assert (model / f).is_file()
    meta = json.loads((model / "config.json").read_text())["meta"]
    assert meta["classifier"]["classes"] == ["benign", "malignant", "normal"]
    assert meta["classifier"]["roi_source"] == "lesion masks (support set)"
    assert meta["classifier"]["tta"] == "none"
    summary = json.loads((finetuned / "summary.json").read_text())
    assert summary["k"] == 1 and "test" not in summary
    assert (finetuned / "episode.json").is_file() and (finetuned / "train" / "log.csv").is_file()


def test_predict_writes_probabilities(finetuned: Path, data_root: Path, tmp_path: Path) -> None:
    folder = data_root / "busi" / "Dataset_BUSI_with_GT" / "malignant"
    imgs = sorted(p for p in folder.glob("*.png") if "_mask" not in p.name)[:3]
    out = tmp_path / "pred.csv"
    args = ["predict", *map(str, imgs), "--checkpoint", str(finetuned / "model"), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, (res.output, res.exception)
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [str(p) for p in imgs]
    for r in rows:
        p = [float(r[f"p_{c}"]) for c in ("benign", "malignant", "normal")]
        assert abs(sum(p) - 1) < 1e-4
        assert r["predicted"] == ("benign", "malignant", "normal")[p.index(max(p))]

    # Zero-shot on another class set from text only.
    res = CliRunner().invoke(
        app, [*args, "--zero-shot", "--descriptors", "chest_xray", "--device", "cpu", "--precision", "fp32"]
    )
    assert res.exit_code == 0, (res.output, res.exception)
    assert next(csv.reader(out.open())) == ["file", "predicted", "p_normal", "p_pneumonia"]


def test_predict_bad_inputs(finetuned: Path, tmp_path: Path) -> None:
    img = next((finetuned.parent).rglob("*.yaml"))  # any existing file; errors come first
    base = ["predict", str(img), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]
    # Another class set without --zero-shot.
    res = CliRunner().invoke(
        app, [*base, "--checkpoint", str(finetuned / "model"), "--descriptors", "chest_xray"]
    )
    assert isinstance(res.exception, HicaError) and "trained for classes" in str(res.exception)
    # --zero-shot without descriptors.
    res = CliRunner().invoke(app, [*base, "--checkpoint", str(finetuned / "model"), "--zero-shot"])
    assert isinstance(res.exception, HicaError) and "--descriptors" in str(res.exception)
    # Not a checkpoint folder.
    res = CliRunner().invoke(app, [*base, "--checkpoint", str(tmp_path)])
    assert isinstance(res.exception, HicaError) and "config.json" in str(res.exception)
    # Missing input.
    res = CliRunner().invoke(
        app,
        ["predict", str(tmp_path / "nope.png"), "--checkpoint", str(finetuned / "model"), "--device", "cpu"],
    )
    assert isinstance(res.exception, HicaError) and "nope.png" in str(res.exception)


def test_finetune_with_tta_exports_it_and_predict_uses_it(data_root: Path, tmp_path: Path) -> None:
    """``tta: crops`` travels in the checkpoint: `hica predict` averages the six views' embeddings (not the
    plain embedding), and a checkpoint naming an unknown kind is refused with the file named."""
    import torch

    from hica.data.sample import Sample, load_image
    from hica.model.tta import embed_with_tta
    from hica.predict import Predictor

    _finetune(tmp_path, data_root, steps=1, head_steps=2, tta="crops")
    model = tmp_path / "run" / "model"
    assert json.loads((model / "config.json").read_text())["meta"]["classifier"]["tta"] == "crops"
    imgs = sorted((data_root / "busi" / "Dataset_BUSI_with_GT" / "benign").glob("benign (1*).png"))[:2]
    out = tmp_path / "pred.csv"
    res = CliRunner().invoke(
        app,
        [
            "predict",
            *map(str, imgs),
            "--checkpoint",
            str(model),
            "--out",
            str(out),
            "--precision",
            "fp32",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    got = torch.tensor(
        [[float(r[f"p_{c}"]) for c in ("benign", "malignant", "normal")] for r in csv.DictReader(out.open())]
    )
    pred = Predictor(model, torch.device("cpu"), "fp32")
    x = torch.stack([pred.encoder.preprocess(load_image(Sample(id=str(p), label=-1, path=p))) for p in imgs])
    for kind, same in (("crops", True), ("none", False)):
        probs = pred.probs_from_embeddings(embed_with_tta(pred.encoder, x, pred.device, "fp32", kind))
        assert torch.allclose(got, probs, atol=1e-5) is same, kind
    cfg_json = json.loads((model / "config.json").read_text())
    cfg_json["meta"]["classifier"]["tta"] = "flip"
    (model / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(HicaError, match=r"config\.json.*tta \(one of none, crops\)"):
        Predictor(model, torch.device("cpu"), "fp32")


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"k": 0}, "k"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"method": "finetune"}, "hica"),
        ({"method_args": {"lambda_local": -1}}, "lambda_local"),
        ({"method_args": {"nonsense": 1}}, "nonsense"),
    ],
)
def test_finetune_config_errors(tmp_path: Path, change: dict, expect: str) -> None:
    cfg = _write(tmp_path / "bad.yaml", {"dataset": "busi", **change})
    res = CliRunner().invoke(app, ["finetune", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, HicaError), res.output
    assert expect in str(res.exception) and "bad.yaml" in str(res.exception) or expect in str(res.exception)


def test_explain_writes_heatmap_png(finetuned: Path, data_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    img = data_root / "busi" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (1).png"
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(img),
            "--checkpoint",
            str(finetuned / "model"),
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, (res.output, res.exception)
    png = tmp_path / "malignant (1).png"
    with Image.open(png) as im:
        assert im.width > 800 and im.height > 300
    res = CliRunner().invoke(
        app, ["explain", str(tmp_path / "nope.png"), "--checkpoint", str(finetuned / "model")]
    )
    assert isinstance(res.exception, HicaError) and "nope.png" in str(res.exception)


def test_evaluate_scores_a_split_and_refuses_other_classes(
    finetuned: Path, data_root: Path, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "m.json"
    args = ["evaluate", "--checkpoint", str(finetuned / "model"), "--data-root", str(data_root)]
    res = CliRunner().invoke(app, [*args, "--dataset", "busi", "--split", "val", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads(out.read_text())
    assert m["n"] == 155 and m["split"] == "val" and 0 <= m["metrics"]["accuracy"] <= 1
    assert sum(map(sum, m["confusion"])) == 155
    res = CliRunner().invoke(app, [*args, "--dataset", "breastmnist"])
    assert isinstance(res.exception, HicaError) and "trained for classes" in str(res.exception)
    assert "--merge" in str(res.exception)
    # Merged classes: the 3-class BUSI model scored as BreastMNIST's malignant vs benign_or_normal.
    merge = ["--merge", "benign_or_normal=benign+normal"]
    res = CliRunner().invoke(app, [*args, "--dataset", "breastmnist", *merge, "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads(out.read_text())
    assert m["classes"] == ["malignant", "benign_or_normal"] and m["n"] == 156
    assert m["merged"] == {"benign_or_normal": ["benign", "normal"]} and sum(map(sum, m["confusion"])) == 156
    # ... and BUSI itself with its labels merged the same way (the full-resolution side of that comparison)
    res = CliRunner().invoke(app, [*args, "--dataset", "busi", "--split", "val", *merge, "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads(out.read_text())
    assert m["classes"] == ["benign_or_normal", "malignant"] and m["n"] == 155
    assert [sum(r) for r in m["confusion"]] == [87 + 26, 42]  # true benign + normal, true malignant
    for bad, needle in (
        ("benign_or_normal=benign+cyst", "nor the data has"),
        ("benign_or_normal=benign", "do not map onto"),
        ("oops", "NEW=CLASS+CLASS"),
    ):
        res = CliRunner().invoke(app, [*args, "--dataset", "breastmnist", "--merge", bad])
        assert isinstance(res.exception, HicaError) and needle in str(res.exception), bad


def test_merge_matrix_sums_and_reorders() -> None:
    import torch

    from hica.eval.merge import merge_matrix

    m = merge_matrix(
        ["benign", "malignant", "normal"], {"other": ["benign", "normal"]}, ["malignant", "other"], "x"
    )
    assert m.tolist() == [[0, 1], [1, 0], [0, 1]]
    probs = torch.tensor([[0.2, 0.5, 0.3]])
    assert (probs @ m).tolist() == [[0.5, 0.5]]
    # same classes in another order are matched by name
    assert merge_matrix(["a", "b"], {}, ["b", "a"], "x").tolist() == [[0, 1], [1, 0]]
    with pytest.raises(HicaError, match="twice"):
        merge_matrix(["a", "b", "c"], {"x": ["a", "b"], "y": ["b", "c"]}, ["x", "y"], "x")
    # a 2-class model on 3-class data whose labels are merged: the merge names only data classes
    two = merge_matrix(["malignant", "other"], {"other": ["benign", "normal"]}, ["other", "malignant"], "x",
                       ["benign", "malignant", "normal"])  # fmt: skip
    assert two.tolist() == [[0, 1], [1, 0]]


def test_analyze_efficiency_end_to_end(finetuned: Path, data_root: Path, tmp_path: Path) -> None:
    """`hica analyze efficiency` on the tiny model: parameter counts add up, the committed-run readers parse
    /usr/bin/time -v output, inference runs in a fresh process, and a missing GPU is said, not hidden."""
    import json

    from hica.analysis.efficiency import _time_v

    s2 = _write(
        tmp_path / "s2.yaml",
        {"encoder": {"name": "default", "args": {"image_size": 64}}, "dataset": "busi",
         "method_args": {"freeze_stages": 0}},
    )  # fmt: skip
    s1 = _write(
        tmp_path / "s1.yaml",
        {"dataset": "busi", "image": {"freeze_stages": 3}, "text": {"train_layers": 1}},
    )
    run = tmp_path / "timed"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"fit_seconds": 12.5, "machine": {"cpu": "x"}}))
    (run / "time.txt").write_text(
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n"
        "\tMaximum resident set size (kbytes): 2048\n"
    )
    img = next((data_root / "busi" / "Dataset_BUSI_with_GT" / "benign").glob("benign (1).png"))
    cfg = _write(
        tmp_path / "eff.yaml",
        {
            "encoder": {"name": "default", "args": {"image_size": 64}},
            "stage1_configs": [str(s1)],
            "stage2_configs": [str(s2)],
            "models": [{"name": "tiny", "checkpoint": str(finetuned / "model"), "image": str(img)}],
            "training_runs": [{"stage": "2", "name": "tiny", "path": str(run)}],
            "devices": ["cpu", "cuda"],
            "precision": "fp32",
            "warmup": 1,
            "repeats": 3,
            "batch_size": 4,
            "rounds": 1,
        },
    )
    out = tmp_path / "eff"
    res = CliRunner().invoke(app, ["analyze", "efficiency", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads((out / "metrics.json").read_text())
    p = m["parameters"]
    assert p["total"] == p["image_tower"] + p["text_tower"] and p["text_projection"] < p["text_tower"]
    st1, st2 = p["stages"]
    assert st2["trainable_image"] == p["image_tower"]  # freeze_stages 0 trains the whole image tower
    assert 0 < st1["trainable_image"] < p["image_tower"] and 0 < st1["trainable_text"] < p["text_tower"]
    assert st2["trainable_text"] == p["text_projection"]
    t = m["training"][0]
    assert t["train_seconds"] == 12.5 and t["command_wall_seconds"] == 3723.5 and t["peak_rss_mb"] == 2.0
    inf = m["inference"]
    assert [r["device"] for r in inf] == ["cpu"] or len(inf) == 2
    assert inf[0]["latency_ms_batch1_model"] > 0 and inf[0]["throughput_img_per_s"] > 0
    assert inf[0]["peak_rss_mb"] > 100
    if len(inf) == 1:
        assert m["skipped"] == ["cuda: no GPU on this machine"]
        assert "no GPU on this machine" in (out / "results.md").read_text()
    assert _time_v(tmp_path / "absent.txt") == {}
    assert m["grid"]["parts_computed"] == len(inf) and m["grid"]["parts_resumed"] == 0

    # a rerun keeps the finished measurements (GridRun parts) unless told --no-resume
    res = CliRunner().invoke(app, ["analyze", "efficiency", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    again = json.loads((out / "metrics.json").read_text())
    assert again["grid"]["parts_resumed"] == len(inf) and again["inference"] == inf

    bad = _write(tmp_path / "bad.yaml", {"models": [{"name": "x", "checkpoint": "nope", "image": str(img)}]})
    res = CliRunner().invoke(
        app, ["analyze", "efficiency", "--config", str(bad), "--out", str(tmp_path / "b")]
    )
    assert res.exit_code != 0 and isinstance(res.exception, HicaError)
    assert "models[x].checkpoint: nope not found" in str(res.exception)


def test_finetune_out_of_another_episode_is_not_resumed(
    finetuned: Path, data_root: Path, tmp_path: Path
) -> None:
    """Reusing --out with another seed refuses to resume its checkpoint; --no-resume starts again."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finetuned, out)
    cfg = yaml.safe_load((finetuned / "config.resolved.yaml").read_text())
    cfg["seed"] = 2
    path = _write(tmp_path / "s2_seed2.yaml", cfg)
    args = ["finetune", "--config", str(path), "--out", str(out), "--data-root", str(data_root)]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, HicaError), res.output
    assert "train" in str(res.exception)
    res = CliRunner().invoke(app, [*args, "--no-resume"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((out / "episode.json").read_text())["seed"] == 2
