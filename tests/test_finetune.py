"""Full fine-tuning baseline: trains a copy, selects on validation, deterministic, valid probabilities."""

from __future__ import annotations

import pytest
import torch
from needs import missing_data

from hica.encoders import create_encoder
from hica.methods import ImageFewShotData, method_registry


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    from conftest import find_data_root

    from hica.data.catalog import load_dataset
    from hica.data.sample import load_image

    root = find_data_root()
    if not (root / "busi").is_dir():
        missing_data(f"real data not found at {root}")
    enc = create_encoder("default", image_size=128)
    ds = load_dataset("busi", root)
    pick = lambda split, n: [s for c in range(3) for s in [x for x in ds.split(split) if x.label == c][:n]]  # noqa: E731
    sup, val, test = pick("train", 2), pick("val", 1), pick("test", 2)
    im = lambda ss: torch.stack([enc.preprocess(load_image(s)) for s in ss])  # noqa: E731
    lab = lambda ss: torch.tensor([s.label for s in ss])  # noqa: E731
    data = ImageFewShotData(im(sup), lab(sup), im(val), lab(val), num_classes=3, seed=1)
    return enc, data, im(test)


def test_finetune_trains_a_copy_and_is_deterministic(episode) -> None:
    enc, data, test = episode
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    ft = method_registry()["finetune"]
    args = dict(steps=3, eval_every=1, batch_size=4)
    m1 = ft(**args).fit(enc, data, torch.device("cpu"), "fp32")
    p1 = m1.predict_proba(test)
    p2 = ft(**args).fit(enc, data, torch.device("cpu"), "fp32").predict_proba(test)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items()), "encoder was modified"
    assert p1.shape == (6, 3) and torch.allclose(p1.sum(1), torch.ones(6), atol=1e-5)
    assert torch.allclose(p1, p2, atol=1e-5)
    assert 0 <= m1.selected["best_step"] <= 3
    # the trained copy differs from the encoder unless the prototype head (step 0) won on validation
    if m1.selected["best_step"] > 0:
        assert not torch.equal(m1.encoder.image_proj.weight, enc.image_proj.weight)
