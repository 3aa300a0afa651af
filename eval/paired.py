"""Paired comparison of two records on the items both ran: the difference of flip rates and McNemar's exact test.

Two Wilson intervals that overlap say little when both runs saw the same items; the paired test uses only the
discordant items (flipped by one run and not the other), which is where the two methods actually differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from scipy.stats import binomtest

from common.errors import ModalflipError
from eval.records import Record


@dataclass(frozen=True)
class Comparison:
    """A against B on their shared items. Rates are fractions of `n_shared`; `difference` = rate_a − rate_b."""

    n_shared: int
    only_in_a: int  # items A ran that B did not (left out of the test)
    only_in_b: int
    rate_a: float
    rate_b: float
    difference: float
    a_not_b: int  # McNemar's b: flipped under A, not under B
    b_not_a: int  # McNemar's c
    p_value: float  # two-sided exact McNemar


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: binomial test of b out of b + c at 1/2."""
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5).pvalue)


def compare(a: Record, b: Record) -> Comparison:
    """Compare `a` and `b` on the items (by item_id) both hold; a `ModalflipError` when they share none."""
    if a.stimulus_hash != b.stimulus_hash:
        raise ModalflipError(
            f"records {a.short_id} and {b.short_id} use different stimulus sets "
            f"({a.stimulus_hash[:8]} vs {b.stimulus_hash[:8]}), so their item ids name different items"
        )
    flipped_a = {item["item_id"]: item["flipped"] for item in a.items}
    flipped_b = {item["item_id"]: item["flipped"] for item in b.items}
    shared = sorted(flipped_a.keys() & flipped_b.keys())
    if not shared:
        raise ModalflipError(
            f"records {a.short_id} and {b.short_id} share no items; compare two runs on the same language and items"
        )
    a_not_b = sum(flipped_a[i] and not flipped_b[i] for i in shared)
    b_not_a = sum(flipped_b[i] and not flipped_a[i] for i in shared)
    rate_a = sum(flipped_a[i] for i in shared) / len(shared)
    rate_b = sum(flipped_b[i] for i in shared) / len(shared)
    return Comparison(
        n_shared=len(shared),
        only_in_a=len(flipped_a) - len(shared),
        only_in_b=len(flipped_b) - len(shared),
        rate_a=rate_a,
        rate_b=rate_b,
        difference=rate_a - rate_b,
        a_not_b=a_not_b,
        b_not_a=b_not_a,
        p_value=mcnemar_exact(a_not_b, b_not_a),
    )


def find_record(records: Sequence[Record], wanted: str) -> Record:
    """The record whose id is `wanted` or starts with it; a `ModalflipError` when none or several match."""
    exact = [record for record in records if record.record_id == wanted]
    matches = exact or [record for record in records if record.record_id.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ModalflipError(f"no record id starts with {wanted!r}; `python -m eval.leaderboard` lists the ids")
    ids = ", ".join(record.record_id[: len(wanted) + 4] for record in matches[:5])
    raise ModalflipError(f"record id prefix {wanted!r} matches {len(matches)} records ({ids}); give more characters")
