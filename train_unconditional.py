"""Train an unconditional DDPM: `accelerate launch train_unconditional.py [--preset mnist-tiny] [options]`."""

import sys

from ddpm_zoo.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], conditional=False))
