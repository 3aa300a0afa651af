"""Emotion directions: class-mean differences in class gaps; layers where the classes coincide have none."""
from __future__ import annotations

import torch

from attacks.directions import Directions


def _directions() -> Directions:
    """Three emotions, two layers, d = 4: layer 0 separates the classes, at layer 1 every class mean is the same."""
    torch.manual_seed(0)
    shared = torch.randn(4)
    separated = torch.eye(4)[:3] * 2.0 + shared
    coinciding = shared.expand(3, 4) + 1e-9 * torch.randn(3, 4)
    means = torch.stack([separated, coinciding], dim=1)  # (emotions, layers, d)
    return Directions(["happy", "sad", "angry"], {"audio": means, "answer": means}, [2, 2, 2])


def test_projection_of_a_class_mean_is_one_class_gap_from_the_centre():
    directions = _directions()
    means = directions.means["audio"][:, 0]
    projected = directions.project("audio", 0, means, torch.arange(3))
    centre = directions.project("audio", 0, directions.centre["audio"][0].expand(3, 4), torch.arange(3))
    # μ_E − centre = ⅔ (μ_E − mean of the others), and the gap is the length of the latter
    assert torch.allclose(projected - centre, torch.full((3,), 2.0 / 3.0), atol=1e-5)
    assert torch.allclose(centre, torch.zeros(3), atol=1e-6)


def test_a_layer_where_the_classes_coincide_projects_to_zero_not_to_noise():
    directions = _directions()
    assert not directions.flat["audio"][:, 0].any() and directions.flat["audio"][:, 1].all()
    resid = torch.randn(3, 4, requires_grad=True)
    projected = directions.project("audio", 1, resid, torch.arange(3))
    projected.sum().backward()
    assert torch.equal(projected, torch.zeros(3)) and torch.equal(resid.grad, torch.zeros(3, 4))


def test_the_probe_reads_nothing_where_all_class_means_tie():
    """On a flat layer the nearest mean is a tie broken by the emotions' order (it read the first emotion); the
    probe now returns −1 there and still reads a separating layer."""
    directions = _directions()
    resid = directions.means["audio"][:, 1] + 0.1 * torch.randn(3, 4)
    assert torch.equal(directions.probe("audio", 1, resid), torch.full((3,), -1))
    assert torch.equal(directions.probe("audio", 0, directions.means["audio"][:, 0]), torch.arange(3))


def test_directions_move_to_a_device_once():
    """`to` moves the class means and everything derived from them; `project` and `probe` then run on that
    device with no per-call copies (the meta device stands in for a GPU: no data, shapes and devices only)."""
    directions = _directions()
    moved = directions.to("meta")
    assert moved is not directions and directions.to("cpu") is directions
    assert all(t.device.type == "meta" for name in ("means", "centre", "unit", "gap", "flat")
               for t in getattr(moved, name).values())
    resid = torch.empty(3, 4, device="meta")
    assert moved.project("audio", 0, resid, torch.arange(3, device="meta")).device.type == "meta"
