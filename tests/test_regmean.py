"""RegMean against the least-squares problem it solves, computed here with numpy in fp64
from the inputs themselves (not from Gram matrices), and through the command line on a
family whose Gram matrices come from `otamerge hessians`."""

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from otamerge.methods.base import TensorInputs
from otamerge.methods.regmean import regmean


def _models(tmp_path, n=3, out=5, inp=4, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((20 + 7 * i, inp)) for i in range(n)]  # each model's own inputs
    ws = [rng.standard_normal((out, inp)) for _ in range(n)]
    paths = []
    for i, x in enumerate(xs):
        path = tmp_path / f"gram{i}.safetensors"
        save_file({"layer.weight": torch.from_numpy(x.T @ x)}, str(path))
        paths.append(str(path))
    return xs, ws, paths


def _inputs(name, ws, paths, ratio):
    models = [torch.from_numpy(w) for w in ws]
    return TensorInputs(name, None, models, [None] * len(ws), [{"gram_path": p} for p in paths],
                        {"reduce_non_diagonal_ratio": ratio})


def test_regmean_is_the_least_squares_merge_of_the_layers_outputs(tmp_path):
    xs, ws, paths = _models(tmp_path)
    # min_W sum_i ||X_i W^T - X_i W_i^T||^2: one least-squares problem over the stacked inputs
    exact, *_ = np.linalg.lstsq(np.vstack(xs), np.vstack([x @ w.T for x, w in zip(xs, ws)]), rcond=None)
    np.testing.assert_allclose(regmean(_inputs("layer.weight", ws, paths, 1.0)).numpy(), exact.T, rtol=1e-10,
                               atol=1e-12)


def test_shrinking_the_off_diagonals_moves_towards_the_inputs_weighted_mean(tmp_path):
    xs, ws, paths = _models(tmp_path, seed=1)
    grams = [x.T @ x for x in xs]
    shrunk = [0.6 * g + np.diag(0.4 * np.diag(g)) for g in grams]
    expected = np.linalg.solve(sum(shrunk), sum(g @ w.T for g, w in zip(shrunk, ws))).T
    np.testing.assert_allclose(regmean(_inputs("layer.weight", ws, paths, 0.6)).numpy(), expected, rtol=1e-10)
    # ratio 0: each input column weighted by its squared activations alone (diagonal Grams)
    diag = [np.diag(g) for g in grams]
    expected0 = sum(d * w for d, w in zip(diag, ws)) / sum(diag)
    np.testing.assert_allclose(regmean(_inputs("layer.weight", ws, paths, 0.0)).numpy(), expected0, rtol=1e-10)


def test_inputs_that_span_too_few_directions_stop_the_merge(tmp_path):
    """Inputs of 4 features that all lie in 2 dimensions: the summed Gram is singular and the
    least-squares merge is not unique; shrinking the off-diagonals makes it definite."""
    from otamerge.errors import OtaMergeError

    rng = np.random.default_rng(3)
    ws, paths = [rng.standard_normal((5, 4)) for _ in range(2)], []
    for i in range(2):
        x = rng.standard_normal((30, 2)) @ np.array([[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 1.0, -1.0]])
        paths.append(str(tmp_path / f"g{i}.safetensors"))
        save_file({"layer.weight": torch.from_numpy(x.T @ x)}, paths[-1])
    with pytest.raises(OtaMergeError, match="layer.weight's inputs sum to a singular matrix"):
        regmean(_inputs("layer.weight", ws, paths, 1.0))
    assert torch.isfinite(regmean(_inputs("layer.weight", ws, paths, 0.6))).all()


def test_a_tensor_without_gram_matrices_is_the_models_mean(tmp_path):
    _, ws, paths = _models(tmp_path)
    np.testing.assert_allclose(regmean(_inputs("other.weight", ws, paths, 1.0)).numpy(), np.mean(ws, axis=0))


