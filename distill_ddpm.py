#!/usr/bin/env python
"""Distil a guided teacher into a few-step student: `accelerate launch distill_ddpm.py [--config FILE] [--flags]`.

`--help` lists every flag with the value a bare run uses (the flagship into a 4-step student). The distiller lives in
the package (ddpm_pipeline/distillation: loop.py reads top to bottom); this file only starts it.
"""

import sys

from ddpm_pipeline.distillation.main import main

if __name__ == "__main__":
    sys.exit(main())
