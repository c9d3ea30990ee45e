"""Localization analysis: metrics with exact values, Grad-CAM on a synthetic net, the paired full vs
global-only comparison, a tiny real BUSI run (with and without the global-only maps)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from hica.analysis import localization as loc
from hica.analysis.localization import LocalizationConfig, load_localization_config, run_localization
from hica.analysis.localization_cells import fitted_models
from hica.analysis.localization_config import config_scope
from hica.errors import HicaError
from hica.eval.gradcam import cam_layer, grad_cam
from hica.eval.grid import config_hash
from hica.eval.localization import (
    MAPS,
    center_prior,
    energy_in_mask,
    is_degenerate,
    max_point,
    pointing_chance,
    pointing_game,
    topk_iou,
    topk_iou_chance,
)
from hica.report.localization import GLOBAL_ONLY_MAPS, map_names, versus_global_only

pytestmark = pytest.mark.usefixtures("one_thread")


def _box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


# -- metrics ---------------------------------------------------------------------------------------------


def test_pointing_game_hit_miss_and_tolerance() -> None:
    mask = _box((20, 20), slice(2, 5), slice(2, 5))  # rows/cols 2..4
    inside = np.zeros((20, 20))
    inside[3, 3] = 1.0
    assert pointing_game(inside, mask, tolerance=0)
    far = np.zeros((20, 20))
    far[10, 10] = 1.0  # nearest mask pixel (4, 4): distance sqrt(72) = 8.485
    assert not pointing_game(far, mask, tolerance=0)
    assert not pointing_game(far, mask, tolerance=8.4)
    assert pointing_game(far, mask, tolerance=8.5)
    assert pointing_game(torch.tensor(far), torch.tensor(mask), tolerance=15)  # torch inputs too


def test_pointing_game_plateau_centroid_and_constant_map() -> None:
    mask = _box((5, 5), slice(0, 1), slice(1, 2))  # only pixel (0, 1)
    tied = np.zeros((5, 5))
    tied[0, 0] = tied[0, 2] = 1.0  # two maxima: their centroid (0, 1) is the point
    assert pointing_game(tied, mask, tolerance=0)
    flat = np.full((5, 5), 0.3)
    assert is_degenerate(flat) and not pointing_game(flat, mask, tolerance=100)


def test_topk_iou_exact_values() -> None:
    mask = _box((10, 10), slice(0, 2), slice(0, 10))  # first two rows: 20 px
    ramp = -np.arange(100, dtype=float).reshape(10, 10)  # row-major descending
    assert topk_iou(ramp, mask, 0.05) == pytest.approx(5 / 20)
    assert topk_iou(ramp, mask, 0.10) == pytest.approx(10 / 20)
    assert topk_iou(ramp, mask, 0.20) == pytest.approx(1.0)
    assert topk_iou(-ramp, mask, 0.20) == pytest.approx(0.0)  # top 20 px = last two rows
    assert topk_iou(ramp, mask, 0.30) == pytest.approx(20 / 30)
    with pytest.raises(ValueError, match="fraction"):
        topk_iou(ramp, mask, 0.0)


def test_energy_in_mask_values_and_uniform_map_is_area_fraction() -> None:
    mask = _box((10, 10), slice(0, 1), slice(0, 10))  # row 0: area 0.1
    h = np.zeros((10, 10))
    h[0] = 1.0
    h[1] = 0.5
    assert energy_in_mask(h, mask) == pytest.approx(10 / 15)
    assert energy_in_mask(3 * h + 7, mask) == pytest.approx(10 / 15)  # min–max invariant
    assert energy_in_mask(np.full((10, 10), 2.0), mask) == pytest.approx(0.1)
    assert energy_in_mask(np.zeros((10, 10)), mask) == pytest.approx(0.1)


def test_empty_mask_and_shape_mismatch_raise() -> None:
    h = np.random.default_rng(0).random((8, 8))
    empty = np.zeros((8, 8), dtype=bool)
    for fn in (
        lambda: pointing_game(h, empty),
        lambda: topk_iou(h, empty, 0.1),
        lambda: energy_in_mask(h, empty),
        lambda: pointing_chance(empty),
    ):
        with pytest.raises(ValueError, match="empty"):
            fn()
    with pytest.raises(ValueError, match="same size"):
        energy_in_mask(h, np.ones((4, 4), dtype=bool))


def test_chance_levels() -> None:
    mask = _box((11, 11), slice(5, 6), slice(5, 6))  # one pixel
    assert pointing_chance(mask, 0) == pytest.approx(1 / 121)
    assert pointing_chance(mask, 1) == pytest.approx(5 / 121)
    assert topk_iou_chance(0.5, 0.5) == pytest.approx(1 / 3)
    assert topk_iou_chance(0.1, 1.0) == pytest.approx(0.1)  # everything selected: IoU = area


def test_center_prior_peaks_in_the_middle() -> None:
    p = center_prior(64, 0.25)
    assert p.shape == (64, 64) and np.allclose(p, p.T) and np.allclose(p, p[::-1])
    assert max_point(p) == (32, 32)  # the 4 central pixels tie: rounded centroid 31.5 → 32
    # σ = 16 px about the centre 31.5: pixel 48 is 16.5 px off, pixel 32 is 0.5 px off.
    assert p[32, 32] / p[32, 48] == pytest.approx(math.exp((16.5**2 - 0.5**2) / (2 * 16**2)))
    assert pointing_game(p, _box((64, 64), slice(28, 36), slice(28, 36)), tolerance=0)
    assert not pointing_game(p, _box((64, 64), slice(0, 8), slice(0, 8)), tolerance=15)


# -- Grad-CAM --------------------------------------------------------------------------------------------


class _BlobNet(nn.Module):
    """Class 1 = 'a bright blob is present'. Channel 0 detects brightness, channel 1 darkness; the logits are
    a linear layer on their spatial mean, so evidence for class 1 lies only where the blob is."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, padding=1)
        conv.weight.data[0] = 1 / 9
        conv.weight.data[1] = -1 / 9
        conv.bias.data[:] = torch.tensor([0.0, 1.0])
        self.features = nn.Sequential(conv, nn.ReLU())
        self.fc = nn.Linear(2, 2, bias=False)
        self.fc.weight.data = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def test_grad_cam_peaks_on_the_region_the_class_depends_on() -> None:
    net = _BlobNet().eval()
    corners = [(1, 2), (9, 10), (3, 11)]
    x = torch.zeros(len(corners), 1, 16, 16)
    for i, (r, c) in enumerate(corners):
        x[i, 0, r : r + 4, c : c + 4] = 1.0
    target = torch.ones(len(corners), dtype=torch.long)
    cam = grad_cam(net, net.features, x, target, model=net)
    assert cam.shape == (3, 16, 16) and (cam >= 0).all()
    for i, (r, c) in enumerate(corners):
        pr, pc = divmod(int(cam[i].argmax()), 16)
        assert r <= pr < r + 4 and c <= pc < c + 4, (i, pr, pc)
    # The other class's evidence lies away from the blob; the model's parameters are trainable again.
    cam0 = grad_cam(net, net.features, x, torch.zeros(3, dtype=torch.long), model=net)
    for i, (r, c) in enumerate(corners):
        pr, pc = divmod(int(cam0[i].argmax()), 16)
        assert not (r <= pr < r + 4 and c <= pc < c + 4)
    assert all(p.requires_grad for p in net.parameters())


