"""Prompt search over the prompt grammar, scored by the probes (the organism by default); see prompts/run.py."""
import sys

from common.cli import run_main
from prompts.run import main

if __name__ == "__main__":
    sys.exit(run_main(main))
