"""`python -m models.organism.export --out DIR`: the organisms' held-out clips as a stimulus manifest.

Writes the clips the organisms' training reports score as "held-out" (the corpus's 8 held-out sentences per language
in all nine styles, spoken by each language's held-out voice, the prosody draws of training seed 0), or with
`--renderer unseen` the clips of `stimuli/spec/prosody_unseen.json`, as `DIR/<lang>/<id>.wav` and
`DIR/manifest.jsonl`. Clip ids are `S<sentence>-<style id>-<lang>` (`S3-A7-en`: held-out sentence 3 in the style
of seed clip A7). Any runner takes the manifest with `--stimuli`; with `run_attack.py --universal` its several
sentences let a universal δ be evaluated on sentences it was not trained on. Clips are rendered in memory first and
the manifest is written last, so a failed run leaves no manifest.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from common.cli import LANG_CHOICES, languages, run_main
from models.organism.train import synthesize
from models.organism.unseen import SPEC_PATH, unseen_clips
from stimuli import spec, tts
from stimuli.audio_io import write_wav
from stimuli.manifest import Clip as ManifestClip
from stimuli.manifest import write_manifest

HELDOUT_SEED = 1  # the training runs render their held-out clips from seed + 1 (seed 0)
RENDERERS = ("training", "unseen")


def export(out: Path, langs: list[str], renderer: str, progress: Progress) -> list[ManifestClip]:
    """Render the chosen clips, write their WAVs and then the manifest; returns the manifest's clips."""
    if renderer == "unseen":
        clips, source = unseen_clips(0, progress), f"espeak-ng ({SPEC_PATH.name})"
    else:
        clips, source = synthesize("heldout", 1, HELDOUT_SEED, progress), "espeak-ng (organism held-out split)"
    sentences = {lang: list(dict.fromkeys(c.sentence for c in clips if c.lang == lang)) for lang in langs}
    seed_styles = {(s.emotion, s.intensity): s for s in spec.seed_clips()}
    rows = []
    for clip in clips:
        if clip.lang not in langs:
            continue
        style = seed_styles[(clip.emotion, clip.intensity)]
        name = f"S{sentences[clip.lang].index(clip.sentence) + 1}-{style.id}"
        if renderer == "unseen":  # two voices speak each sentence: the voice joins the id
            name += f"-{clip.voice.replace('+', '').replace('/', '')}"
        name += f"-{clip.lang}"
        rows.append((ManifestClip(id=name, path=f"{clip.lang}/{name}.wav", emotion=clip.emotion,
                                  intensity=clip.intensity, lang=clip.lang, sentence=clip.sentence,
                                  style=style.style, source=source,
                                  audio_path=(out / clip.lang / f"{name}.wav").absolute()), clip.wave))
    for row, wave in rows:
        write_wav(row.audio_path, wave, tts.SAMPLE_RATE)
    manifest = [row for row, _ in rows]
    write_manifest(out / "manifest.jsonl", manifest)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.organism.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--lang", default="both", choices=LANG_CHOICES, help="language(s) to write")
    parser.add_argument("--renderer", default="training", choices=RENDERERS,
                        help="training: the held-out split of the organisms' renderer; unseen: the renderer no "
                             "training run uses")
    args = parser.parse_args(argv)
    console = Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        clips = export(Path(args.out), languages(args.lang), args.renderer, progress)
    console.print(f"wrote {len(clips)} clips and {Path(args.out) / 'manifest.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
