"""Probes over a model's residual stream: the logit lens and activation patching (Patch Text vs Patch Audio)."""