def test_regmean_from_the_hessians_of_each_experts_own_text(tmp_path):
    from checkpoints import make_family
    from otamerge.cli import main

    fam = make_family(tmp_path / "fam", n_experts=2, seed=5, hidden=16)
    models = []
    for i in range(2):
        text = tmp_path / f"text{i}.txt"
        text.write_text(" ".join(f"{j:02d}+{j + 3 * i:02d}={2 * j:03d} <abc=cba" for j in range(40)))
        assert main(["hessians", str(fam[f"expert{i}"]), str(tmp_path / f"h{i}"), "--calibration", str(text),
                     "--samples", "3", "--seqlen", "12", "--quiet"]) == 0
        models.append({"model": str(fam[f"expert{i}"]), "parameters": {"gram_path": str(tmp_path / f"h{i}")}})
    cfg = tmp_path / "regmean.yml"
    cfg.write_text(yaml.safe_dump({"merge_method": "regmean", "models": models, "dtype": "float32"}))
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--quiet"]) == 0
    merged = load_file(str(tmp_path / "out/model.safetensors"))
    ws = [load_file(str(fam[f"expert{i}"] / "model.safetensors")) for i in range(2)]
    grams = [load_file(str(next((tmp_path / f"h{i}").glob("*.safetensors")))) for i in range(2)]
    name = "model.layers.1.mlp.down_proj.weight"
    g = [x[name].double().numpy() for x in grams]
    expected = np.linalg.solve(sum(g), sum(gi @ w[name].double().numpy().T for gi, w in zip(g, ws))).T
    np.testing.assert_allclose(merged[name].double().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert not torch.equal(merged[name], (ws[0][name] + ws[1][name]) / 2)
    torch.testing.assert_close(merged["model.embed_tokens.weight"],
                               (ws[0]["model.embed_tokens.weight"] + ws[1]["model.embed_tokens.weight"]) / 2)


def test_the_workflow_computes_each_experts_gram_matrices_on_its_own_task(tmp_path):
    """A RegMean merge of the tiny demo: each expert's text holds only its own task's
    training examples; its Gram matrix of a linear layer is X^T X of that layer's inputs
    in the expert on windows of that text (hooked here); the merged layer is the
    least-squares merge solved here from those matrices (off-diagonals times 0.6: at 1 the
    first layer's, whose inputs are a small vocabulary's normalised embeddings, are singular)."""
    import re

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import tiny_config
    from otamerge.curvature.calibration import Calibration, calibration_tokens
    from otamerge.workflow import layout
    from workflow_utils import snakemake

    cfg = tiny_config()
    cfg["demo"]["threads"] = 1
    cfg["merges"] = {"regmean": {"method": "regmean", "dtype": "float32",
                                 "parameters": {"reduce_non_diagonal_ratio": 0.6}}}
    cfg["regmean"] = {"examples": 300, "samples": 6, "seqlen": 32}
    wf = tmp_path / "wf"
    run = snakemake(wf, "--cores", "2", layout.merged_model(0, "regmean"), config=cfg)
    assert run.returncode == 0, run.stderr[-3000:]
    pattern = {"add": r"\d+\+\d+=\d+", "rev": r"<[a-z]+=[a-z]+"}
    name = "model.layers.1.self_attn.q_proj.weight"
    grams, weights = [], []
    for expert in ("add", "rev"):
        text = wf / layout.expert_text("resources/demo", 0, expert)
        examples = text.read_text().split(" ")
        assert len(examples) == 300 and all(re.fullmatch(pattern[expert], x) for x in examples), examples[:5]
        folder = wf / layout.downloaded_model(0, expert)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokens = calibration_tokens(AutoTokenizer.from_pretrained(folder), Calibration(str(text), 6, 32, 0))
        seen = []
        layer = model.model.layers[1].self_attn.q_proj
        hook = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, m.in_features)))
        with torch.no_grad():
            model(input_ids=tokens)
        hook.remove()
        x = torch.cat(seen).double().numpy()
        gram = load_file(str(next((wf / layout.gram_dir(0, expert)).glob("*.safetensors"))))[name].double().numpy()
        np.testing.assert_allclose(gram, x.T @ x, rtol=1e-4, atol=1e-4 * np.abs(gram).max())
        grams.append(0.6 * gram + np.diag(0.4 * np.diag(gram)))
        weights.append(layer.weight.detach().double().numpy())
    merged = load_file(str(wf / layout.merged_model(0, "regmean") / "model.safetensors"))[name].double().numpy()
    expected = np.linalg.solve(sum(grams), sum(g @ w.T for g, w in zip(grams, weights))).T
    np.testing.assert_allclose(merged, expected, rtol=1e-4, atol=1e-6)
    config = yaml.safe_load((wf / layout.merge_config(0, "regmean")).read_text())
    assert [m["parameters"]["gram_path"] for m in config["models"]] == [layout.gram_dir(0, e) for e in ("add", "rev")]
