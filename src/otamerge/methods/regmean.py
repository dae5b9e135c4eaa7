"""RegMean (Jin et al., 2023): the merge of each linear layer that best reproduces every
model's outputs on that model's own inputs, in closed form.

For a linear weight W (out x in) and each model i with the Gram matrix G_i = X_i^T X_i of
the layer's inputs on its own calibration text, the merge minimises
sum_i ||X_i W^T - X_i W_i^T||^2:

    W^T = (sum_i G~_i)^-1 sum_i G~_i W_i^T,    G~_i = G_i with its off-diagonal entries
                                               times ``reduce_non_diagonal_ratio``

(1 is the exact least-squares merge; below 1 shrinks it towards the average, as the paper
does to keep the solve well conditioned.) Each model's ``gram_path`` is a Hessian cache of
``otamerge hessians MODEL OUT --calibration TEXT`` (X^T X summed over its tokens, keyed by
the weight's name; give every model the same number of calibration tokens, or larger sets
weigh more). A tensor without a Gram matrix (embeddings, norms, the head) is the models'
mean. The solve is in fp64 (Cholesky); a summed Gram matrix that is not positive definite
stops the merge with an error naming the tensor.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from otamerge.errors import OtaMergeError
from otamerge.io.checkpoint import Checkpoint
from otamerge.methods.base import Implementation, TensorInputs


@lru_cache(maxsize=64)
def _grams(path: str) -> Checkpoint:
    """A model's Gram matrices, opened once per merge process (read lazily by name)."""
    return Checkpoint(path, f"Gram matrices {path}")


def _reduced(g: torch.Tensor, ratio: float) -> torch.Tensor:
    off = g * ratio
    return off + torch.diag(torch.diagonal(g) - torch.diagonal(off))


def regmean(inputs: TensorInputs) -> torch.Tensor:
    paths = [mp["gram_path"] for mp in inputs.model_params]
    sources = [_grams(p) for p in paths]
    if inputs.models[0].dim() != 2 or not all(inputs.name in g for g in sources):
        return torch.stack(inputs.models).mean(dim=0)
    ratio = inputs.params["reduce_non_diagonal_ratio"]
    grams = [_reduced(g.get(inputs.name).double(), ratio) for g in sources]
    rhs = sum(g @ w.double().T for g, w in zip(grams, inputs.models))
    # the summed Gram is positive definite only where the calibration inputs span every
    # input direction; otherwise the merge is arbitrary off their span (a small vocabulary
    # feeding layer 0 spans a few of its dimensions), so refuse instead of writing it
    factor, info = torch.linalg.cholesky_ex(sum(grams))
    if info:
        raise OtaMergeError(f"RegMean: the Gram matrices of {inputs.name}'s inputs sum to a singular matrix (the "
                            "calibration texts do not span its input space): set reduce_non_diagonal_ratio below 1 "
                            "(0.6 in FusionBench's GPT-2 setting) or calibrate on more varied text")
    return torch.cholesky_solve(rhs, factor).T.to(inputs.models[0].dtype)


IMPLEMENTS = {"regmean": Implementation(regmean, whole_tensor=lambda p, mp: True)}