def test_cam_layer_refuses_an_encoder_without_conv_trunk() -> None:
    with pytest.raises(HicaError, match="Grad-CAM"):
        cam_layer(nn.Linear(2, 2))


# -- config and bad input --------------------------------------------------------------------------------


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dataset": "busi", "bogus": 1}))
    with pytest.raises(HicaError, match=r"bad\.yaml.*bogus"):
        load_localization_config(bad)
    bad.write_text(yaml.safe_dump({"hica_args": {"nonsense": 1}}))
    with pytest.raises(HicaError, match=r"bad\.yaml.*hica_args.*nonsense"):
        load_localization_config(bad)
    bad.write_text(yaml.safe_dump({"finetune_args": {"stepz": 1}}))
    with pytest.raises(HicaError, match=r"finetune_args.*stepz"):
        load_localization_config(bad)
    cfg = load_localization_config(Path(__file__).parents[1] / "configs/analysis/localization_busi.yaml")
    assert cfg.dataset == "busi" and cfg.hica_args == {"freeze_stages": 0} and cfg.compare_global_only


def test_global_only_switch_is_in_the_config_hash_and_refuses_args_that_undo_it() -> None:
    on = LocalizationConfig(hica_args={"freeze_stages": 0})
    off = on.model_copy(update={"compare_global_only": False})
    assert config_hash(config_scope(on)) != config_hash(config_scope(off))
    assert [m for m, *_ in fitted_models(on)] == ["hica", "finetune", "global_only"]
    assert [m for m, *_ in fitted_models(off)] == ["hica", "finetune"]
    assert map_names(False) == list(MAPS) and set(map_names(True)) == set(MAPS) | set(GLOBAL_ONLY_MAPS)
    with pytest.raises(HicaError, match="use_local.*not be global-only"):
        fitted_models(LocalizationConfig(hica_args={"use_local": True}))
    assert fitted_models(LocalizationConfig(hica_args={"use_local": True}, compare_global_only=False))


