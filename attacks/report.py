"""What a reader of one attack run sees: the persistence, curve and sweep figures and the rich summary tables.

Every flip rate is shown with its 95% interval over clips (the unit is named: "clip", or "clip (one universal
δ)"); Δlogit is logit(T) − logit(A), text minus voice, so an attack that works moves it down."""
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
        accuracy = [float("nan") if v is None else v for v in persistence["probe_accuracy_answer"][name]]
        bottom.plot(layers, accuracy, color=colour, marker=".", label=name)  # gaps: flat layers, no reading
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


def curve_figure(curve: list[dict], path: str | Path, title: str) -> Path:
    """`curve.png`: per step (restarts one after the other, separated by dotted lines), the loss (top) and the
    share of the step's rows answering the target, at the current iterate and at each group's best (bottom;
    absent under early exit, where the answer is not read)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(curve) + 1))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    top.plot(steps, [c["loss"] for c in curve], color="tab:blue")
    top.set_ylabel("loss (mean over rows)")
    if any(c["flip_rate"] is not None for c in curve):
        bottom.plot(steps, [c["flip_rate"] for c in curve], color="0.5", label="current iterate")
        bottom.plot(steps, [c["best_flip_rate"] for c in curve], color="tab:red", label="best iterate per group")
        bottom.legend(fontsize=7)
    else:
        bottom.text(0.5, 0.5, "answer not read (early exit)", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_ylim(-0.03, 1.03)
    bottom.set_ylabel("rows answering the target")
    bottom.set_xlabel("step (all restarts)")
    for index in range(1, len(curve)):
        if curve[index]["restart"] != curve[index - 1]["restart"]:
            for axis in (top, bottom):
                axis.axvline(index + 0.5, color="black", linestyle=":", linewidth=1)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    top.set_title(title, fontsize=9)
    fig.tight_layout()
    return atomic_write_png(path, fig)


def sweep_figure(sweep: dict, path: str | Path) -> Path:
    """`sweep.png`: the share of text-dominant answers flipped against the L∞ budget ε (log scale, left) and
    against the achieved mean SNR in dB (right), with 95% intervals over the sweep's unit; one curve per method."""
    return budget_figure([(f"{sweep['method']} ({sweep['optimizer']})", sweep)], path,
                         f"{sweep['model']['id']}: success against budget")


def budget_figure(curves: list[tuple[str, dict]], path: str | Path, title: str) -> Path:
    """Several sweeps (label, `sweep.json`'s content) on one figure, as `sweep_figure` draws one: the share of
    text-dominant answers flipped with 95% intervals over the sweeps' unit (which they must share) against ε (log
    scale; the curves' points are set slightly apart along ε so that their intervals stay visible) and against
    the achieved mean SNR (dB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = {sweep["unit"] for _, sweep in curves}
    if len(units) != 1:
        raise ValueError(f"sweeps over different units on one figure: {sorted(units)}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2 + 0.25 * ((len(curves) + 1) // 2)), sharey=True)
    markers = "osD^vP*X"
    for index, (label, sweep) in enumerate(curves):
        points = sorted(sweep["points"], key=lambda p: (p["budget"]["linf"], p["budget"].get("snr_db") or 0))
        rates = [p["text_dominant"]["rate"] or 0.0 for p in points]
        errors = [[r - p["text_dominant"]["ci95"][0] for r, p in zip(rates, points)],
                  [p["text_dominant"]["ci95"][1] - r for r, p in zip(rates, points)]]
        apart = 1.06 ** (index - (len(curves) - 1) / 2)
        style = {"marker": markers[index % len(markers)], "capsize": 3, "label": label, "alpha": 0.85}
        left.errorbar([p["budget"]["linf"] * apart for p in points], rates, yerr=errors, **style)
        snr = [p["snr_db_mean"] for p in points]
        kept = [i for i, value in enumerate(snr) if value is not None]
        right.errorbar([snr[i] for i in kept], [rates[i] for i in kept],
                       yerr=[[errors[0][i] for i in kept], [errors[1][i] for i in kept]], **style)
    left.set_xscale("log")
    budgets = sorted({p["budget"]["linf"] for _, sweep in curves for p in sweep["points"]})
    left.set_xticks(budgets, [f"{eps:g}" for eps in budgets])
    left.minorticks_off()
    left.set_xlabel("L∞ budget ε (full scale 1)" + (", points set apart" if len(curves) > 1 else ""))
    right.set_xlabel("achieved SNR, mean over clips (dB)")
    right.invert_xaxis()  # louder perturbations to the right on both panels
    left.set_ylabel(f"text-dominant answers flipped\n(95% interval over {units.pop()}s)")
    for axis in (left, right):
        axis.set_ylim(-0.03, 1.03)
        axis.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    rows = (len(curves) + 1) // 2
    fig.legend(handles, labels, loc="lower center", ncol=min(len(curves), 2), fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.02 + 0.04 * rows, 1, 1))
    return atomic_write_png(path, fig)


def sweep_table(sweep: dict) -> Table:
    """One row per budget: ε, SNR floor, the text-dominant flips with their interval, achieved SNR/STOI/PESQ."""
    table = Table(title=f"budget sweep — {sweep['method']} ({sweep['optimizer']}); intervals over {sweep['unit']}s")
    for name in ("ε", "SNR floor", "text-dominant flipped", "SNR dB (mean)", "STOI", "PESQ-wb", "folder"):
        table.add_column(name, justify="left" if name == "folder" else "right")
    for point in sweep["points"]:
        floor = point["budget"].get("snr_db")
        table.add_row(f"{point['budget']['linf']:g}", "—" if floor is None else f"{floor:g}",
                      _rate(point["text_dominant"]), _num(point["snr_db_mean"], ".1f"),
                      _num(point["stoi_mean"], ".3f"), _num(point["pesq_wb_mean"], ".2f"), point["folder"])
    return table


def _rate(entry: dict) -> str:
    low, high = entry["ci95"]
    if not entry["n"]:
        return "0/0 (no such items)"
    return (f"{entry['k']}/{entry['n']} = {entry['rate']:.0%}  [{low:.0%}, {high:.0%}] over {entry['n_units']} "
            f"{entry['unit']}s")


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def summary_table(metrics: dict) -> Table:
    """The run at a glance: budget and perceptual size, flip rates with intervals over clips, Δlogit (T − A),
    persistence, cost."""
    title = f"{metrics['method']} — {metrics['model']['id']} (intervals over {metrics['flips']['unit']}s)"
    table = Table(title=title, show_header=True)
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
    shift = metrics["delta_logit"]
    table.add_row("Δlogit = logit(T) − logit(A) shift, last / window",
                  f"{shift['shift_last']:+.2f} / {shift['shift_window']:+.2f} (negative: toward the voice)")
    persistence = metrics["persistence"]
    deepest = persistence["deepest_separating_layer"]
    table.add_row("deepest layer where the target separates",
                  f"clean {_num(deepest['clean'], 'd')} → attacked {_num(deepest['adversarial'], 'd')}")
    table.add_row("attack window (layers)", f"{persistence['window'][0]}..{persistence['window'][1]}")
    timing = metrics["timing"]
    settings = metrics["settings"]
    table.add_row("optimiser, loss, steps × restarts",
                  f"{settings['optimizer']}, {settings['loss']}, {settings['steps']} × {settings['restarts']}")
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
