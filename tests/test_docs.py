"""The README and the recipes in docs/recipes say what runs: their commands run as shown (or as a fast variant of
the same command), the README stays short, and the project speaks of itself only.

A command in a ```bash block is skipped when its comment says why it cannot run here: `# needs ...` (a GPU, a
checkpoint, network, a server, your data). `pip install` and `python -m pytest` (this suite) are not run. The fast
variants: the probes run on two clips of their stimuli (the seed set by default) with 50 bootstrap resamples,
a search runs 2 trials, an attack 1 step on clip A4 (unless it names clips or is universal), all in English unless
the command names a language. Commands run in this process (`runpy`, as `python FILE` and `python -m MODULE` do) in a
scratch folder that starts empty.
"""
from __future__ import annotations

import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs" / "recipes").glob("*.md"))]
SETUP = [
    'pip install torch==2.13.0 -e . && python run_probes.py      # install (CPU torch), run the probes on the organism',
    'pip install -e ".[test,postgres]" && python -m pytest         # run the tests',
]
FAST_CLIPS = 2
NOT_RUN = ("pip ", "python -m pytest")


def bash_commands(path: Path) -> list[tuple[str, str]]:
    """(command, comment) for every command of every ```bash block in `path`, `&&` chains split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=False)
            comment = " ".join(words[words.index("#"):]) if "#" in words else ""
            words = words[:words.index("#")] if "#" in words else words
            text = " ".join(shlex.quote(w) for w in words)
            commands += [(part.strip(), comment) for part in text.split(" && ") if part.strip()]
    return commands


def runnable(commands: list[tuple[str, str]]) -> list[str]:
    return [c for c, comment in commands if not comment.startswith("# needs") and not c.startswith(NOT_RUN)]


def subset_manifest(source: Path, out: Path) -> Path:
    """The first normal-intensity clip of each of the first FAST_CLIPS emotions of a manifest, paths made absolute
    (the probes' fast variant)."""
    rows, emotions = [], set()
    for line in source.read_text().splitlines():
        row = json.loads(line) if line.strip() else None
        if row and row["emotion"] not in emotions and row.get("intensity", "normal") == "normal":
            emotions.add(row["emotion"])
            rows.append(dict(row, path=str((source.parent / row["path"]).resolve())))
        if len(rows) == FAST_CLIPS:
            break
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def option(words: list[str], name: str, value: str | None = None, default: str | None = None) -> list[str]:
    """`words` with `name` set to `value` (replacing it), or to `default` only if absent."""
    if name in words:
        if value is not None:
            words[words.index(name) + 1] = value
        return words
    new = value if value is not None else default
    return words + [name, new] if new is not None else words


def fast_variant(command: str, scratch: Path) -> list[str]:
    """The argv (after `python`) of the command's fast variant."""
    words = shlex.split(command)
    assert words[0] == "python", f"a documented command that is not python: {command}"
    words = words[1:]
    if words[0] in ("run_probes.py", "run_prompt_search.py", "run_attack.py"):
        words = option(words, "--lang", default="en")
    if words[0] == "run_probes.py":
        source = Path(words[words.index("--stimuli") + 1]) if "--stimuli" in words else \
            ROOT / "stimuli" / "seed" / "manifest.jsonl"
        subset = subset_manifest(source, scratch / f"subset-of-{source.parent.name}.jsonl")
        words = option(option(words, "--stimuli", str(subset), str(subset)), "--n-boot", "50", "50")
    if words[0] == "run_prompt_search.py":
        words = option(words, "--trials", "2", "2")
    if words[0] == "run_attack.py":
        words = option(words, "--steps", "1", "1")
        if "--universal" not in words:
            words = option(words, "--clips", default="A4")
    return words


def without_out(argv: list[str]) -> tuple[str, ...]:
    """A runner's argv without `--out DIR`, which does not change what it runs."""
    if argv[0].startswith("run_") and "--out" in argv:
        at = argv.index("--out")
        argv = argv[:at] + argv[at + 2:]
    return tuple(sorted(argv))


def run_python(argv: list[str], monkeypatch) -> int:
    """Run `python ARGV` in this process; its exit status."""
    module = argv[1] if argv[0] == "-m" else None
    monkeypatch.setattr(sys, "argv", [module or argv[0], *argv[2 if module else 1:]])
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def test_readme_is_short_and_shows_exactly_the_two_setup_commands():
    text = README.read_text()
    assert len(text) < 10_000
    block = re.search(r"## Quickstart\n\n```bash\n(.*?)```", text, flags=re.S).group(1)
    assert block.splitlines() == SETUP
    assert SETUP[1].split("  ")[0] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_documented_command_is_run_or_says_what_it_needs():
    for path in DOCS:
        for command, comment in bash_commands(path):
            assert command.startswith(("python ", *NOT_RUN)) or comment.startswith("# needs"), (path.name, command)


def test_relative_links_in_the_docs_point_at_files():
    pages = sorted((ROOT / "docs").glob("results*.md")) + sorted((ROOT / "docs").glob("sample-board*.md"))
    for path in [*DOCS, *pages]:
        for target in re.findall(r"\]\(([^)#]+)\)", path.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).exists(), (path.name, target)


def test_the_tree_names_no_work_periods():
    word = "ses" + "sion"  # in two parts, so that the search does not find this test
    hits = subprocess.run(["git", "grep", "-niwE", f"{word}s?"], cwd=ROOT, capture_output=True, text=True).stdout
    assert [line for line in hits.splitlines() if f'@pytest.fixture(scope="{word}")' not in line] == []


def test_the_readme_and_recipe_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = set()
    for path in DOCS:
        for command in runnable(bash_commands(path)):
            argv = fast_variant(command, tmp_path)
            key = without_out(argv)
            if key in seen:
                continue
            seen.add(key)
            assert run_python(argv, monkeypatch) == 0, f"{path.name}: {command} (ran as python {shlex.join(argv)})"
