"""Calibration Hessians and the OBS (SparseGPT) importance: checked against direct
computations written here, the cache, and FFG with the sparsegpt metric."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import otamerge.curvature.hessians as hs
from checkpoints import MOMENTS, make_family
from otamerge.io.checkpoint import Checkpoint
from otamerge.errors import OtaMergeError
from otamerge.ffg.graft import FfgOptions, ffg_sweep
from otamerge.curvature.calibration import Calibration, calibration_tokens, read_text
from otamerge.curvature.hessians import hessians_cached, write_importance
from otamerge.curvature.moments import Moments

QUIET = FfgOptions(progress=False, chunk_bytes=1024)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("fam")
    out = make_family(root, n_experts=1, seed=5, hidden=16)
    text = root / "calibration.txt"
    text.write_text(" ".join(f"{i:02d}+{i + 7:02d}={2 * i + 7:03d} <abc=cba #rjm=jmr" for i in range(40)))
    out["calibration"] = text
    return out


def test_obs_saliency_of_a_linear_layer_equals_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    x[:, 4] = 0  # a dead input: H is singular without damping
    t = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    damping = 0.05
    h = x.numpy().T @ x.numpy()
    damped = h + damping * np.mean(np.diag(h)) * np.eye(6)
    direct = t.numpy() ** 2 / np.diag(np.linalg.inv(damped))[None, :]
    ours = hs.inverse_diagonal(torch.from_numpy(h), damping).reciprocal() * t.square()
    np.testing.assert_allclose(ours.numpy(), direct, rtol=1e-10)
    # SparseGPT's code: W^2 / diag(U)^2 with U the upper Cholesky factor of H^-1; U_00^2 is
    # [H^-1]_00, so on its first column it is this saliency
    u = np.linalg.cholesky(np.linalg.inv(damped)).T  # upper: H^-1 = U^T U
    np.testing.assert_allclose(t.numpy()[:, 0] ** 2 / u[0, 0] ** 2, direct[:, 0], rtol=1e-10)
    # OBS: the squared error of zeroing w_ij with row i's other entries compensating, by
    # least squares on X directly (damping adds ridge rows sqrt(lambda) * I to X)
    xd = np.vstack([x.numpy(), np.sqrt(damping * np.mean(np.diag(h))) * np.eye(6)])
    w = t.numpy()[0]
    for j in range(6):
        others = [k for k in range(6) if k != j]
        coef, *_ = np.linalg.lstsq(xd[:, others], xd @ w, rcond=None)
        err = np.sum((xd @ w - xd[:, others] @ coef) ** 2)
        assert err == pytest.approx(direct[0, j], rel=1e-8)
    weight = direct / t.numpy() ** 2  # per unit of t^2: a dead input matters least
    assert weight[0, 4] < weight[0, [0, 1, 2, 3, 5]].min() / 10


def _whole_model_hessians(model_dir, tokens):
    """Independent reference: every linear's input over a whole-model forward pass."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def add(module, args, key=f"{name}.weight"):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                out[key] = out.get(key, 0) + x.T @ x
            hooks.append(mod.register_forward_pre_hook(add))
    with torch.no_grad():
        for row in tokens:
            model(row[None], use_cache=False)
    return out


def test_layer_by_layer_hessians_equal_those_of_a_whole_model_pass(fam, tmp_path):
    cal = Calibration(str(fam["calibration"]), samples=5, seqlen=24, seed=3)
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(fam["base"]), cal)
    assert tokens.shape == (5, 24)
    hs.collect_hessians(fam["base"], cal, tmp_path / "h", progress=False)
    ours = Checkpoint(tmp_path / "h")
    ref = _whole_model_hessians(fam["base"], tokens)
    assert sorted(ours.names()) == sorted(ref) and len(ref) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    for name in ref:
        torch.testing.assert_close(ours.get(name).double(), ref[name], rtol=2e-5, atol=1e-4)
        assert ours.shape(name)[0] == (32 if "down_proj" in name else 16)


def test_the_second_use_reads_the_cache(fam, tmp_path, monkeypatch):
    calls = []
    real = hs.collect_hessians
    monkeypatch.setattr(hs, "collect_hessians", lambda *a, **k: calls.append(a) or real(*a, **k))
    cal = Calibration(str(fam["calibration"]), samples=4, seqlen=16)
    cache = tmp_path / "hessians"
    first, cached = hessians_cached(fam["base"], cal, cache, progress=False)
    assert (len(calls), cached) == (1, False)
    again, cached = hessians_cached(fam["base"], cal, cache, progress=False)
    assert (len(calls), cached) == (1, True)
    assert first.names() == again.names() and all(torch.equal(first.get(k), again.get(k)) for k in first.names())
    # another calibration set (or seed) is not served from the cache
    _, cached = hessians_cached(fam["base"], Calibration(cal.path, 4, 16, seed=1), cache, progress=False)
    assert (len(calls), cached) == (2, False)


