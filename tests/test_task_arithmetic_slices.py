"""The task-arithmetic family slice by slice: the same bits as on whole tensors, and a
peak memory of about the stored inputs of the tensor (not their fp32 copies)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import save_file

from otamerge.methods import streamed
from otamerge.methods.registry import implementation
from otamerge.methods.base import TensorInputs
from otamerge.methods.task_arithmetic import _whole

KINDS = {"ties": ("magnitude", True), "dare_ties": ("random", True), "dare_linear": ("random", False),
         "breadcrumbs": ("breadcrumbs", False), "breadcrumbs_ties": ("breadcrumbs", True),
         "task_arithmetic": (None, False)}


def _family(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    models = [(base.float() + torch.randn(shape, generator=g) * 0.002).bfloat16() for _ in range(3)]
    return base, models, [torch.rand(shape, generator=g) * 1e-8 for _ in range(3)]


CASES = [(m, trim_by, compat) for m, (kind, _) in sorted(KINDS.items())
         for trim_by in (("magnitude", "fisher") if kind in ("magnitude", "breadcrumbs") else ("magnitude",))
         for compat in (("mergekit", "fork") if kind == "breadcrumbs" else ("mergekit",))]


@pytest.mark.parametrize("method,trim_by,compat", CASES)
@pytest.mark.parametrize("rescale", [False, True])
def test_slices_give_the_bits_of_whole_tensors(monkeypatch, method, rescale, trim_by, compat):
    kind, consensus = KINDS[method]
    monkeypatch.setattr(streamed, "SLICE", 997)  # many slices, cut mid-row, bf16 ties across them
    base, models, moments = _family((60, 70))
    mps = [{"weight": w, "density": d, "gamma": gm}
           for w, d, gm in zip([0.5, 0.3, 0.2], [0.4, 1.0, 0.3], [0.01, 0.0001, 0.02])]
    params = {"rescale": rescale, "normalize": consensus, "lambda": 0.7, "trim_by": trim_by,
              "breadcrumbs_compat": compat}

    def inputs(owned):
        return TensorInputs("w", base.clone(), [m.clone() for m in models],
                            moments if trim_by == "fisher" else [None] * 3, mps, params, seed=5, owned=owned,
                            out_dtype=torch.bfloat16)

    want = _whole(inputs(True), kind, consensus, torch.float32).bfloat16()
    for owned in (True, False):
        got = streamed.merge(inputs(owned), kind, consensus, torch.float32)
        assert got.dtype == torch.bfloat16 and torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_a_nan_task_vector_is_ranked_on_the_whole_tensor_as_before():
    base, models, _ = _family((30, 40))
    models[1][3, 5] = float("nan")
    params = {"rescale": False, "normalize": True, "lambda": 1.0}
    inputs = TensorInputs("w", base, models, [None] * 3, [{"weight": 1.0, "density": 0.4}] * 3, params)
    with pytest.raises(streamed.Unsliceable):
        streamed.merge(inputs, "magnitude", True, torch.float32)
    got = implementation("ties").merge(inputs)
    assert torch.equal(got.view(torch.int32), _whole(inputs, "magnitude", True, torch.float32).view(torch.int32))


CHILD = """
import sys
from otamerge.merge import MergeOptions, merge_file
rss = lambda key: int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1]) * 1024
before = rss("VmRSS")
merge_file(sys.argv[1], sys.argv[2], MergeOptions(progress=False))
print(rss("VmHWM") - before)
"""


def test_ties_on_a_bf16_tensor_holds_about_its_stored_inputs(tmp_path):
    base, models, _ = _family((4096, 2048))  # 8M entries: 16 MiB a model in bf16, 32 MiB in fp32
    for name, t in [("base", base)] + [(f"e{i}", m) for i, m in enumerate(models)]:
        (tmp_path / name).mkdir()
        save_file({"w": t}, str(tmp_path / name / "model.safetensors"))
    cfg = {"merge_method": "ties", "base_model": str(tmp_path / "base"), "dtype": "bfloat16",
           "parameters": {"density": 0.4},
           "models": [{"model": str(tmp_path / f"e{i}"), "parameters": {"weight": 1.0}} for i in range(3)]}
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "c.yml"), str(tmp_path / "out")],
                         capture_output=True, text=True, check=True, env=env)
    stored = 4 * base.numel() * 2
    # the whole-tensor path held 4 fp32 copies besides the reads, |delta|, masks and a
    # divisor (over 4x stored); slice by slice it is the reads plus a few MiB per slice
    assert int(res.stdout.split()[-1]) < 2 * stored
