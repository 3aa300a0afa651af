"""Logit lens and Patch Text vs Patch Audio on an audio-language model (the organism by default)."""
import sys

from common.cli import run_main
from probes.run import main

if __name__ == "__main__":
    sys.exit(run_main(main))
