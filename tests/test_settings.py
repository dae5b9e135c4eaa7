"""Gradients and filters of mergekit's YAML: values per tensor computed by hand."""

import pytest

from otamerge.config import parse_config, tensor_params
from otamerge.errors import OtaMergeError
from otamerge.settings import check_setting, count_layers, evaluate, layer_position


def _checked(setting):
    return check_setting(setting, lambda x: x, "parameters")


def test_a_gradient_interpolates_between_its_neighbouring_endpoints():
    g = _checked([0, 0.5, 0.3, 0.7, 1])
    assert evaluate(g, "x", 0.0, float) == 0
    assert evaluate(g, "x", 1 / 3, float) == pytest.approx(0.5 * 2 / 3 + 0.3 / 3)  # 4/3 of the way: endpoints 1, 2
    assert evaluate(g, "x", 1.0, float) == 1
    # booleans and strings are not interpolated: the endpoint at int(t (n - 1))
    assert evaluate(_checked([True, False]), "x", 0.99, bool) is True
    assert evaluate(_checked(["a", "b", "c"]), "x", 0.5, str) == "b"


def test_filters_take_the_first_match_and_none_means_not_given():
    f = _checked([{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.3}])
    assert evaluate(f, "model.layers.2.self_attn.q_proj.weight", 0.5, float) == 0.5
    assert evaluate(f, "model.layers.2.mlp.up_proj.weight", 0.5, float) == 0.3
    assert evaluate(f, "model.norm.weight", 0.0, float) is None
    assert evaluate(_checked({"filter": "*", "value": 2}), "anything", 0.0, float) == 2


def test_layer_positions_are_mergekits():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)] + ["model.embed_tokens.weight"]
    assert count_layers(names) == 4
    assert [layer_position(n, 4) for n in names] == [0, 1 / 3, 2 / 3, 1, 0]
    assert layer_position("model.layers.0.mlp.up_proj.weight", 1) == 1.0


@pytest.mark.parametrize("bad, message", [([], "empty list"), ([{"filter": "mlp"}], "mappings of filter and value"),
                                          ([{"value": 1, "scope": 2}], "mappings of filter and value")])
def test_malformed_settings_are_refused(bad, message):
    with pytest.raises(OtaMergeError, match=message):
        _checked(bad)


def _slerp(t):
    return parse_config({"merge_method": "slerp", "base_model": "b", "models": [{"model": "b"}, {"model": "e"}],
                         "parameters": {"t": t}})


def test_a_required_value_given_by_filters_is_checked_per_tensor():
    cfg = _slerp([{"filter": "self_attn", "value": [0.2, 0.8]}])
    assert cfg.varies and cfg.params["t"] is None  # decided per tensor
    glob, _ = tensor_params(cfg, "model.layers.1.self_attn.v_proj.weight", 0.5)
    assert glob["t"] == pytest.approx(0.5)
    with pytest.raises(OtaMergeError, match=r"tensor model.norm.weight: parameters: slerp needs parameter 't'"):
        tensor_params(cfg, "model.norm.weight", 0.0)
    with pytest.raises(OtaMergeError, match=r"parameter t='x' is not a float"):
        _slerp(["x", 0.5])
    assert not _slerp(0.4).varies
