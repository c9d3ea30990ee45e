"""One validation path for method settings and encoder arguments, and the 2-class minimum of a dataset.

Bad settings are refused by the library (method constructors, ``create_encoder``, config validation) and by
the CLI with one line and no traceback, before any work starts; valid non-default settings reach the
method; the defaults are unchanged; ``docs/settings.md`` matches the code. Nothing here fits an image model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from hica.cli import app
from hica.config import Stage2Config, load_model_config, validate_config
from hica.data.catalog import load_dataset
from hica.encoders import create_encoder
from hica.encoders.registry import check_encoder_args, list_encoders
from hica.errors import HicaError
from hica.methods import ClassText, FewShotData, method_registry
from hica.methods.settings import settings_markdown

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]

# (method, settings, expected phrase): the issue's cases first, then one per kind of check.
BAD = [
    ("clap", {"epochs": 0}, "epochs must be >= 1, got 0"),
    ("clap", {"lr": -1}, "lr must be > 0, got -1"),
    ("clap", {"epochs": "x"}, "epochs must be an integer, got 'x'"),
    ("clap", {"lrr": 0.1}, "unknown argument(s) ['lrr']; known: ['batch_size', 'epochs', 'lr', 'views']"),
    ("prototype", {"temperatures": [-1]}, "temperatures[0] must be > 0, got -1"),
    ("tip_adapter_f", {"lr": -1}, "lr must be > 0, got -1"),
    ("prototype", {"temperatures": []}, "temperatures must be a non-empty list, got []"),
    ("linear_probe", {"c_grid": []}, "c_grid must be a non-empty list"),
    ("linear_probe", {"c_grid": [10, 1]}, "c_grid must be in strictly ascending order, got [10, 1]"),
    ("prototype", {"temperatures": [0.2, 0.1]}, "strictly ascending"),
    ("knn", {"ks": [3, 3]}, "ks must be in strictly ascending order"),
    ("tip_adapter", {"betas": [2, 1]}, "betas must be in strictly ascending order"),
    ("tip_adapter", {"alphas": [-1, 1]}, "alphas[0] must be >= 0, got -1"),
    ("knn", {"ks": [1.5]}, "ks[0] must be an integer, got 1.5"),
    ("linear_probe", {"max_iter": 0}, "max_iter must be >= 1"),
    ("clap", {"epochs": True}, "epochs must be an integer, got True"),
    ("clap", {"batch_size": 0}, "batch_size must be >= 1"),
    ("tip_adapter_f", {"epochs": 0}, "epochs must be >= 1"),
    ("tip_adapter_f", {"init_beta": 0}, "init_beta must be > 0"),
    ("finetune", {"temperature": 0}, "temperature must be > 0, got 0"),
    ("finetune", {"lr": "fast"}, "lr must be a number, got 'fast'"),
    ("finetune", {"setps": 3}, "unknown argument(s) ['setps']"),
    ("hica", {"text_lr": 0}, "text_lr must be > 0"),
    ("hica", {"use_local": "maybe"}, "use_local must be true or false"),
    ("hica_no_local", {"margin": 3}, "margin must be <= 2, got 3"),
    ("hica_global_only", {"use_global": False}, "nothing to train"),
    ("hica", {"lesion_crop": 0.5, "roi": "proposed"}, "lesion_crop needs the support masks"),
    ("zeroshot", {"k": 1}, "unknown argument(s) ['k']; known: []"),
    ("linear_probe", {"fixed_c": 0}, "fixed_c must be > 0, got 0"),
    ("hica", {"fixed_alpha": 1.5}, "fixed_alpha must be <= 1, got 1.5"),
    ("hica", {"tta": "flip"}, "tta must be 'none' or 'crops', got 'flip'"),
    ("hica_fast", {"lesion_crop": -0.1}, "lesion_crop must be >= 0"),
    ("finetune", {"fixed_step": "best"}, "fixed_step must be 'last', got 'best'"),
    ("knn", {"fixed_k": 1.5}, "fixed_k must be an integer, got 1.5"),
]
ISSUE = BAD[:6]

# A non-default valid value for every registered method (a new method must be added here).
VALID: dict[str, dict] = {
    "zeroshot": {},
    "prototype": {"temperatures": [0.05, 0.5]},
    "knn": {"ks": [1, 2]},
    "linear_probe": {"c_grid": [0.5, 2], "refine_steps": 2, "max_iter": 200, "fixed_c": 3.0},
    "lp_plus_plus": {"epochs": 20, "alpha_every": 5, "alpha_grad": "accumulated"},
    "tip_adapter": {"alphas": [0, 1], "betas": [1, 4]},
    "tip_adapter_f": {"epochs": 2, "lr": 0.01, "init_beta": 2, "alphas": [1]},
    "clap": {"epochs": 7, "lr": 0.05, "batch_size": 4, "views": 3},
    "finetune": {"steps": 3, "eval_every": 1, "temperature": 0.1},
    "hica": {"steps": 2, "roi": "proposed", "lambda_cross": 0, "head_steps": 0},
    "hica_global_only": {"freeze_stages": 0, "temperature": 0.1},
    "hica_no_local": {"use_cross": False, "margin": 0.5},
    "hica_no_cross": {"min_scale": 1, "roi_top_fraction": 0.5},
    "hica_fast": {"train_size": 192, "steps": 20, "lesion_crop": 0.5, "tta": "crops"},
    "hica_class_attributes": {"cross_scale": "logit", "fixed_alpha": 0.25},
}

# The defaults as they were before the settings models (the ``hparams`` each method sees).
DEFAULTS = {
    "zeroshot": {},
    "prototype": {"temperatures": [0.2, 0.1, 0.05, 0.02, 0.01], "fixed_temperature": 0.05},
    "knn": {"ks": [1, 3, 5, 7, 9, 11, 13, 15], "fixed_k": 1},
    "linear_probe": {
        "c_grid": [1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6, 1e8],
        "refine_steps": 8,
        "max_iter": 1000,
        "fixed_c": 100.0,
    },
    "lp_plus_plus": {"epochs": 300, "alpha_every": 10, "alpha_grad": "accumulated"},
    "tip_adapter": {
        "views": 10,
        "beta_max": 50.0,
        "beta_steps": 200,
        "alpha_max": 50.0,
        "alpha_steps": 20,
        "beta_below": [0.001, 0.003, 0.01, 0.03],
        "alpha_below": [0.001, 0.003, 0.01, 0.03],
        "alpha_above": [100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0],
        "betas": None,
        "alphas": None,
        "fixed_alpha": 1.0,
        "fixed_beta": 1.0,
    },
    "clap": {"epochs": 300, "lr": 0.1, "batch_size": 256, "views": 20},
    "finetune": {
        "steps": 24,
        "batch_size": 16,
        "lr": 1e-4,
        "head_lr": 1e-3,
        "weight_decay": 1e-4,
        "eval_every": 6,
        "temperature": 0.05,
        "fixed_step": "last",
    },
}
DEFAULTS["tip_adapter_f"] = {
    **DEFAULTS["tip_adapter"],
    "epochs": 20,
    "lr": 1e-3,
    "batch_size": 256,
    "init_alpha": 1.0,
    "init_beta": 1.0,
}
HICA_DEFAULTS = {
    "steps": 30,
    "batch_size": 16,
    "lr": 1e-4,
    "text_lr": 1e-3,
    "weight_decay": 1e-4,
    "head_steps": 100,
    "head_lr": 1e-2,
    "lambda_local": 0.5,
    "lambda_cross": 0.5,
    "temperature": 0.07,
    "margin": 0.2,
    "use_global": True,
    "use_local": True,
    "use_cross": True,
    "freeze_stages": 3,
    "min_scale": 0.6,
    "train_size": None,
    "lesion_crop": 0.0,
    "tta": "none",
    "roi_top_fraction": 0.2,
    "roi": "auto",
    "attributes": "image",
    "cross_scale": "cosine",
    "attribute_logit_adjust": False,
    "fixed_alpha": 0.5,
}
DEFAULTS["hica"] = HICA_DEFAULTS
DEFAULTS["hica_fast"] = {**HICA_DEFAULTS, "steps": 15, "train_size": 160}
DEFAULTS["hica_global_only"] = {**HICA_DEFAULTS, "use_local": False, "use_cross": False}
DEFAULTS["hica_no_local"] = {**HICA_DEFAULTS, "use_local": False}
DEFAULTS["hica_no_cross"] = {**HICA_DEFAULTS, "use_cross": False}
DEFAULTS["hica_class_attributes"] = {**HICA_DEFAULTS, "attributes": "class"}


def _write(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj))
    return path


def _one_line_error(res) -> str:
    """The CliRunner result failed with a HicaError (what ``main()`` prints as one red line)."""
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, HicaError), (res.output, repr(res.exception))
    msg = str(res.exception)
    assert "\n" not in msg and "Traceback" not in res.output
    return msg


# ------------------------------------------------------------------------------------- method settings


@pytest.mark.parametrize(("method", "args", "expect"), BAD)
def test_method_constructor_refuses(method: str, args: dict, expect: str) -> None:
    with pytest.raises(HicaError) as err:
        method_registry()[method](**args)
    msg = str(err.value)
    assert msg.startswith(f"method {method}: ") and expect in msg and "\n" not in msg


@pytest.mark.parametrize(("method", "args", "expect"), BAD)
def test_benchmark_config_refuses(method: str, args: dict, expect: str) -> None:
    raw = {"datasets": ["busi"], "methods": [method], "method_args": {method: args}}
    with pytest.raises(HicaError) as err:
        validate_config(raw, "bad.yaml")
    msg = str(err.value)
    assert msg.startswith("bad.yaml: invalid config: method_args: ")
    assert f"method {method}: " in msg and expect in msg and "Value error" not in msg


def test_config_reports_every_bad_method_at_once() -> None:
    raw = {
        "datasets": ["busi"],
        "methods": ["clap", "tip_adapter_f"],
        "method_args": {"clap": {"epochs": 0}, "tip_adapter_f": {"lr": -1}},
    }
    with pytest.raises(HicaError) as err:
        validate_config(raw)
    assert "method clap: epochs must be >= 1" in str(err.value)
    assert "method tip_adapter_f: lr must be > 0" in str(err.value)


def test_finetune_config_refuses_bad_hica_settings(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "s2.yaml", {"dataset": "busi", "method": "hica_no_cross", "method_args": {"lr": 0}}
    )
    with pytest.raises(HicaError, match=r"s2\.yaml: invalid config: method_args: method hica_no_cross: lr"):
        load_model_config(Stage2Config, cfg)


@pytest.mark.parametrize(("method", "args", "expect"), ISSUE)
def test_cli_benchmark_refuses_before_any_work(tmp_path: Path, method: str, args: dict, expect: str) -> None:
    cfg = _write(
        tmp_path / "bad.yaml",
        {
            "datasets": ["busi"],
            "shots": [1],
            "seeds": [1],
            "methods": [method],
            "method_args": {method: args},
        },
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["benchmark", "--config", str(cfg), "--out", str(out)])
    msg = _one_line_error(res)
    assert "bad.yaml" in msg and f"method {method}" in msg and expect in msg
    assert not out.exists()  # refused before the run directory, the encoder or any data


def test_settings_reach_constructor_checked_through_the_registry() -> None:
    """Every registered method validates (a method without a ``Settings`` model would accept anything)."""
    for name, cls in method_registry().items():
        with pytest.raises(HicaError, match=rf"method {name}: unknown argument\(s\) \['no_such_setting'\]"):
            cls(no_such_setting=1)


def test_defaults_are_unchanged() -> None:
    reg = method_registry()
    assert set(reg) == set(DEFAULTS)
    for name, cls in reg.items():
        hp = cls().hparams
        assert hp == DEFAULTS[name], name
        assert list(hp) == list(DEFAULTS[name]), name  # same order (HiCA writes them into checkpoints)
        for k, v in DEFAULTS[name].items():
            assert type(hp[k]) is type(v), (name, k)


def _episode(k: int = 3, c: int = 3, d: int = 16) -> tuple[FewShotData, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(c, d, generator=g), dim=-1)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(c).repeat_interleave(n)
        return F.normalize(means[y] + 0.2 * torch.randn(len(y), d, generator=g), dim=-1), y

    (sx, sy), (vx, vy), (tx, _) = draw(k), draw(2), draw(4)
    text = ClassText(class_emb=means, prompt_emb=[means[i : i + 1] for i in range(c)], logit_scale=50.0)
    return FewShotData(sx, sy, vx, vy, c, text=text, seed=1), tx


@pytest.mark.parametrize("method", sorted(VALID))
def test_valid_settings_are_accepted(method: str) -> None:
    cls = method_registry()[method]
    assert set(VALID) == set(method_registry())  # every method has a positive case
    args = VALID[method]
    validate_config({"datasets": ["busi"], "methods": [method], "method_args": {method: args}})
    m = cls(**args)
    for k, v in args.items():
        got = m.hparams[k]
        want = sorted(v, reverse=True) if k == "temperatures" else v  # tried softest first
        assert got == want and (not isinstance(v, list) or isinstance(got, list)), (k, got)
    assert {k: m.hparams[k] for k in m.hparams if k not in args} == {
        k: v for k, v in cls.defaults.items() if k not in args and k != "temperatures"
    }
    if getattr(cls, "image_level", False):
        return  # image methods are fitted in test_finetune.py / test_hica_method.py
    data, tx = _episode()
    m.fit(data)
    p = m.predict_proba(tx)
    assert p.shape == (len(tx), 3) and torch.allclose(p.sum(1), torch.ones(len(tx)), atol=1e-5)
    chosen = {"prototype": "temperature", "knn": "k", "linear_probe": "C_coarse"}  # C: refined around it
    if method in chosen:  # the search ran over the given grid
        grid = next(iter(args.values()))
        assert m.selected[chosen[method]] in grid
    if method.startswith("tip_adapter"):
        betas, alphas = m.grids()
        assert m.selected["alpha"] in alphas and m.selected["beta"] in betas


def test_docs_table_matches_the_code() -> None:
    doc = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    begin, end = "<!-- settings:begin -->\n", "\n<!-- settings:end -->"
    assert (
        doc[doc.index(begin) + len(begin) : doc.index(end)] == settings_markdown(method_registry()).rstrip()
    )


# ------------------------------------------------------------------------------------- encoder arguments


def test_encoder_unknown_key_lists_the_valid_ones() -> None:
    with pytest.raises(HicaError) as err:
        create_encoder("default", embeddim=256)
    msg = str(err.value)
    assert msg.startswith("encoder default: unknown argument(s) embeddim")
    assert "did you mean embed_dim?" in msg
    assert "its arguments are embed_dim, image_size, image_weights, text_model, head_seed" in msg


def test_encoder_wrong_type_names_the_type() -> None:
    with pytest.raises(HicaError) as err:
        create_encoder("default", embed_dim="abc")
    assert "encoder default: argument embed_dim must be of type int, got 'abc'" in str(err.value)
    with pytest.raises(HicaError, match="embed_dim must be of type int, got True"):
        create_encoder("default", embed_dim=True)
    with pytest.raises(HicaError, match="image_size must be of type int, got 2.5"):
        create_encoder("default", image_size=2.5)


@pytest.mark.parametrize(
    ("backend", "args", "expect"),
    [
        ("open_clip", {"model": "RN50", "pretrainde": "openai"}, "unknown argument(s) pretrainde"),
        (
            "open_clip",
            {"model": "RN50", "force_quick_gelu": "maybe"},
            "force_quick_gelu must be of type bool",
        ),
        ("hf", {"modle": "x"}, "unknown argument(s) modle"),
        ("hf", {"model": "x", "max_text_length": "long"}, "max_text_length must be of type int | None"),
        ("timm_hf", {"image_model": "resnet10t", "embed_dim": "abc"}, "embed_dim must be of type int"),
        ("timm_hf", {"image_model": "r", "model_kwargs": "abc"}, "model_kwargs must be of type dict"),
        ("timm_hf", {}, "missing image_model"),
        ("checkpoint", {}, "missing path"),
        ("default", {"head_seed": [1]}, "head_seed must be of type int"),
    ],
)
def test_every_backend_checks_its_declared_arguments(backend: str, args: dict, expect: str) -> None:
    with pytest.raises(HicaError) as err:
        check_encoder_args(backend, args)
    assert str(err.value).startswith(f"encoder {backend}: ") and expect in str(err.value)


def test_encoder_arguments_are_converted_to_the_declared_types() -> None:
    assert set(list_encoders()) == {"default", "open_clip", "hf", "timm_hf", "checkpoint"}
    assert check_encoder_args("default", {"embed_dim": "256", "image_size": 64.0}) == {
        "embed_dim": 256,
        "image_size": 64,
    }
    assert check_encoder_args("timm_hf", {"image_model": "x", "image_pretrained": "true"})["image_pretrained"]
    # the checkpoint backend hands other keys to its base encoder, which checks them when it is built
    assert check_encoder_args("checkpoint", {"path": "ckpt", "image_size": 64}) == {
        "path": "ckpt",
        "image_size": 64,
    }
    assert check_encoder_args("default", {"image_weights": Path("w.pth")}) == {"image_weights": Path("w.pth")}
    enc = create_encoder("default", embed_dim="128", image_size="64")
    assert enc.embed_dim == 128 and enc.config["image_size"] == 64


def test_benchmark_config_refuses_bad_encoder_args() -> None:
    raw = {"datasets": ["busi"], "methods": ["prototype"], "encoder": {"name": "default", "args": {"x": 1}}}
    with pytest.raises(HicaError, match=r"cfg\.yaml: invalid config: encoder: encoder default: unknown"):
        validate_config(raw, "cfg.yaml")
    raw["encoder"] = {"name": "no_such_encoder"}
    with pytest.raises(HicaError, match="unknown encoder 'no_such_encoder'; available encoders: checkpoint"):
        validate_config(raw, "cfg.yaml")
    raw["encoder"] = {"name": "default", "args": {"embed_dim": 256}}
    assert validate_config(raw).encoder.args == {"embed_dim": 256}  # kept as given


@pytest.mark.parametrize(
    ("arg", "expect"),
    [
        (
            "embeddim=256",
            "unknown argument(s) embeddim (did you mean embed_dim?); its arguments are embed_dim",
        ),
        ("embed_dim=abc", "embed_dim must be of type int, got 'abc'"),
    ],
)
def test_cli_refuses_bad_encoder_arg(tmp_path: Path, arg: str, expect: str) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["fewshot", "--dataset", "busi", "--method", "clap", "--encoder-arg", arg, "--out", str(out)]
    )
    msg = _one_line_error(res)
    assert "encoder default" in msg and expect in msg
    assert not out.exists()


@pytest.mark.parametrize("case", ["method", "encoder"])
def test_entry_point_prints_one_line_without_traceback(tmp_path: Path, case: str) -> None:
    """The real ``hica`` entry point (``main()``): exit status 2 and one ``error:`` line on stderr."""
    if case == "method":
        cfg = _write(
            tmp_path / "bad.yaml",
            {"datasets": ["busi"], "methods": ["clap"], "method_args": {"clap": {"epochs": "x"}}},
        )
        argv, expect = ["benchmark", "--config", str(cfg)], "method clap: epochs must be an integer, got 'x'"
    else:
        argv = ["fewshot", "--dataset", "busi", "--method", "clap", "--encoder-arg", "embeddim=256"]
        expect = "encoder default: unknown argument(s) embeddim"
    env = {**os.environ, "COLUMNS": "80"}  # a narrow terminal must not wrap the line
    proc = subprocess.run(
        [sys.executable, "-m", "hica.cli", *argv, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------------ datasets


def _class_folder(data_root: Path, dst: Path, folders: dict[str, str], n: int = 3) -> Path:
    """``dst/<name>/`` with the first ``n`` real chest X-rays of each ``{name: source class folder}``."""
    src = data_root / "chest_xray" / "train"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    for name, source in folders.items():
        (dst / name).mkdir(parents=True)
        for f in sorted((src / source).glob("*.jpeg"))[:n]:
            shutil.copy2(f, dst / name / f.name)
    return dst


def test_single_class_imagefolder_is_refused(data_root: Path, tmp_path: Path) -> None:
    root = _class_folder(data_root, tmp_path / "one", {"NORMAL": "NORMAL"})
    with pytest.raises(HicaError) as err:
        load_dataset(f"imagefolder:{root}")
    msg = str(err.value)
    assert msg.startswith(f"dataset imagefolder:{root.resolve()}: ") and "at least 2 classes" in msg
    assert "['NORMAL']" in msg


def test_class_filter_leaving_one_class_is_refused(data_root: Path, tmp_path: Path) -> None:
    root = _class_folder(data_root, tmp_path / "two", {"NORMAL": "NORMAL", "PNEUMONIA": "PNEUMONIA"})
    assert load_dataset(f"imagefolder:{root}").classes == ["NORMAL", "PNEUMONIA"]  # 2 classes: fine
    spec = {"path": str(root), "format": "imagefolder", "classes": ["PNEUMONIA"], "name": "xray-filtered"}
    with pytest.raises(HicaError, match=r"^dataset xray-filtered: .*at least 2 classes.*\['PNEUMONIA'\]"):
        load_dataset(spec)


def test_manifest_with_one_class_is_refused(data_root: Path, tmp_path: Path) -> None:
    root = _class_folder(data_root, tmp_path / "m", {"NORMAL": "NORMAL"}, n=4)
    rows = "".join(f"NORMAL/{f.name},normal\n" for f in sorted((root / "NORMAL").iterdir()))
    csv = root / "manifest.csv"
    csv.write_text("path,label\n" + rows)
    with pytest.raises(HicaError, match=r"^dataset manifest:.*manifest\.csv: .*got 1 \(\['normal'\]\)"):
        load_dataset(f"manifest:{csv}")
    # two declared classes, but images of one only
    spec = {"path": str(csv), "format": "manifest", "classes": ["normal", "pneumonia"], "name": "half"}
    with pytest.raises(HicaError, match=r"^dataset half: .*got 1 \(\['normal'\]\)"):
        load_dataset(spec)


def test_cli_refuses_single_class_dataset(data_root: Path, tmp_path: Path) -> None:
    root = _class_folder(data_root, tmp_path / "one", {"NORMAL": "NORMAL"})
    res = CliRunner().invoke(
        app,
        [
            "fewshot",
            "--dataset",
            f"imagefolder:{root}",
            "--method",
            "prototype",
            "--shots",
            "1",
            "--seeds",
            "1",
            "--encoder-arg",
            "image_size=64",
            "--device",
            "cpu",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    msg = _one_line_error(res)
    assert f"dataset imagefolder:{root.resolve()}" in msg and "at least 2 classes" in msg
    assert not list((tmp_path / "run").glob("parts/*.json"))  # no result, no table of dashes


def test_analysis_configs_check_method_settings(tmp_path: Path) -> None:
    """The robustness and localization configs refuse bad method settings when they are loaded."""
    from hica.analysis.localization import load_localization_config
    from hica.analysis.robustness import load_robustness_config

    rob = tmp_path / "rob.yaml"
    rob.write_text(
        yaml.safe_dump(
            {
                "dataset": "busi",
                "corruptions": {"methods": ["clap"], "names": ["gaussian_noise"], "severities": [1]},
                "method_args": {"clap": {"epochs": 0}},
            }
        )
    )
    with pytest.raises(HicaError, match=r"clap.*epochs"):
        load_robustness_config(rob)
    loc = tmp_path / "loc.yaml"
    loc.write_text(yaml.safe_dump({"dataset": "busi", "finetune_args": {"lrr": 0.1}}))
    with pytest.raises(HicaError, match=r"lrr"):
        load_localization_config(loc)
