"""What a reader of one attack run sees: the persistence figure and the rich summary tables."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from common.atomic import atomic_write_png


def persistence_figure(persistence: dict, path: str | Path, title: str) -> Path:
    """`persistence.png`: per layer, the mean projection on the target emotion's direction (class gaps; answer
    position solid, audio span dashed) and the probe's accuracy at the answer position, clean vs adversarial,
    with the attack's layer window shaded and the deepest separating layers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = persistence["layers"]
    first, last = persistence["window"]
    colours = {"clean": "0.45", "adversarial": "tab:red"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for name, colour in colours.items():
        top.plot(layers, persistence["projection_answer"][name], color=colour, label=f"{name}, answer position")
        top.plot(layers, persistence["projection_audio"][name], color=colour, linestyle="--",
                 label=f"{name}, audio span")
        bottom.plot(layers, persistence["probe_accuracy_answer"][name], color=colour, marker=".", label=name)
        deepest = persistence["deepest_separating_layer"][name]
        if deepest is not None:
            bottom.axvline(deepest, color=colour, linestyle=":", linewidth=1)
    for axis in (top, bottom):
        axis.axvspan(first - 0.5, last + 0.5, color="tab:blue", alpha=0.08, label="attack window")
        axis.grid(alpha=0.3)
    top.axhline(0, color="black", linewidth=0.5)
    top.set_ylabel("projection on target direction\n(class gaps)")
    top.legend(fontsize=7, ncol=2)
    bottom.axhline(persistence["separates_at"], color="black", linewidth=0.5, linestyle="--")
    bottom.set_ylim(-0.03, 1.03)
    bottom.set_ylabel("probe reads target\n(share of items)")
    bottom.set_xlabel("residual layer (0 = embeddings)")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.legend(fontsize=7)
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    return atomic_write_png(path, fig)


def _rate(entry: dict) -> str:
    low, high = entry["ci95"]
    if not entry["n"]:
        return "0/0 (no such items)"
    return f"{entry['k']}/{entry['n']} = {entry['rate']:.0%}  [{low:.0%}, {high:.0%}]"


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def summary_table(metrics: dict) -> Table:
    """The run at a glance: budget and perceptual size, flip rates with Wilson intervals, persistence, cost."""
    table = Table(title=f"PGD persistence attack — {metrics['model']['id']}", show_header=True)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    budget, size = metrics["budget"], metrics["perceptual"]["summary"]
    table.add_row("budget", f"L∞ ε = {budget['linf']:g}"
                  + (f", SNR ≥ {budget['snr_db']:g} dB" if budget.get("snr_db") is not None else ""))
    table.add_row("SNR (dB): min / mean", f"{_num(size['snr_db_min'], '.1f')} / {_num(size['snr_db_mean'], '.1f')}")
    table.add_row("L∞ max, L2 mean", f"{size['linf_max']:.4f}, {size['l2_mean']:.3f}")
    table.add_row("STOI mean, PESQ-wb mean", f"{_num(size['stoi_mean'], '.3f')}, {_num(size['pesq_wb_mean'], '.2f')}")
    flips = metrics["flips"]
    target = "the target emotion" if metrics["settings"]["target_emotion"] else "the voice's emotion"
    table.add_row(f"conflict items answering {target}, clean", _rate(flips["before"]))
    table.add_row(f"conflict items answering {target}, attacked", _rate(flips["after"]))
    table.add_row("text-dominant answers flipped", _rate(flips["text_dominant"]))
    persistence = metrics["persistence"]
    deepest = persistence["deepest_separating_layer"]
    table.add_row("deepest layer where the target separates",
                  f"clean {_num(deepest['clean'], 'd')} → attacked {_num(deepest['adversarial'], 'd')}")
    table.add_row("attack window (layers)", f"{persistence['window'][0]}..{persistence['window'][1]}")
    timing = metrics["timing"]
    table.add_row("steps, s per step, total s",
                  f"{timing['steps']}, {timing['seconds_per_step']:.2f}, {timing['seconds_total']:.0f}")
    return table


def clip_table(metrics: dict) -> Table:
    """One row per attacked clip: emotion, perceptual size and its conflict items' answers before and after."""
    universal = metrics["universal_split"] is not None
    table = Table(title="per clip" + (" (universal δ: answers on held-out clips only)" if universal else ""))
    columns = ["clip", "voice"] + (["split"] if universal else []) + ["SNR dB", "L∞", "STOI", "PESQ",
                                                                     "target answers, clean → attacked"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("clip", "voice", "split") else "right")
    for clip in metrics["perceptual"]["clips"]:
        rows = [item for item in metrics["items"] if item["clip_id"] == clip["clip_id"]]
        clean = sum(item["clean_answer"] == item["target"] for item in rows)
        after = sum(item["adversarial_answer"] == item["target"] for item in rows)
        split = ["held out" if clip["held_out"] else "train"] if universal else []
        answers = f"{clean} → {after} of {len(rows)}" if rows else "—"
        table.add_row(clip["clip_id"], clip["audio_emotion"], *split, _num(clip["snr_db"], ".1f"),
                      f"{clip['linf']:.4f}", _num(clip["stoi"], ".3f"), _num(clip["pesq_wb"], ".2f"), answers)
    return table
