"""Distil a guided teacher into a few-step student: `accelerate launch distill_ddpm.py [--config FILE] [--flags]`.

The teacher's guided sampler is run as an ODE (DDIM, eta 0) from noise to digit (teacher.py); a student, started from
the teacher's weights, learns to predict in one call where that path ends from any point of it at the timesteps it
will sample at (loop.py; a consistency-distillation objective with the teacher's own endpoints as targets). Its
sampler (scheduling_distilled.py) then takes 1, 2 or 4 calls, with no guidance doubling.
"""
