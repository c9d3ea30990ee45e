"""`hica report`: Markdown + self-contained HTML with PNG figures from benchmark run directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from needs import missing_data
from PIL import Image
from typer.testing import CliRunner

from hica.cli import app
from hica.errors import HicaError
from hica.report.build import build_report, parse_drops, parse_order, parse_renames
from hica.report.html import markdown_to_html
from hica.report.tables import summarize

REPO = Path(__file__).resolve().parents[1]
KS = (2, 8)
SEEDS = (1, 2)


def _record(method: str, k: int, seed: int, acc: float) -> dict:
    n = 20
    right = round(acc * n)
    return {
        "dataset": "toy",
        "classes": ["benign", "malignant"],
        "method": method,
        "k": k,
        "seed": seed,
        "metrics": {
            "accuracy": right / n,
            "balanced_accuracy": acc,
            "macro_f1": acc,
            "auc": min(1.0, acc + 0.1),
        },
        "ci95": {},
        "confusion": [[right // 2, 10 - right // 2], [n // 2 - (right - right // 2), right - right // 2]],
        "selected": {},
        "fit_seconds": 0.1,
        "total_seconds": 0.2,
        "episode": None,
        "config_hash": "abc",
    }


def make_run(root: Path, methods: tuple[str, ...] = ("prototype", "hica"), name: str = "toy-bench") -> Path:
    """A tiny run dir: 2 methods × 2 K × 2 seeds on a 2-class dataset, plus a zero-shot run."""
    records = [_record("zeroshot", 0, 0, 0.5)]
    for i, m in enumerate(methods):
        for k in KS:
            for s in SEEDS:
                records.append(_record(m, k, s, 0.55 + 0.1 * i + 0.02 * k / 2 + 0.05 * s))
    root.mkdir(parents=True, exist_ok=True)
    metrics = {
        "name": name,
        "methods": ["zeroshot", *methods],
        "summary": summarize(records),
        "runs": records,
        "timings": {"total": 12.5},
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    env = {"cpu": "TestCPU", "cpu_cores": 2, "torch_threads": 2, "device": "cpu", "precision": "fp32"}
    (root / "environment.json").write_text(json.dumps({**env, "torch": "x", "python": "3.11"}))
    (root / "config.resolved.yaml").write_text(f"name: {name}\n")
    return root


def _check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200


def test_report_files_content_and_html(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "report"
    res = build_report([run], out)
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert res["markdown"] == out / "report.md" and res["html"] == out / "report.html"
    # few-shot curves, ablation bars, confusion matrix
    names = sorted(p.name for p in res["figures"])
    assert names == ["ablation_toy.png", "confusion_toy_hica.png", "fewshot_toy.png"]
    for p in res["figures"]:
        assert p.is_file()
        _check_png(p)
        assert f"]({p.relative_to(out).as_posix()})" in md
    for method in ("zeroshot", "prototype", "hica"):
        assert f"| {method} |" in md
    for k in KS:
        assert f"K={k}" in md
    assert "toy-bench" in md and "TestCPU" in md and str(run) in md
    assert f"hica benchmark --config {run / 'config.resolved.yaml'} --out {run}" in md
    assert res["confusion_methods"] == {"toy": "hica"}  # default: hica when present
    # self-contained: every image embedded, nothing fetched from elsewhere
    assert page.count('src="data:image/png;base64,') == 3
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert page.count("<table>") == 3  # runs + accuracy + AUC
    assert "<figcaption>" in page and "<strong>" in page


def test_rebuild_removes_figures_the_new_report_does_not_show(tmp_path: Path) -> None:
    """A report rebuilt into the same folder leaves no figure of the earlier build behind."""
    run = make_run(tmp_path / "run")
    out = tmp_path / "report"
    first = build_report([run], out)
    old = out / "figures" / "confusion_toy_hica.png"
    assert old in first["figures"] and first["removed"] == []
    mine = out / "figures" / "my_sketch.png"  # a file the reports never showed: not theirs to delete
    mine.write_bytes(old.read_bytes())
    renamed = build_report([run], out, parse_renames([f"{run}:hica=hica_v2"]))  # its matrix is renamed
    assert renamed["removed"] == [old] and not old.exists() and mine.is_file()
    left = sorted(p.name for p in (out / "figures").iterdir())
    assert left == sorted([mine.name, *(p.name for p in renamed["figures"])])
    assert "confusion_toy_hica_v2.png" in {p.name for p in renamed["figures"]}


def test_rename_order_and_duplicates(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", name="full")
    b = make_run(tmp_path / "b", methods=("hica",), name="no-stage1")
    # the same method on the same dataset in two runs is ambiguous
    with pytest.raises(HicaError, match="--rename"):
        build_report([a, b], tmp_path / "r0")
    renames = parse_renames([f"{b}:hica=hica_no_stage1", f"{b}:zeroshot=zeroshot_b"])
    res = build_report([a, b], tmp_path / "r1", renames, order=["hica_no_stage1", "prototype"])
    md = (tmp_path / "r1" / "report.md").read_text()
    assert res["methods"][:2] == ["hica_no_stage1", "prototype"]
    assert "| hica_no_stage1 |" in md and "`hica` → `hica_no_stage1`" in md
    assert md.index("| hica_no_stage1 |") < md.index("| prototype |") < md.index("| hica |")
    assert res["confusion_methods"] == {"toy": "hica_no_stage1"}  # first of --order
    assert f"--rename '{b}:hica=hica_no_stage1'" in md
    for p in res["figures"]:
        _check_png(p)


def test_drop_leaves_one_runs_method_out(tmp_path: Path) -> None:
    """Two runs holding the same method for the same episodes: ``--drop`` keeps one; the report says so and
    its reproduce command carries the option."""
    a = make_run(tmp_path / "a", name="full")
    b = make_run(tmp_path / "b", methods=("hica", "prototype"), name="more")
    drops = parse_drops([f"{b}:prototype", f"{b}:zeroshot"])
    res = build_report([a, b], tmp_path / "r", parse_renames([f"{b}:hica=hica_b"]), drops=drops)
    md = (tmp_path / "r" / "report.md").read_text()
    assert res["methods"].count("prototype") == 1 and "hica_b" in res["methods"]
    assert f"- `{b}`: `prototype`" in md and f"--drop '{b}:prototype'" in md
    with pytest.raises(HicaError, match="no method 'nope'"):
        build_report([a], tmp_path / "r2", drops=parse_drops([f"{a}:nope"]))
    for bad in ("no-colon", ":hica", "dir:"):
        with pytest.raises(HicaError, match="--drop"):
            parse_drops([bad])
    cli = ["report", str(a), str(b), "--drop", f"{b}:prototype", "--drop", f"{b}:zeroshot", "--rename"]
    res = CliRunner().invoke(app, [*cli, f"{b}:hica=hica_b", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, (res.output, res.exception)


@pytest.mark.parametrize(
    "bad", ["no-equals", "dir=new", ":hica=x", "dir:hica=", "dir:hica=a|b"], ids=lambda s: s or "empty"
)
def test_bad_rename_syntax(bad: str) -> None:
    with pytest.raises(HicaError, match="--rename"):
        parse_renames([bad])


def test_rename_errors_name_the_problem(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    with pytest.raises(HicaError, match="not one of the RUN_DIRs"):
        build_report([run], tmp_path / "r", parse_renames([f"{tmp_path}/other:hica=x"]))
    with pytest.raises(HicaError, match="no method 'nope'"):
        build_report([run], tmp_path / "r", parse_renames([f"{run}:nope=x"]))
    with pytest.raises(HicaError, match="--order names unknown"):
        build_report([run], tmp_path / "r", order=parse_order("hica,typo"))


def test_missing_metrics_json(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(HicaError, match=r"empty.*hica benchmark"):
        build_report([tmp_path / "empty"], tmp_path / "r")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert isinstance(res.exception, HicaError) and "hica benchmark" in str(res.exception)


def test_cli_report(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        ["report", str(run), "--out", str(out), "--rename", f"{run}:hica=hica_v2", "--order", "prototype"],
    )
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "| hica_v2 |" in md and "| hica |" not in md
    assert (out / "figures" / "confusion_toy_prototype.png").is_file()
    bad = CliRunner().invoke(app, ["report", str(run), "--rename", "oops"])
    assert isinstance(bad.exception, HicaError)


def test_html_renderer_escapes_and_structures() -> None:
    md = "# T <x>\n\npara `a<b>` **bold**\n\n| a | b |\n|---|---:|\n| 1 | 2 |\n\n- item\n\n```\nx < y\n```\n"
    page = markdown_to_html(md + "![alt](f.png)\n*cap*\n", "T", lambda src: "data:image/png;base64,AAA")
    assert "<h1>T &lt;x&gt;</h1>" in page and "<code>a&lt;b&gt;</code>" in page
    assert "<strong>bold</strong>" in page and '<td class="r">2</td>' in page
    assert "<li>item</li>" in page and "<pre><code>x &lt; y</code></pre>" in page
    assert re.search(r'<figure><img src="data:image/png;base64,AAA" alt="alt"><figcaption>cap', page)


def test_report_on_committed_baselines(tmp_path: Path) -> None:
    run = REPO / "results" / "baselines"
    if not (run / "metrics.json").is_file():
        missing_data("results/baselines/metrics.json not committed")
    res = build_report([run], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    data = json.loads((run / "metrics.json").read_text())
    for m in data["methods"]:
        assert f"| {m} |" in md
    assert len(res["figures"]) == 3 * len(res["datasets"])
    for p in res["figures"]:
        _check_png(p)
    assert "http" not in (tmp_path / "r" / "report.html").read_text()


def _robustness_dir(root: Path) -> Path:
    """A robustness output built with the analysis's own summary/markdown code from synthetic records."""
    from hica.analysis.robustness_config import RobustnessConfig
    from hica.report.robustness import markdown, summarize

    cfg = RobustnessConfig(
        name="toy-robust",
        dataset="toy",
        k=4,
        seeds=[1, 2],
        descriptor_noise={"methods": ["hica", "zeroshot"], "p": [0, 0.5]},
        corruptions={"methods": ["hica", "prototype"], "names": ["jpeg", "contrast"], "severities": [1, 3]},
    )
    recs = []
    for s in (1, 2):
        for m in ("hica", "zeroshot"):
            for p in (0, 0.5):
                acc = 0.8 - 0.2 * p - (0.3 if m == "zeroshot" else 0) + 0.01 * s
                recs.append(
                    {
                        "part": "noise",
                        "method": m,
                        "seed": s,
                        "p": p,
                        "metrics": {"accuracy": acc, "auc": acc},
                    }
                )
        for m in ("hica", "prototype"):
            recs.append(
                {
                    "part": "corruption",
                    "method": m,
                    "seed": s,
                    "corruption": "clean",
                    "severity": 0,
                    "metrics": {"accuracy": 0.8},
                }
            )
            for c in ("jpeg", "contrast"):
                for sev in (1, 3):
                    recs.append(
                        {
                            "part": "corruption",
                            "method": m,
                            "seed": s,
                            "corruption": c,
                            "severity": sev,
                            "metrics": {"accuracy": 0.8 - 0.05 * sev - (0.1 if m == "prototype" else 0)},
                        }
                    )
    summary = summarize(recs, cfg)
    res = {
        "analysis": "robustness",
        "name": "toy-robust",
        "dataset": "toy",
        "k": 4,
        "seeds": [1, 2],
        "n_test": 20,
        "n_corruption_images": 20,
        "majority_accuracy": 0.5,
        "corruption_majority_accuracy": 0.5,
        "summary": summary,
        "wall_seconds": 3.0,
        "records": recs,
    }
    root.mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps(res))
    (root / "results.md").write_text(markdown(res, cfg))
    assert summary["corruptions"]["hica"]["relative"]["mean"] == pytest.approx((0.75 + 0.65) / 2 / 0.8)
    assert summary["corruptions"]["prototype"]["per_severity"]["3"]["mean"] == pytest.approx(0.55)
    return root


