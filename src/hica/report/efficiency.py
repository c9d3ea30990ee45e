"""The efficiency analysis as Markdown tables (parameters, training, inference)."""

from __future__ import annotations

from typing import Any


def _m(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} M"


def markdown(res: dict[str, Any]) -> str:
    """The measurements as Markdown tables."""
    mach = res["machine"]
    p = res["parameters"]
    lines = [
        f"# Efficiency ({res['name']})",
        "",
        f"Produced by `hica analyze efficiency`. CPU: {mach['cpu']}, {mach['cpu_cores']} cores, torch "
        f"{mach['torch']}. {'; '.join(res['skipped']) + '.' if res['skipped'] else ''}",
        "",
        "## Parameters",
        "",
        f"Encoder `{p['encoder']}`: image tower {_m(p['image_tower'])}, text tower {_m(p['text_tower'])} "
        f"(of which the text projection {_m(p['text_projection'])}), total {_m(p['total'])}.",
        "",
        "| stage | config | trainable image | trainable text | trainable total | share of all |",
        "|---|---|---|---|---|---|",
    ]
    for s in p["stages"]:
        lines.append(
            f"| {s['stage']} | `{s['config']}` | {_m(s['trainable_image'])} | {_m(s['trainable_text'])} | "
            f"{_m(s['trainable_total'])} | {100 * s['trainable_fraction']:.1f}% |"
        )
    if res["training"]:
        lines += [
            "",
            "## Training time and peak memory (committed runs, read from their summaries)",
            "",
            "| stage | run | training seconds | whole command seconds | peak RSS (MiB) | source |",
            "|---|---|---|---|---|---|",
        ]
        for t in res["training"]:
            lines.append(
                f"| {t['stage']} | {t['name']} | {t.get('train_seconds', '–')} | "
                f"{t.get('command_wall_seconds', '–')} | {t.get('peak_rss_mb', '–')} | `{t['source']}` |"
            )
    if res["inference"]:
        lines += [
            "",
            "## Inference (exported classifier; fresh process per row)",
            "",
            "| model | device | precision | latency batch 1, model (ms) | p90 (ms) | latency batch 1, file → "
            "probabilities (ms) | throughput (img/s, batch "
            f"{res['inference'][0]['throughput_batch_size']}) | peak RSS (MiB) | peak GPU memory (MiB) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["inference"]:
            dev = r.get("gpu", r["device"])
            lines.append(
                f"| {r['model']} | {dev} | {r['precision']} | {r['latency_ms_batch1_model']} | "
                f"{r['latency_ms_batch1_model_p90']} | {r['latency_ms_batch1_file']} | "
                f"{r['throughput_img_per_s']} | {r['peak_rss_mb']} | {r.get('peak_gpu_memory_mb', '–')} |"
            )
    lines += ["", f"Wall time {res['wall_seconds']:.0f} s.", ""]
    return "\n".join(lines)
