"""Prompt search: a prompt grammar sampled by Optuna and scored by the probes (audio flip, text control)."""
