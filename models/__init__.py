"""Model adapters: one small interface to every supported audio-language model, the organism included."""
