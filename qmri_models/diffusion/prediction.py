"""What a denoiser predicts, by name (no torch here: training configurations and the command line read it)."""

from typing import Literal, get_args

Prediction = Literal["epsilon", "v_prediction", "sample"]
"""What the network predicts: the noise (Ho et al., the qMRI Diffusor paper), the velocity
``v = sqrt(abar) eps - sqrt(1 - abar) x_0`` (Salimans and Ho 2022) or the clean sample ``x_0``."""

PREDICTIONS: tuple[str, ...] = get_args(Prediction)
