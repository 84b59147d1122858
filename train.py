"""Train dictionaries with accelerate: `accelerate launch train.py [hf-bae train flags]`.

With no arguments it runs the demo (a BAE and a TopK SAE on the embedded model and corpus, a few
minutes on a CPU). `python train.py --help` lists every flag.
"""

import sys

from hf_bae.cli import demo, train

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(train.main(argv) if argv else demo.main([]))
