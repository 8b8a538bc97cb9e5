#!/usr/bin/env python
"""Train a DDPM on MNIST: `accelerate launch train_ddpm.py [--config FILE.yaml] [--flag value ...]`.

`--help` lists every flag with the value a bare run uses. The trainer lives in the package (ddpm_pipeline/training:
loop.py reads top to bottom); this file only starts it, and nothing imports it.
"""

import sys

from ddpm_pipeline.training import main

if __name__ == "__main__":
    sys.exit(main())