def _part(seed: int, full: list[int], other: list[int]) -> dict:
    classes = ["benign", "malignant"] * (len(full) // 2)
    return {
        "seed": seed,
        "images": [
            {
                "id": f"im{i}",
                "class": c,
                "metrics": {
                    m: {"pointing_game": float(v)}
                    for m, v in (("hica_map", a), ("global_only_map", b), ("center_prior", 0))
                },
            }
            for i, (c, a, b) in enumerate(zip(classes, full, other, strict=True))
        ],
    }


def test_versus_global_only_pairs_images_and_brackets_the_difference() -> None:
    parts = [_part(1, [1, 1, 0, 1], [0, 1, 0, 1]), _part(2, [1, 0, 1, 1], [0, 0, 1, 0])]
    vs = versus_global_only(parts, n_boot=500)
    assert set(vs) == {"hica_map"}  # no Grad-CAM pair in these parts
    e = vs["hica_map"]["scopes"]
    assert e["all"]["full"] == pytest.approx(6 / 8) and e["all"]["global_only"] == pytest.approx(3 / 8)
    assert e["all"]["difference"] == pytest.approx(3 / 8) and e["all"]["per_seed"] == [0.25, 0.5]
    assert e["all"]["only_full_hits"] == 3 and e["all"]["only_global_only_hits"] == 0
    lo, hi = e["all"]["ci95"]
    assert 0 <= lo <= 3 / 8 <= hi <= 1 and e["all"]["n_images"] == 4
    assert e["benign"]["difference"] == pytest.approx(0.5) and e["malignant"]["difference"] == 0.25
    same = versus_global_only([_part(1, [1, 0], [1, 0])])["hica_map"]["scopes"]["all"]
    assert same["difference"] == 0 and same["ci95"] == [0, 0] and same["sign"] == "CI holds 0"
    assert versus_global_only([_part(1, [1, 0], [1, 0])], n_boot=10) == versus_global_only(
        [_part(1, [1, 0], [1, 0])], n_boot=10
    )


def test_dataset_without_masks_is_a_clear_error(tiny_imagefolder, tmp_path: Path) -> None:
    folder = tiny_imagefolder(n_train=6, n_test=2)
    cfg = LocalizationConfig(dataset={"path": str(folder), "format": "imagefolder"}, device="cpu")
    with pytest.raises(HicaError, match="no lesion masks"):
        run_localization(cfg, tmp_path / "out")


# -- end to end on real BUSI -----------------------------------------------------------------------------


def test_run_localization_tiny_real_busi_and_resume(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full HiCA, fine-tune and global-only on one tiny seed; reuse; then the switch off in the same folder:
    the part with the global-only maps is not reused, the old map set comes back with the same values."""
    cfg = LocalizationConfig(
        encoder={"name": "default", "args": {"image_size": 64}},
        k=1,
        seeds=[1],
        hica_args={"steps": 2, "head_steps": 3, "batch_size": 3, "freeze_stages": 0},
        finetune_args={"steps": 2, "eval_every": 1},
        max_images=6,
        gallery=4,
        device="cpu",
        precision="fp32",
        data_root=str(data_root),
    )
    out = tmp_path / "loc"
    res = run_localization(cfg, out)
    for f in ("metrics.json", "table.md", "per_image.csv", "gallery.png", "parts/seed1.json"):
        assert (out / f).is_file(), f
    s = res["summary"]
    assert s["n_images"] == {"all": 6, "benign": 3, "malignant": 3}
    assert res["excluded"] == {"normal": 41}  # BUSI normal test images: empty masks
    maps = map_names(True)
    assert res["maps"] == maps == list(s["maps"]) and set(GLOBAL_ONLY_MAPS) < set(maps)
    for m in maps:
        for key in ("all", "benign", "malignant"):
            for name, v in s["maps"][m][key].items():
                assert math.isfinite(v["mean"]) and 0 <= v["mean"] <= 1, (m, key, name)
    vs = s["vs_global_only"]
    assert {e["global_only_map"] for e in vs.values()} == set(GLOBAL_ONLY_MAPS)
    for full, e in vs.items():
        for key, d in e["scopes"].items():
            lo, hi = d["ci95"]
            assert all(math.isfinite(v) for v in (d["difference"], lo, hi)), (full, key)
            assert 0 <= d["full"] <= 1 and 0 <= d["global_only"] <= 1
            assert -1 <= lo <= d["difference"] <= hi <= 1 and len(d["per_seed"]) == 1
            assert d["full"] == pytest.approx(s["maps"][full][key]["pointing_game"]["mean"], abs=1e-4)
            other = s["maps"][e["global_only_map"]][key]["pointing_game"]["mean"]
            assert d["global_only"] == pytest.approx(other, abs=1e-4)
    assert s["maps"]["center_prior"]["all"]["pointing_game"]["std"] == 0.0
    for v in s["chance"]["all"].values():
        assert 0 < v < 1
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 6 * len(maps) and {r["map"] for r in rows} == set(maps)
    part = json.loads((out / "parts/seed1.json").read_text())
    assert len(part["images"][0]["grids"]["hica_map"]) == 2  # 64 px → 2×2 grid
    assert len(part["images"][0]["grids"]["global_only_map"]) == 2 and set(part["fits"]) == {
        "hica",
        "finetune",
        "global_only",
    }
    assert json.loads((out / "metrics.json").read_text())["machine"]["device"] == "cpu"
    table = (out / "table.md").read_text()
    assert "Pointing game" in table and "Full HiCA vs global-only HiCA" in table

    def boom(*a, **k):
        raise AssertionError("a finished seed was recomputed")

    monkeypatch.setattr(loc, "run_seed", boom)
    again = run_localization(cfg.model_copy(update={"gallery": 2}), out)  # gallery does not change a seed
    assert again["summary"] == res["summary"]

    monkeypatch.undo()
    off = run_localization(cfg.model_copy(update={"compare_global_only": False, "gallery": 0}), out)
    assert off["grid_run"]["parts_computed"] == 1 and off["config_hash"] != res["config_hash"]
    assert (
        off["maps"] == list(off["summary"]["maps"]) == list(MAPS) and "vs_global_only" not in off["summary"]
    )
    assert set(json.loads((out / "parts/seed1.json").read_text())["fits"]) == {"hica", "finetune"}
    assert len(list(csv.DictReader((out / "per_image.csv").open()))) == 6 * len(MAPS)
    assert "global-only" not in (out / "table.md").read_text()
    for m in MAPS:  # the third fit changes nothing of the other two models' maps
        assert off["summary"]["maps"][m] == s["maps"][m], m


def test_grad_cam_on_the_default_encoder_matches_a_manual_gradient() -> None:
    """The hooked Grad-CAM on the real encoder's last feature map equals ReLU(Σ_c mean(∂y/∂A_c)·A_c)
    computed with a plain retained gradient through the whole network."""
    import torch.nn.functional as F

    from hica.encoders import create_encoder

    torch.manual_seed(0)
    enc = create_encoder("default", image_size=64).eval()
    head = torch.randn(3, enc.encode_image(torch.zeros(1, 3, 64, 64)).global_.shape[-1])

    def logits(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(enc.encode_image(x).global_.float(), dim=-1) @ head.T

    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([0, 2])
    layer = cam_layer(enc)
    cam = grad_cam(logits, layer, x, target, model=enc)

    kept: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: kept.update(a=out) or out.retain_grad())
    try:
        with torch.enable_grad():
            score = logits(x).gather(1, target.view(-1, 1)).sum()
            score.backward()
    finally:
        handle.remove()
    a = kept["a"]
    manual = F.relu((a.grad.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(1))
    assert cam.shape == manual.shape == (2, *a.shape[-2:])
    assert torch.allclose(cam, manual, atol=1e-5, rtol=1e-4) and cam.max() > 0
