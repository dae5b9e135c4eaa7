"""Karcher mean, defined as mergekit 0.1.5 defines it: the models' weighted mean on the sphere.

Each model's tensor ``w_i`` (weights a_i = 1/n) is split into its norm and its direction
u_i = w_i / |w_i|. The mean direction m starts at the normalised weighted mean of the u_i
(the first u_i where that mean nearly vanishes) and takes up to ``max_iter`` Riemannian
gradient steps on the unit sphere:

    g = sum_i a_i theta_i / sin(theta_i) (u_i - cos(theta_i) m),  cos(theta_i) = <m, u_i>
    m <- cos|g| m + sin|g| g / |g|,  then normalised

stopping when |g| < ``tol``; directions of models whose norm is at most ``tol`` are left
out. The result is m times the weighted mean norm sum_i a_i |w_i|. The operations are
mergekit's, in its order, so the bits agree with it. Norms span the tensor: whole tensors.
"""

from __future__ import annotations

import torch

from otamerge.methods.base import Implementation, TensorInputs


def _direction_mean(units: list[torch.Tensor], alphas: list[float], max_iter: int, tol: float) -> torch.Tensor:
    mean = torch.zeros_like(units[0])
    for a, u in zip(alphas, units):
        mean += a * u
    norm = torch.linalg.vector_norm(mean)
    mean = units[0].clone() if norm.item() < tol else mean / norm
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(alphas, units):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        step = torch.linalg.vector_norm(tangent)
        if step.item() < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (tangent / step)
        length = torch.linalg.vector_norm(mean)
        if length.item() > tol:
            mean = mean / length
    return mean


def karcher(inputs: TensorInputs) -> torch.Tensor:
    models, p = inputs.models, inputs.params
    if len(models) == 1:
        return models[0]
    alphas = [1.0 / len(models)] * len(models)
    norms = [torch.linalg.vector_norm(w) for w in models]
    units = [torch.zeros_like(w) if n.item() == 0.0 else w / n for w, n in zip(models, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > p["tol"]]
    if not valid:
        return torch.zeros_like(models[0])
    total = sum(alphas[i] for i in valid)
    mean = _direction_mean([units[i] for i in valid], [alphas[i] / total for i in valid], p["max_iter"], p["tol"])
    scale = sum(a * n for a, n in zip(alphas, norms))
    return scale * mean


IMPLEMENTS = {"karcher": Implementation(karcher, whole_tensor=lambda p, mp: True)}  # norms and dot products
