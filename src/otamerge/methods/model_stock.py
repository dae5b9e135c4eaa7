"""Model Stock (Jang et al. 2024, arXiv 2403.19522), defined as mergekit 0.1.5 defines it.

With the base ``w_0`` and ``k >= 2`` fine-tuned models ``w_i``, per tensor (or, with
``filter_wise``, per output row):

    cos    = mean over pairs i < j of <w_i - w_0, w_j - w_0> / max(|w_i - w_0| |w_j - w_0|, 1e-6)
    t      = k cos / (1 + (k - 1) cos)            (0 where |1 + (k - 1) cos| < 1e-6)
    merged = t mean_i(w_i) + (1 - t) w_0

the interpolation between the models' average and the base that the paper derives from the
angle between fine-tuned models. Norms and dot products span the tensor, so whole tensors
are taken.
"""

from __future__ import annotations

import torch

from otamerge.errors import OtaMergeError
from otamerge.methods.base import Implementation, TensorInputs


def model_stock(inputs: TensorInputs) -> torch.Tensor:
    base, models = inputs.base, inputs.models
    if base is None or len(models) < 2:
        raise OtaMergeError(f"tensor {inputs.name}: model_stock needs the base and at least two other models "
                            f"(got {len(models)} besides the base)")
    shape = base.shape
    if inputs.params["filter_wise"]:
        w0, ws = (base[None], [w[None] for w in models]) if base.dim() == 1 else (base, models)
    else:
        w0, ws = base.reshape(-1), [w.reshape(-1) for w in models]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite estimate: keep the base there
    t = torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, 1, denominator))
    average = ws[0]
    for w in ws[1:]:
        average = average + w
    return (t * (average / k) + (1 - t) * w0).reshape(shape)


IMPLEMENTS = {
    "model_stock": Implementation(model_stock, whole_tensor=lambda p, mp: True),  # norms and dot products (or of rows)
}
