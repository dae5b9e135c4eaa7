"""mergekit's slices: their output tensors by hand, and every malformed slice refused."""

import pytest

from otamerge.config import parse_config
from otamerge.errors import OtaMergeError
from otamerge.slices import plan_slices

NAMES = ["lm_head.weight", "model.embed_tokens.weight", "model.norm.weight",
         *(f"model.layers.{i}.{t}" for i in range(4) for t in ("mlp.up_proj.weight", "input_layernorm.weight"))]


def _cfg(slices, method="passthrough", **extra):
    return parse_config({"merge_method": method, "slices": slices, **extra})


def test_layers_stack_in_slice_order_and_the_rest_comes_from_the_first_or_last_slice():
    cfg = _cfg([{"sources": [{"model": "a", "layer_range": [0, 3]}]},
                {"sources": [{"model": "b", "layer_range": [1, 4]}], "parameters": {"scale": 2.0}}])
    plan = plan_slices(cfg.slices, NAMES)
    by_name = {st.name: st for st in plan}
    assert [st.name for st in plan][:1] == ["model.embed_tokens.weight"]  # embeddings first, from slice 0
    assert by_name["model.embed_tokens.weight"].slice is cfg.slices[0]
    assert by_name["model.norm.weight"].slice is by_name["lm_head.weight"].slice is cfg.slices[1]
    # output layer 4 is the second slice's second layer: b's layer 2, at t = 1/2 of that slice
    four = by_name["model.layers.4.mlp.up_proj.weight"]
    assert four.inputs == ("model.layers.2.mlp.up_proj.weight",) and four.t == 0.5
    assert by_name["model.layers.2.mlp.up_proj.weight"].inputs == ("model.layers.2.mlp.up_proj.weight",)
    assert len(plan) == 3 + 6 * 2
    assert [m.ref for m in cfg.models] == ["a", "b"]


@pytest.mark.parametrize("slices, extra, message", [
    ([{"sources": [{"model": "a", "layer_range": [2, 2]}]}], {}, r"layer_range \[start, end\)"),
    ([{"sources": [{"model": "a", "layer_range": [0, 2]}, {"model": "b", "layer_range": [0, 3]}]}], {},
     "every source of a slice spans as many layers"),
    ([{"sources": []}], {}, "a slice is a mapping of sources"),
    ([{"sources": [{"model": "a", "layer_range": [0, 2], "parameters": {"t": 0.5}}]}], {},
     "unknown parameter 't' for merge_method passthrough"),
    ([{"sources": [{"model": "a", "layer_range": [0, 2]}]}], {"models": [{"model": "a"}]}, "either models or slices"),
])
def test_malformed_slices_are_refused(slices, extra, message):
    with pytest.raises(OtaMergeError, match=message):
        _cfg(slices, **extra)


def test_a_range_beyond_a_models_layers_or_a_slice_without_the_base_is_a_one_line_error(tmp_path):
    from checkpoints import make_family
    from otamerge.merge import MergeOptions, run_merge

    fam = make_family(tmp_path / "fam", n_experts=1)  # two layers
    beyond = _cfg([{"sources": [{"model": str(fam["expert0"]), "layer_range": [1, 3]}]}])
    with pytest.raises(OtaMergeError, match=r"has no tensor model.layers.2.* \(a layer_range beyond its layers\?\)"):
        run_merge(beyond, tmp_path / "a", MergeOptions(progress=False))
    no_base = _cfg([{"sources": [{"model": str(fam["expert0"]), "layer_range": [0, 2]}]}], "slerp",
                   base_model=str(fam["base"]), parameters={"t": 0.5})
    with pytest.raises(OtaMergeError, match="does not hold the base model"):
        run_merge(no_base, tmp_path / "b", MergeOptions(progress=False))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
