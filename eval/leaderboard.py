"""`python -m eval.leaderboard`: the board of text-dominance flips, ranked by flip rate, one table per fair group.

    python -m eval.leaderboard                       # rich table in the terminal
    python -m eval.leaderboard --lang en --budget linf=0.002
    python -m eval.leaderboard --markdown board.md --html board.html --csv records.csv
    python -m eval.leaderboard --compare 3f2a9c1b 9c0d11aa

Records come from `<runs-dir>/records/`; a malformed or partial record file gets one warning line on stderr and is
skipped. `--compare A B` compares two records on their shared (clip, claim) items, paired at the clip (paired cluster
bootstrap of the difference, exact sign-flip test over clips), instead of drawing the board.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.atomic import atomic_write_text
from common.cli import run_main
from common.errors import ModalflipError
from eval.baselines import is_baseline
from eval.board import (CAPTION, COLUMNS, NO_BASELINE, NUMERIC, RANKING, Filters, Group, budget_text, build_board,
                        cells, parse_budget_filter)
from eval.board_html import write_html
from eval.paired import Comparison, compare, find_record
from eval.records import RECORDS_SUBDIR, Record, load_records, write_csv

_TERMINAL_PRIORITY = ("#", "id", "method", "flip rate", "95% CI", "clips", "flips", "Δlogit last", "Δlogit window",
                      "time", "queries", "seed", "settings")  # a narrow terminal drops columns from the end of this list
_SETTINGS_WIDTH = 30


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    records, problems = load_records(args.runs_dir)
    for path, reason in problems:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    if args.top_figures < 0:
        raise ModalflipError(f"--top-figures {args.top_figures} is negative; give 0 for a page without figures")
    if args.compare:
        first, second = (find_record(records, wanted) for wanted in args.compare)
        print(comparison_text(first, second, compare(first, second)))
        return 0
    if not records:
        raise ModalflipError(f"no records in {Path(args.runs_dir) / RECORDS_SUBDIR}: run run_probes.py, "
                             "run_prompt_search.py or run_attack.py first, or point --runs-dir at their results")
    filters = Filters(models=tuple(args.model), langs=tuple(args.lang), methods=tuple(args.method),
                      budget=tuple(parse_budget_filter(text) for text in args.budget))
    board = build_board(records, filters)
    if not board:
        raise ModalflipError(f"none of the {len(records)} records match the filters; drop a --model, --lang, "
                             "--method or --budget option")
    if args.csv:
        _wrote(write_csv([record for record in records if filters.admits(record)], args.csv))
    if args.html:
        _wrote(write_html(args.html, board, problems, runs_dir=args.runs_dir, top_figures=args.top_figures))
    if args.markdown == "-":
        sys.stdout.write(markdown(board, problems))
        return 0
    if args.markdown:
        _wrote(atomic_write_text(args.markdown, markdown(board, problems)))
    print_board(board, Console())
    return 0


def print_board(board: Sequence[Group], console: Console) -> None:
    """Draw each group as a rich table on `console`, leaving out the least needed columns that do not fit."""
    shown = {record.record_id for group in board for record in group.entries}
    console.print(f"[bold]Text-dominance flips[/bold]: {len(shown)} records in {len(board)} group(s). {RANKING}")
    for group in board:
        rows = [cells(record, position) for position, record in enumerate(group.entries, start=1)]
        keep = _fitting_columns(group.columns(), rows, console.width)
        table = Table(title=Text(group.title(), style="bold"), caption=CAPTION, caption_justify="left",
                      title_justify="left")
        for index in keep:
            table.add_column(group.columns()[index], justify="right" if COLUMNS[index] in NUMERIC else "left",
                             max_width=_SETTINGS_WIDTH if COLUMNS[index] == "settings" else None)
        for record, row in zip(group.entries, rows):
            table.add_row(*(Text(row[index]) for index in keep), style="italic cyan" if is_baseline(record) else None)
        console.print()
        console.print(table)
        left_out = [COLUMNS[index] for index in range(len(COLUMNS)) if index not in keep]
        if left_out:
            console.print(f"Left out for width: {', '.join(left_out)}; widen the terminal or use --markdown.",
                          style="dim", highlight=False)
        if not group.has_baseline:
            console.print(NO_BASELINE, style="yellow", highlight=False)


def _fitting_columns(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> list[int]:
    """Indices of the columns to draw in `width` cells, the most needed first, in board order."""
    need = [max(cell_len(text) for text in [header, *(row[i] for row in rows)]) + 3  # + border and padding
            for i, header in enumerate(headers)]
    need[COLUMNS.index("settings")] = min(need[COLUMNS.index("settings")], _SETTINGS_WIDTH + 3)
    keep, used = [], 1
    for index in (COLUMNS.index(name) for name in _TERMINAL_PRIORITY):
        if used + need[index] <= width:
            keep.append(index)
            used += need[index]
    return sorted(keep)


def markdown(board: Sequence[Group], problems: Sequence[tuple[Path, str]]) -> str:
    """The board as Markdown: one heading, caption and pipe table per group, then the skipped files."""
    lines = ["# Text-dominance flips", "", RANKING, ""]
    for group in board:
        lines += [f"## {_md(group.title())}", "", f"_{CAPTION}_", ""]
        lines.append("| " + " | ".join(group.columns()) + " |")
        lines.append("|" + "|".join("---:" if name in NUMERIC else "---" for name in COLUMNS) + "|")
        for position, record in enumerate(group.entries, start=1):
            row = cells(record, position)
            if is_baseline(record):
                row[2] = f"_{row[2]}_"
            lines.append("| " + " | ".join(_md(cell) for cell in row) + " |")
        if not group.has_baseline:
            lines += ["", f"> {NO_BASELINE}"]
        lines.append("")
    if problems:
        lines += [f"Skipped {len(problems)} record file(s):", ""]
        lines += [f"- `{path}`: {_md(reason)}" for path, reason in problems]
        lines.append("")
    return "\n".join(lines)


def comparison_text(a: Record, b: Record, result: Comparison) -> str:
    """The paired comparison of `a` and `b` as a few lines of plain text."""
    test = result.test
    lines = [
        f"A  {a.short_id}  {a.method}  budget {budget_text(a.budget)}  model {a.model_id}  lang {a.lang}",
        f"B  {b.short_id}  {b.method}  budget {budget_text(b.budget)}  model {b.model_id}  lang {b.lang}",
        f"shared items: {result.n_shared} in {test.n_units} {test.unit}s, matched by clip and claim "
        f"(only in A: {result.only_in_a}, only in B: {result.only_in_b})",
        f"flip rate on shared items: A {test.rate_a:.3f}, B {test.rate_b:.3f}; "
        f"paired difference A − B = {test.difference:+.3f} [{test.low:+.3f}, {test.high:+.3f}] "
        f"(95% paired cluster bootstrap over {test.unit}s)",
        f"discordant items: flipped by A only {test.items_a_not_b}, by B only {test.items_b_not_a}; "
        f"{test.unit}s where A flipped more {test.units_a_more}, B more {test.units_b_more}",
        f"unit: {test.unit}; {test.test} p = {test.p_value:.3g}",
    ]
    differ = []
    if (a.model_id, a.model_hash) != (b.model_id, b.model_hash):
        differ.append("model")
    if a.lang != b.lang:
        differ.append("language")
    if a.budget != b.budget and not (is_baseline(a) or is_baseline(b)):
        differ.append("budget")
    if differ:
        lines.append(f"note: A and B differ in {' and '.join(differ)}; the difference is not the method's alone")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.leaderboard", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs-dir", default="runs", help="results folder holding records/")
    parser.add_argument("--model", action="append", default=[], help="show only this model id (repeatable)")
    parser.add_argument("--lang", action="append", default=[], help="show only this language (repeatable)")
    parser.add_argument("--method", action="append", default=[],
                        help="show only this method (repeatable); baselines are always shown")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="show only records with this budget, e.g. linf=0.002 (repeatable)")
    parser.add_argument("--markdown", nargs="?", const="-", metavar="FILE",
                        help="write the board as Markdown to FILE, or to stdout instead of the table")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML page with the top figures")
    parser.add_argument("--top-figures", type=int, default=3, metavar="N",
                        help="the HTML page embeds the figures of the top N entries of each group")
    parser.add_argument("--csv", metavar="FILE", help="export the shown records as CSV, one row per record")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="paired comparison of two records (ids or unique prefixes), paired at the clip")
    return parser


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _wrote(path: Path) -> None:
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