def test_report_with_analyses(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    rob = _robustness_dir(tmp_path / "rob")
    loc = tmp_path / "loc"
    loc.mkdir()
    (loc / "metrics.json").write_text(
        json.dumps({"analysis": "localization", "name": "toy-loc", "dataset": "toy"})
    )
    (loc / "table.md").write_text(
        "# Localization\n\n## Scores\n\n| method | hit |\n|---|---|\n| hica | 0.9 |\n"
    )
    Image.new("RGB", (640, 320), "white").save(loc / "gallery.png")
    out = tmp_path / "report"
    res = build_report([run, rob, loc], out)
    md = (out / "report.md").read_text()
    names = sorted(p.name for p in res["figures"])
    assert "robustness_toy-robust_noise.png" in names and "robustness_toy-robust_corruptions.png" in names
    assert "localization_toy-loc_gallery.png" in names
    for p in res["figures"]:
        _check_png(p)
        assert f"]({p.relative_to(out).as_posix()})" in md
    assert "## Robustness: toy" in md and "### Noisy descriptors" in md and "### Image corruptions" in md
    assert "## Interpretability: heatmaps against lesion masks: toy" in md and "### Scores" in md
    assert "| hica | 0.9 |" in md and "# Localization" not in md  # the analysis's H1 is dropped
    assert f"hica analyze robustness --config {rob / 'config.resolved.yaml'} --out {rob}" in md
    assert f"hica report {run} {rob} {loc} --out {out}" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(res["figures"])
    # an analysis alone is a valid report too
    alone = build_report([rob], tmp_path / "alone")
    assert len(alone["figures"]) == 2


def test_compressed_predictions_are_read_and_replaced(tmp_path: Path) -> None:
    """predictions.csv.gz (how committed runs store it) reads like the plain file; the same input packs to the
    same bytes; a new run's plain predictions.csv removes a stale .gz; a missing table names itself."""
    import gzip
    import time

    from hica.io import gzip_file, open_text, write_text_replacing_gz

    plain = tmp_path / "predictions.csv"
    plain.write_text("dataset,method\nbusi,hica\n")
    first = gzip_file(plain).read_bytes()
    time.sleep(1.1)  # a time stamp in the header would change the bytes
    assert gzip_file(plain).read_bytes() == first and gzip.decompress(first) == plain.read_bytes()
    plain.unlink()
    with open_text(plain) as f:
        assert f.read() == "dataset,method\nbusi,hica\n"
    write_text_replacing_gz(plain, "dataset,method\nbusi,prototype\n")
    assert not (tmp_path / "predictions.csv.gz").exists()
    with open_text(plain) as f:
        assert "prototype" in f.read()
    with pytest.raises(HicaError, match=r"nope\.csv not found \(nor nope\.csv\.gz\)"):
        open_text(tmp_path / "nope.csv")


def test_committed_runs_keep_predictions_compressed_only() -> None:
    """Every committed predictions file is the .gz (the plain ones are gitignored: tree size)."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in files if f.endswith("predictions.csv")]
    assert len([f for f in files if f.endswith("predictions.csv.gz")]) >= 30
