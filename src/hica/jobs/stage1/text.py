"""Stage-1 text tower — SimCSE (Gao et al., 2021) on a domain corpus.

Each sentence's positive is its own second dropout view, plus, for descriptor sentences, the other
sentences of the same class and file (the category → attribute hierarchy is text, not an image label). Only
the top ``train_layers`` transformer layers move. The corpus is every bundled descriptor file (class
descriptions and attribute phrases rendered into sentences) and the text files in ``hica/data/corpus``
(see its README).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.model.text import pooled_sentences


@dataclass
class TextCorpus:
    """Sentences for text adaptation; ``group[i]`` ≥ 0 puts descriptor sentences of one class together."""

    sentences: list[str]
    group: list[int]
    sources: dict[str, int]

    def describe(self) -> dict[str, Any]:
        words = sum(len(s.split()) for s in self.sentences)
        return {"sentences": len(self.sentences), "words": words, "sources": self.sources}


def build_corpus(extra_files: list[str] | None = None, descriptors: list[str] | None = None) -> TextCorpus:
    """Bundled descriptor sentences (``descriptors``: names or paths; default every bundled file) and the
    bundled corpus files plus ``extra_files`` (one sentence per line)."""
    from importlib import resources

    from hica.data.descriptors import list_bundled, load_descriptors

    sentences: list[str] = []
    group: list[int] = []
    sources: dict[str, int] = {}
    seen: set[str] = set()
    gids: dict[str, int] = {}  # one group per class key: busi/breastmnist "malignant" are one class

    def add(s: str, g: int, src: str) -> None:
        s = " ".join(s.split())
        if s and s not in seen:
            seen.add(s)
            sentences.append(s)
            group.append(g)
            sources[src] = sources.get(src, 0) + 1

    for name in descriptors if descriptors is not None else list_bundled():
        d = load_descriptors(name)
        for cls in d.classes:
            g = gids.setdefault(cls, len(gids))
            for s in d.class_prompts(cls, "descriptions") + d.attribute_prompts(cls):
                add(s, g, f"descriptors:{d.dataset}")
    files = [p for p in resources.files("hica.data.corpus").iterdir() if p.name.endswith(".txt")]
    for p in sorted(files, key=lambda p: p.name):
        for line in p.read_text(encoding="utf-8").splitlines():
            add(line, -1, f"corpus:{p.name}")
    for f in extra_files or []:
        path = Path(f)
        if not path.is_file():
            raise HicaError(f"text corpus file {path} not found (stage 1 text.corpus_files)")
        for line in path.read_text(encoding="utf-8").splitlines():
            add(line, -1, f"file:{path.name}")
    if len(sentences) < 8:
        raise HicaError(f"the stage-1 text corpus has only {len(sentences)} sentences; give more text")
    return TextCorpus(sentences, group, sources)


def _text_params(encoder: nn.Module, layers: int) -> tuple[list[nn.Parameter], list[str]]:
    text_model = getattr(encoder, "text_model", None)
    enc_layers = getattr(getattr(text_model, "encoder", None), "layer", None)
    if enc_layers is None:
        raise HicaError(
            "stage-1 text adaptation needs a BERT-style text_model (encoder "
            f"{getattr(encoder, 'name', '?')!r} "
            "has none); set text.enabled: false"
        )
    for p in text_model.parameters():
        p.requires_grad_(False)
    n = len(enc_layers)
    chosen = list(range(max(0, n - layers), n))
    params = []
    for i in chosen:
        for p in enc_layers[i].parameters():
            p.requires_grad_(True)
            params.append(p)
    return params, [f"text_model.encoder.layer.{i}." for i in chosen]


@torch.no_grad()
def hierarchy_retrieval(encoder: nn.Module, corpus: TextCorpus) -> float:
    """Share of descriptor sentences whose nearest other descriptor sentence belongs to the same class."""
    idx = [i for i, g in enumerate(corpus.group) if g >= 0]
    was = encoder.text_model.training
    encoder.text_model.eval()
    emb = torch.cat(
        [
            F.normalize(pooled_sentences(encoder, [corpus.sentences[i] for i in idx[j : j + 128]]), dim=-1)
            for j in range(0, len(idx), 128)
        ]
    )
    encoder.text_model.train(was)
    sim = emb @ emb.T
    sim.fill_diagonal_(-2)
    g = torch.tensor([corpus.group[i] for i in idx])
    return float((g[sim.argmax(1)] == g).float().mean())


def adapt_text_tower(
    encoder: nn.Module, corpus: TextCorpus, cfg: Any, device: torch.device, seed: int, run_dir: Path
) -> dict[str, Any]:
    """SimCSE + descriptor-hierarchy positives on ``corpus``; returns a summary (``cfg``: text section)."""
    params, prefixes = _text_params(encoder, cfg.train_layers)
    before = hierarchy_retrieval(encoder, corpus)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    n = len(corpus.sentences)
    bs = min(cfg.batch_size, n)
    steps = cfg.epochs * math.ceil(n / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    groups = torch.tensor(corpus.group)
    encoder.text_model.train()  # dropout on: the two views of a sentence differ by dropout
    rows, t0, step = [], time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            texts = [corpus.sentences[j] for j in idx.tolist()]
            a = F.normalize(pooled_sentences(encoder, texts).float(), dim=-1)
            b = F.normalize(pooled_sentences(encoder, texts).float(), dim=-1)
            logits = a @ b.T / cfg.temperature
            g = groups[idx]
            same = (g[:, None] == g[None, :]) & (g[:, None] >= 0)
            pos = same | torch.eye(len(idx), dtype=torch.bool)
            logp = logits.log_softmax(1)
            loss = -(logp * pos).sum(1).div(pos.sum(1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            rows.append({"step": step, "epoch": epoch, "loss": round(loss.item(), 5)})
    encoder.text_model.eval()
    for p in encoder.text_model.parameters():
        p.requires_grad_(False)
    from hica.io import write_text

    write_text(
        run_dir / "log.csv",
        "step,epoch,loss\n" + "".join(f"{r['step']},{r['epoch']},{r['loss']}\n" for r in rows),
    )
    after = hierarchy_retrieval(encoder, corpus)
    return {
        "corpus": corpus.describe(),
        "trained": prefixes,
        "steps": step,
        "first_loss": rows[0]["loss"],
        "final_loss": rows[-1]["loss"],
        "seconds": round(time.perf_counter() - t0, 1),
        "descriptor_nn_same_class": {"before": round(before, 4), "after": round(after, 4)},
        "prefixes": prefixes,
    }
