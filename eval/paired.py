"""Paired comparison of two records on the items both ran, clustered on the clip.

Two intervals that overlap say little when both runs saw the same items; a paired test looks at where the two
methods differ. The items of one clip are not independent (they share its audio, and in an attack its δ), so the
comparison is paired at the clip: the difference of flip rates gets a paired cluster-bootstrap interval, and the
p-value comes from an exact sign-flip test of the per-clip differences (`common.stats.paired_cluster_test`).

Items are matched by (clip, asserted emotion), not by item id, so that the conflict prompt, the judge-by-the-voice
prompt, a searched prompt and an attack can be paired on the same clip and claim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from common.errors import ModalflipError
from common.stats import PairedTest, paired_cluster_test
from eval.records import Record, claim_of, clip_of


@dataclass(frozen=True)
class Comparison:
    """A against B on their shared (clip, claim) items. Rates are fractions of `n_shared`."""

    n_shared: int
    only_in_a: int  # items A ran that B did not (left out of the test)
    only_in_b: int
    test: PairedTest  # difference = rate_a − rate_b, its interval, per-clip counts and the sign-flip p-value


def pair_key(item: dict) -> str:
    """'<clip id>|T=<asserted emotion>': the same clip under the same claim, whichever method ran it."""
    return f"{clip_of(item)}|T={claim_of(item)}"


def compare(a: Record, b: Record) -> Comparison:
    """Compare `a` and `b` on the (clip, claim) items both hold; a `ModalflipError` when they share none."""
    if a.stimulus_hash != b.stimulus_hash:
        raise ModalflipError(
            f"records {a.short_id} and {b.short_id} use different stimulus sets "
            f"({a.stimulus_hash[:8]} vs {b.stimulus_hash[:8]}), so their item ids name different items"
        )
    items_a = {pair_key(item): item for item in a.items}
    items_b = {pair_key(item): item for item in b.items}
    shared = sorted(items_a.keys() & items_b.keys())
    if not shared:
        raise ModalflipError(
            f"records {a.short_id} and {b.short_id} share no items; compare two runs on the same language and clips"
        )
    test = paired_cluster_test([items_a[key]["flipped"] for key in shared],
                               [items_b[key]["flipped"] for key in shared],
                               [clip_of(items_a[key]) for key in shared])
    return Comparison(n_shared=len(shared), only_in_a=len(items_a) - len(shared),
                      only_in_b=len(items_b) - len(shared), test=test)


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