def test_ffg_with_sparsegpt_importance_keeps_the_top_obs_saliencies(fam, tmp_path):
    cal = Calibration(str(fam["calibration"]), samples=6, seqlen=20)
    ckpt, _ = hessians_cached(fam["base"], cal, tmp_path / "h", progress=False)
    hessians = {n: ckpt.get(n) for n in ckpt.names()}
    imp = tmp_path / "importance.safetensors"
    meta = write_importance(tmp_path / "h", fam["base"], imp, damping=0.01, progress=False)
    base, expert = Checkpoint(fam["base"]), Checkpoint(fam["expert0"])
    names = base.names()
    fallback = [n for n in names if n not in hessians]
    assert meta["source_metadata"]["fallback_magnitude"] == fallback
    assert "model.embed_tokens.weight" in fallback and "model.norm.weight" in fallback
    # direct saliencies: t^2 / [H^-1]_jj (numpy inverse) on linears; t^2 * median on the rest
    cols = {}
    for n, h in hessians.items():
        h = h.double().numpy()
        inv = np.linalg.inv(h + 0.01 * np.mean(np.diag(h)) * np.eye(len(h)))
        cols[n] = 1 / np.diag(inv)
    scale = np.median(np.concatenate(list(cols.values())).astype(np.float32))
    sal = {n: (expert.get(n).double() - base.get(n).double()).numpy() ** 2 * (cols[n][None, :] if n in cols else scale)
           for n in names}
    flat = np.sort(np.concatenate([s.ravel() for s in sal.values()]))[::-1]
    k = int(round(0.2 * flat.size))
    thr = flat[k - 1]
    folder = ffg_sweep(fam["base"], fam["expert0"], imp, [0.2], "sparsegpt", tmp_path / "ffg", QUIET)[0.2]
    stats = json.loads((folder / "statistics.json").read_text())
    assert stats["metric"] == "sparsegpt" and stats["fallback_magnitude"] == fallback
    assert stats["moments"] == "sparsegpt" and stats["kept"] == k
    grafted = Checkpoint(folder)
    agree = total = 0
    for n in names:
        keep = sal[n] >= thr
        agree += int((keep == (grafted.get(n) == expert.get(n)).numpy()).sum()) if n.endswith("weight") else 0
        total += keep.size
    assert agree >= total - 2  # float32 rounding may move an entry at the threshold
    v = Moments(imp, "imp").get("model.layers.0.mlp.down_proj.weight")
    np.testing.assert_allclose(v[0].numpy(), cols["model.layers.0.mlp.down_proj.weight"], rtol=1e-5)
    assert torch.equal(v[0], v[-1])


