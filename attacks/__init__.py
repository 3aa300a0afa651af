"""Audio attacks that use probes as objectives: PGD on the waveform so the voice's emotion persists (`pgd`)."""
