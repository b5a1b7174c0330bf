"""Instruments: sharpness, loss landscapes, solution distances and the noisy quadratic model. They compute and never plot."""
