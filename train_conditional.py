"""Train a class-conditional DDPM with classifier-free guidance:
`accelerate launch train_conditional.py [--preset colored-mnist] [options]`."""

import sys

from ddpm_zoo.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], conditional=True))
