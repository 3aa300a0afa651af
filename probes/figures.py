"""The probe figures: `logit_lens.png` (Δlogit per layer per condition) and `patching.png` (text vs audio)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.atomic import atomic_write_png  # noqa: E402
from probes.patching import KIND_NAMES  # noqa: E402

COLORS = {"conflict": "tab:red", "consistent": "tab:green", "audio_only": "tab:blue"}
PATCH_COLORS = {"text": "tab:red", "audio": "tab:blue", "audio_only": "tab:purple"}
DELTA = "Δlogit = logit(T) − logit(A)"


def _save(fig, path: Path) -> Path:
    atomic_write_png(path, fig, bbox_inches="tight")
    return path


def _bands(n_clips: dict[str, int]) -> str:
    """'95% cluster bootstrap over 9 clips (en), 9 clips (zh)'."""
    return "95% cluster bootstrap over " + ", ".join(f"{n} clips ({lang})" for lang, n in n_clips.items())


def lens_figure(summary: dict, model_name: str, path: Path) -> Path:
    """One panel per language: mean Δlogit = logit(T) − logit(A) per layer, 95% cluster-bootstrap bands over clips,
    critical layer marked."""
    langs = [k for k in summary if isinstance(summary[k], dict)]
    fig, axes = plt.subplots(1, len(langs), figsize=(6.5 * len(langs), 4.2), squeeze=False)
    n_clips = {}
    for ax, lang in zip(axes[0], langs):
        for condition, curve in summary[lang].items():
            layers = range(len(curve["mean"]))
            ax.plot(layers, curve["mean"], color=COLORS[condition],
                    label=f"{condition} (n={curve['n_readings']}, {curve['n_clips']} clips)")
            ax.fill_between(layers, curve["low"], curve["high"], color=COLORS[condition], alpha=0.2)
            if condition == "conflict":
                ax.axvline(curve["critical_layer"], color=COLORS[condition], linestyle="--", linewidth=1,
                           label=f"conflict critical layer {curve['critical_layer']}")
            n_clips[lang] = max(n_clips.get(lang, 0), curve["n_clips"])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("layer (residual index, 0 = embeddings)")
        ax.set_ylabel(DELTA)
        ax.set_title(f"Logit lens, {lang}: text emotion T vs audio emotion A")
        ax.legend(fontsize=8)
    fig.suptitle(f"{model_name}: bands are {_bands(n_clips)}", fontsize=9)
    return _save(fig, path)


def patching_figure(summary: dict, model_name: str, path: Path) -> Path:
    """Per language: flip rate to T (top) and normalized effect of LD = Δlogit (bottom) per patched layer, for each
    kind of patch; bands are 95% cluster-bootstrap intervals over the receivers' clips."""
    langs = [k for k in summary if isinstance(summary[k], dict)]
    layers = summary["layers"]
    fig, axes = plt.subplots(2, len(langs), figsize=(6.5 * len(langs), 6.5), squeeze=False, sharex=True)
    n_clips = {}
    for column, lang in enumerate(langs):
        top, bottom = axes[0][column], axes[1][column]
        for kind, data in summary[lang].items():
            label = f"{KIND_NAMES[kind]} (n={data['n_pairs']} pairs, {data['n_clips']} clips)"
            top.plot(layers, data["flip_rate"], color=PATCH_COLORS[kind], marker="o", markersize=3, label=label)
            top.fill_between(layers, data["flip_low"], data["flip_high"], color=PATCH_COLORS[kind], alpha=0.15)
            bottom.plot(layers, data["effect"], color=PATCH_COLORS[kind], marker="o", markersize=3, label=label)
            bottom.fill_between(layers, data["effect_low"], data["effect_high"], color=PATCH_COLORS[kind],
                                alpha=0.15)
            n_clips[lang] = max(n_clips.get(lang, 0), data["n_clips"])
        top.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        top.set_ylim(-0.03, 1.03)
        top.set_ylabel("flip rate to T (95% cluster bootstrap)")
        top.set_title(f"Activation patching, {lang} (window {summary['window']}, text: {summary['text_mode']})")
        top.legend(fontsize=8)
        bottom.axhline(0, color="black", linewidth=0.6)
        bottom.set_ylabel("normalized effect on LD")
        bottom.set_xlabel("patched layer (residual index, 0 = embeddings)")
    fig.suptitle(f"{model_name}: receiver = consistent item (Patch Text, Patch Audio) or audio-only item;\n"
                 f"flip = the answer moves to T; LD = {DELTA}; bands are {_bands(n_clips)}", fontsize=9)
    return _save(fig, path)
