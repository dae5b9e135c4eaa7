"""LoRA-adapter experts: the dense weights they stand for, against peft's merge_and_unload
and a direct B A product, and their use by merges and FFG."""

import json

import peft  # a test dependency (pyproject's test extra): these tests never skip
import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from checkpoints import MOMENTS, make_family
from otamerge.io.checkpoint import Checkpoint
from otamerge.errors import OtaMergeError
from otamerge.ffg.graft import FfgOptions, ffg_sweep
from otamerge.io.lora import LoraExpert
from otamerge.merge import MergeOptions, merge_file


QUIET = MergeOptions(progress=False, chunk_bytes=512)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=1, seed=9, hidden=16)


@pytest.fixture(scope="module")
def adapter(fam, tmp_path_factory):
    """A PEFT adapter with trained-looking factors, per-module rank and alpha, and
    lm_head in modules_to_save; and the dense model peft's merge_and_unload makes of it."""
    root = tmp_path_factory.mktemp("lora")
    model = AutoModelForCausalLM.from_pretrained(fam["base"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                             rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3},
                             modules_to_save=["lm_head"])
    lora = peft.get_peft_model(model, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    lora.save_pretrained(root / "adapter")
    dense = lora.merge_and_unload()
    dense.save_pretrained(root / "dense")
    return root / "adapter", root / "dense"


def test_adapter_reads_as_peft_merge_and_unload(fam, adapter):
    folder, dense = adapter
    base = Checkpoint(fam["base"])
    lora, ref = LoraExpert(folder, base, "lora"), Checkpoint(dense)
    assert sorted(lora.delta) == sorted(f"model.layers.{i}.{m}.weight" for i in range(2)
                                        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    assert lora.replaced == {"lm_head.weight": "base_model.model.lm_head.weight"}
    assert lora.delta["model.layers.0.mlp.down_proj.weight"][2] == 8 / 2
    assert lora.delta["model.layers.1.self_attn.v_proj.weight"][2] == 3 / 4
    changed = 0
    for name in ref.names():
        ours = lora.get(name)
        torch.testing.assert_close(ours, ref.get(name), rtol=0, atol=1e-7)
        changed += not torch.equal(ours, base.get(name))
        rows = (3, 7) if ours.dim() == 2 else None
        assert torch.equal(lora.get(name, rows), ours[3:7] if rows else ours)  # row chunks, same bits
    assert changed == 2 * 3 + 1


def test_factors_that_do_not_fit_the_base_weight_are_refused(fam, tmp_path):
    base = Checkpoint(fam["base"])
    name = "model.layers.0.mlp.up_proj"  # 32 x 16 in the base
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 3, "lora_alpha": 6,
                                                              "fan_in_fan_out": True}))
    save_file({f"base_model.model.{name}.lora_A.weight": torch.ones(3, 16),
               f"base_model.model.{name}.lora_B.weight": torch.ones(32, 3)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(OtaMergeError, match=r"LoRA factors of model.layers.0.mlp.up_proj.weight have shapes "
                                            r"\[3, 16\] and \[32, 3\], the base weight \[32, 16\]"):
        LoraExpert(tmp_path, base, "fifo")  # right for nn.Linear; fan_in_fan_out stores W as (in, out) = (16, 32)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(OtaMergeError, match="DoRA adapters are not supported"):
        LoraExpert(tmp_path, base, "dora")


def test_fan_in_fan_out_is_the_transposed_product(tmp_path):
    fam = make_family(tmp_path / "sq", n_experts=0, seed=3, hidden=16)
    base = Checkpoint(fam["base"])
    name = "model.layers.1.self_attn.o_proj"  # 16 x 16: stored layout (in, out) is the same shape
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 16, generator=gen), torch.randn(16, 3, generator=gen)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 3, "lora_alpha": 6, "use_rslora": True, "fan_in_fan_out": True}))
    save_file({f"base_model.model.{name}.lora_A.weight": a, f"base_model.model.{name}.lora_B.weight": b},
              str(tmp_path / "a/adapter_model.safetensors"))
    lora = LoraExpert(tmp_path / "a", base, "fifo")
    w = base.get(f"{name}.weight")
    direct = w + (b @ a).T * (6 / 3 ** 0.5)
    torch.testing.assert_close(lora.get(f"{name}.weight"), direct, rtol=0, atol=1e-6)
    assert torch.equal(lora.get(f"{name}.weight", (5, 9)), lora.get(f"{name}.weight")[5:9])


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_merges_and_ffg_take_an_adapter_as_the_dense_expert(fam, adapter, tmp_path):
    folder, dense = adapter
    for method in ("task_arithmetic", "ties"):
        outs = []
        for expert in (folder, dense):
            cfg = {"merge_method": method, "base_model": str(fam["base"]), "dtype": "float32",
                   "models": [{"model": str(expert), "parameters": {"weight": 0.5, "density": 0.3}},
                              {"model": str(fam["expert0"]), "parameters": {"weight": 0.5, "density": 0.3}}]}
            out = tmp_path / f"{method}-{expert.name}"
            merge_file(_write(tmp_path / f"{method}-{expert.name}.yml", cfg), out, QUIET)
            outs.append(Checkpoint(out))
        for n in outs[1].names():
            torch.testing.assert_close(outs[0].get(n), outs[1].get(n), rtol=0, atol=1e-6)
    grafts = [ffg_sweep(fam["base"], e, None, [0.1], "magnitude", tmp_path / f"ffg-{e.name}",
                        FfgOptions(progress=False))[0.1] for e in (folder, dense)]
    kept = [json.loads((g / "statistics.json").read_text())["kept"] for g in grafts]
    assert kept[0] == kept[1] > 0 and (grafts[0] / "config.json").is_file()


def test_fisher_with_an_adapters_own_moments_says_they_must_be_full_shape(fam, adapter, tmp_path):
    folder, _ = adapter
    ck = Checkpoint(folder / "adapter_model.safetensors")
    moments = {k.removeprefix("base_model.model."): torch.rand(ck.shape(k)) + 1e-3 for k in ck.names()}
    save_file(moments, str(tmp_path / "adapter_moments.safetensors"))
    cfg = {"merge_method": "ota", "base_model": str(fam["base"]),
           "models": [{"model": str(folder), "parameters": {"preconditioner_path": str(tmp_path / "adapter_moments.safetensors")}},
                      {"model": str(fam["expert0"]), "parameters": {"preconditioner_path": str(fam["expert0"] / MOMENTS)}}]}
    with pytest.raises(OtaMergeError, match="is a LoRA adapter, whose optimizer moments cover its A and B factors"):
        merge_file(_write(tmp_path / "ota.yml", cfg), tmp_path / "out", QUIET)
    with pytest.raises(OtaMergeError, match="LoRA adapter.*need full-shape moments of every weight"):
        ffg_sweep(fam["base"], folder, tmp_path / "adapter_moments.safetensors", [0.1], "fisher", tmp_path / "f",
                  FfgOptions(progress=False))
    with pytest.raises(OtaMergeError, match="a LoRA adapter needs the base model"):
        merge_file(_write(tmp_path / "lin.yml", {"merge_method": "linear", "models": [
            {"model": str(folder), "parameters": {"weight": 1}}]}), tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists() and not (tmp_path / "f").exists()
