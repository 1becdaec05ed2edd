"""The quantile (pinball) loss that trains a head to predict a conditional quantile (seed 001, eq. (1)).

For quantile q, prediction p and target y::

    L_q(p, y) = q (y - p)          if y > p
                (1 - q) (p - y)    otherwise

Its expectation over y is smallest when p is the q-quantile of y (Koenker and Bassett 1978).
"""

import torch


def pinball_loss(prediction: torch.Tensor, target: torch.Tensor, quantile: float) -> torch.Tensor:
    """Return the mean pinball loss of predicted ``quantile``-quantiles against targets.

    Parameters
    ----------
    prediction : Predicted quantile of every element. Shape `(...)`.
    target : True value of every element, same shape, dtype and device.
    quantile : Quantile the prediction estimates, in (0, 1) (alpha / 2 for the lower head, 1 - alpha / 2 for the
        upper one).

    Returns
    -------
    Mean loss over all elements, in the unit of the target. Shape `()`.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    residual = target - prediction
    return torch.maximum(quantile * residual, (quantile - 1.0) * residual).mean()
