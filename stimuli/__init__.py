"""Stimuli: the seed set as data, TTS and other audio sources, and the three experimental conditions."""