def test_importance_and_metric_must_match_and_calibration_errors_are_clear(fam, tmp_path):
    cal = Calibration(str(fam["calibration"]), samples=2, seqlen=8)
    hessians_cached(fam["base"], cal, tmp_path / "h", progress=False)
    write_importance(tmp_path / "h", fam["base"], tmp_path / "imp.safetensors", progress=False)
    with pytest.raises(OtaMergeError, match="sparsegpt importance file given for the fisher metric"):
        ffg_sweep(fam["base"], fam["expert0"], tmp_path / "imp.safetensors", [0.1], "fisher", tmp_path / "o", QUIET)
    with pytest.raises(OtaMergeError, match="full importance file given for the sparsegpt metric"):
        ffg_sweep(fam["base"], fam["expert0"], fam["expert0"] / MOMENTS, [0.1], "sparsegpt", tmp_path / "o", QUIET)
    with pytest.raises(OtaMergeError, match="needs a OBS importance file"):
        ffg_sweep(fam["base"], fam["expert0"], None, [0.1], "sparsegpt", tmp_path / "o", QUIET)
    with pytest.raises(OtaMergeError, match="seqlen 64 exceeds the model's 32 positions"):
        hs.collect_hessians(fam["base"], Calibration(cal.path, 2, 64), tmp_path / "h64", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ab"}\n[1]\n')
    with pytest.raises(OtaMergeError, match=r"bad.jsonl, line 2: not a JSON object"):
        read_text(bad)
    with pytest.raises(OtaMergeError, match="fewer than seqlen"):
        calibration_tokens(AutoTokenizer.from_pretrained(fam["base"]), Calibration(str(fam["calibration"]), 1, 10**6))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("trim_by", ["fisher", "sparsegpt", "magnitude"])
def test_ties_trims_each_tensor_by_the_chosen_importance(fam, tmp_path, trim_by):
    import yaml

    from otamerge.merge import MergeOptions, merge_file

    hessians_cached(fam["base"], Calibration(str(fam["calibration"]), 4, 16), tmp_path / "h", progress=False)
    write_importance(tmp_path / "h", fam["base"], tmp_path / "imp.safetensors", progress=False)
    path = {"fisher": str(fam["expert0"] / MOMENTS), "sparsegpt": str(tmp_path / "imp.safetensors")}.get(trim_by)
    params = {"weight": 1.0, "density": 0.25, **({"preconditioner_path": path} if path else {})}
    cfg = {"merge_method": "ties", "base_model": str(fam["base"]), "dtype": "float32",
           "parameters": {"trim_by": trim_by}, "models": [{"model": str(fam["expert0"]), "parameters": params}]}
    (tmp_path / "m.yml").write_text(yaml.safe_dump(cfg))
    merged = Checkpoint(merge_file(tmp_path / "m.yml", tmp_path / "out", MergeOptions(progress=False)))
    base, expert = Checkpoint(fam["base"]), Checkpoint(fam["expert0"])
    v = None if path is None else Moments(path, "v")
    for name in base.names():
        t = expert.get(name) - base.get(name)
        score = t.abs() if v is None else v.get(name) * t.square()  # written here, not the engine's
        k = max(1, int(0.25 * t.numel()))
        direct = torch.zeros(t.numel(), dtype=torch.bool)
        direct[torch.argsort(score.flatten(), descending=True, stable=True)[:k]] = True
        kept = (merged.get(name) != base.get(name)).flatten()
        assert torch.equal(kept, direct), name


def test_trimming_by_curvature_needs_the_right_file(fam, tmp_path):
    import yaml

    from otamerge.merge import MergeOptions, merge_file

    def merge(method, params, trim_by):
        cfg = {"merge_method": method, "base_model": str(fam["base"]), "parameters": {"trim_by": trim_by},
               "models": [{"model": str(fam["expert0"]), "parameters": {"weight": 1.0, "density": 0.5, **params}}]}
        (tmp_path / "m.yml").write_text(yaml.safe_dump(cfg))
        return merge_file(tmp_path / "m.yml", tmp_path / "out", MergeOptions(progress=False))

    with pytest.raises(OtaMergeError, match="trim_by fisher needs its preconditioner_path"):
        merge("ties", {}, "fisher")
    with pytest.raises(OtaMergeError, match="full importance file given for the sparsegpt metric"):
        merge("ties", {"preconditioner_path": str(fam["expert0"] / MOMENTS)}, "sparsegpt")
    with pytest.raises(OtaMergeError, match="unknown parameter 'trim_by' for merge_method dare_ties"):
        merge("dare_ties", {}, "fisher")  # DARE drops at random: nothing to rank
    assert not (tmp_path / "out").exists()


def test_command_line_hessians_importance_and_ffg(fam, tmp_path, capsys):
    from otamerge.cli import main

    cal = ["--calibration", str(fam["calibration"]), "--samples", "3", "--seqlen", "12", "--quiet"]
    assert main(["hessians", str(fam["base"]), str(tmp_path / "h"), *cal]) == 0
    assert main(["hessians", str(fam["base"]), str(tmp_path / "h"), *cal]) == 0
    assert main(["importance", str(tmp_path / "h"), str(fam["base"]), str(tmp_path / "imp.safetensors"),
                 "--quiet"]) == 0
    assert main(["ffg", "--base", str(fam["base"]), "--expert", str(fam["expert0"]), "--moments",
                 str(tmp_path / "imp.safetensors"), "--metric", "sparsegpt", "--density", "0.3", "--quiet",
                 str(tmp_path / "ffg")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"15 Hessians collected: {tmp_path / 'h'}"
    assert out[1] == f"15 Hessians read from the cache: {tmp_path / 'h'}"
    assert "6 tensors fall back to magnitude" in out[2] and out[3].startswith("density 0.3: threshold")
    assert main(["ffg", "--base", str(fam["base"]), "--expert", str(fam["expert0"]), "--density", "0.3",
                 "--metric", "hessian", str(tmp_path / "bad")]) == 1
    assert "unknown FFG metric 'hessian'; use fisher, magnitude, sparsegpt" in capsys.readouterr().err
