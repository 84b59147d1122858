"""hf_bae feature browser: a Gradio Space over a dictionary (BAE or SAE) and its feature atlas.

Run locally:      python spaces_app/app.py --dictionary DIR --atlas DIR      (or `hf-bae space ...`)
As a Space:       this folder unchanged; configure it with Space variables
                  HF_BAE_ATLAS (atlas folder(s) / Hub dataset id(s), comma-separated),
                  HF_BAE_DICTIONARY (dictionary folder(s) / Hub id(s), same order; old name HF_BAE_MODEL),
                  HF_BAE_BASE_MODEL (optional language model; old name HF_BAE_LM).
With neither, a small default atlas of the embedded model is built on first start and cached.
"""

import sys
from pathlib import Path

try:
    import hf_bae  # noqa: F401
except ImportError:  # running from a source checkout without installing it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_bae.cli.space import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
