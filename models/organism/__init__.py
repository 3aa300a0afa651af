"""The organism: a small Qwen2AudioForConditionalGeneration trained by modalflip on its own synthetic stimuli."""
