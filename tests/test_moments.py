import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import make_family
from otamerge.cli import main
from otamerge.errors import OtaMergeError
from otamerge.curvature.moments import BIAS_KEY, OPTIMIZER_KEY, Moments, compress, correct_bias


def _direct_rank1(v):
    m, n = v.shape
    rows = [sum(float(v[i, j]) for j in range(n)) for i in range(m)]
    cols = [sum(float(v[i, j]) for i in range(m)) for j in range(n)]
    total = sum(rows)
    return torch.tensor([[rows[i] * cols[j] / total for j in range(n)] for i in range(m)], dtype=torch.float64)


def test_rank1_file_expands_to_row_sums_times_column_sums_over_total(tmp_path):
    g = torch.Generator().manual_seed(0)
    v = {"a.weight": torch.rand(7, 5, generator=g) ** 4, "a.bias": torch.rand(5, generator=g)}
    save_file(v, str(tmp_path / "m.safetensors"))
    src = Moments(tmp_path / "m.safetensors", "m")
    report = compress(src, ["a.bias", "a.weight"], tmp_path / "r1.safetensors", progress=False)
    r1 = Moments(tmp_path / "r1.safetensors", "r1")
    assert r1.kind == "rank1" and r1.shape("a.weight") == (7, 5)
    assert torch.allclose(r1.get("a.weight").double(), _direct_rank1(v["a.weight"]), rtol=1e-6)
    assert torch.equal(r1.get("a.weight", (2, 5)), r1.get("a.weight")[2:5])  # row chunks
    assert torch.equal(r1.get("a.bias"), v["a.bias"])
    assert report["compressed_bytes_2d"] == (7 + 5 + 1) * 4 and report["full_bytes_2d"] == 35 * 4


def test_rank_r_is_the_clipped_truncated_svd(tmp_path):
    g = torch.Generator().manual_seed(1)
    v = torch.rand(12, 9, generator=g)
    save_file({"w": v}, str(tmp_path / "m.safetensors"))
    compress(Moments(tmp_path / "m.safetensors", "m"), ["w"], tmp_path / "r3.safetensors", rank=3, progress=False)
    u, s, vh = torch.linalg.svd(v.double())
    want = torch.clamp((u[:, :3] @ torch.diag(s[:3]) @ vh[:3]), min=0)
    got = Moments(tmp_path / "r3.safetensors", "r3").get("w")
    assert torch.allclose(got.double(), want, atol=1e-6)


def test_storage_reduction_on_a_llama_shaped_set_is_at_least_99_percent(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from synthetic import llama_shapes

    shapes = llama_shapes(layers=2, hidden=512, intermediate=1792, vocab=8000)
    g = torch.Generator().manual_seed(2)
    save_file({k: torch.rand(s, generator=g) for k, s in shapes.items()}, str(tmp_path / "m.safetensors"))
    assert main(["compress-moments", str(tmp_path / "m.safetensors"), str(tmp_path / "r1.safetensors"),
                 "--report", str(tmp_path / "rep.json"), "--quiet"]) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["reduction_2d"] >= 0.99
    on_disk = os.path.getsize(tmp_path / "r1.safetensors") / os.path.getsize(tmp_path / "m.safetensors")
    assert on_disk < 0.01


def test_exp_avg_sq_suffixed_keys_and_validation(tmp_path):
    save_file({"w.exp_avg_sq": torch.ones(3, 2), "b.exp_avg_sq": torch.tensor([1.0, -1.0])},
              str(tmp_path / "m.safetensors"))
    m = Moments(tmp_path / "m.safetensors", "moments of x")
    assert torch.equal(m.get("w"), torch.ones(3, 2))
    with pytest.raises(OtaMergeError, match="moments tensor b.exp_avg_sq in .* has negative values"):
        m.get("b")
    with pytest.raises(OtaMergeError, match="tensor c missing from moments file"):
        m.get("c")


def _adam_file(path, meta=None):
    g = torch.Generator().manual_seed(3)
    v = {"w.weight": torch.rand(9, 4, generator=g) ** 6, "w.bias.exp_avg_sq": torch.rand(4, generator=g)}
    save_file(v, str(path), metadata=meta)
    return v


def test_bias_correction_divides_by_one_minus_beta2_to_the_step(tmp_path):
    meta = {OPTIMIZER_KEY: json.dumps({"step": 300, "betas": [0.9, 0.999]})}
    v = _adam_file(tmp_path / "m.safetensors", meta)
    applied = correct_bias(Moments(tmp_path / "m.safetensors", "m"), tmp_path / "c.safetensors",
                           chunk_bytes=16, progress=False)
    factor = 1 - 0.999 ** 300  # 0.2593...
    assert applied["factor"] == pytest.approx(factor, rel=1e-15) and applied["step"] == 300
    out = load_file(str(tmp_path / "c.safetensors"))
    assert sorted(out) == ["w.bias", "w.weight"]
    for name, raw in (("w.weight", v["w.weight"]), ("w.bias", v["w.bias.exp_avg_sq"])):
        expected = (raw.double() / factor).float()
        assert torch.equal(out[name], expected) or (out[name] - expected).abs().max() <= expected.abs().max() * 2 ** -23
    with open(tmp_path / "c.safetensors", "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))["__metadata__"]
    assert json.loads(header[BIAS_KEY])["beta2"] == 0.999 and OPTIMIZER_KEY in header


def test_bias_correction_takes_step_and_beta2_from_config_when_the_file_has_none(tmp_path):
    _adam_file(tmp_path / "m.safetensors")
    with pytest.raises(OtaMergeError, match="needs Adam's step count and beta2"):
        correct_bias(Moments(tmp_path / "m.safetensors", "m"), tmp_path / "c.safetensors", progress=False)
    assert not (tmp_path / "c.safetensors").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    applied = correct_bias(Moments(tmp_path / "m.safetensors", "m"), tmp_path / "c.safetensors", step=1, beta2=0.5,
                           progress=False)
    assert applied["factor"] == 0.5
    with pytest.raises(OtaMergeError, match="step count >= 1 and 0 < beta2 < 1"):
        correct_bias(Moments(tmp_path / "m.safetensors", "m"), tmp_path / "d.safetensors", step=0, beta2=0.5,
                     progress=False)
