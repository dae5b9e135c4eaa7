import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from checkpoints import MOMENTS, make_family
from otamerge.io.checkpoint import Checkpoint
from otamerge.cli import main
from otamerge.ffg.graft import FfgOptions, ffg_sweep

QUIET = FfgOptions(progress=False, chunk_bytes=1024)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=2, seed=21)


def tensors(folder):
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


@pytest.fixture(scope="module")
def sweep(fam, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return ffg_sweep(fam["base"], fam["expert0"], fam["expert0"] / MOMENTS, [0.10, 1e-6, 0.3, 1.0, 0.1],
                     "fisher", out / "fisher", QUIET)


def test_sweep_points_are_normalised_and_written_as_models(sweep):
    assert sorted(p.name for p in sweep.values()) == ["0.1", "0.3", "1", "1e-06"]
    for folder in sweep.values():
        assert {"config.json", "model.safetensors", "tokenizer.json", "statistics.json"} <= {
            p.name for p in folder.iterdir()}


def test_density_one_is_the_expert_and_a_tiny_density_nearly_the_base(fam, sweep):
    expert, base = tensors(fam["expert0"]), tensors(fam["base"])
    full = tensors(sweep[1.0])
    assert all(torch.equal(full[n], expert[n]) for n in expert)
    tiny = tensors(sweep[1e-6])
    changed = sum(int((tiny[n] != base[n]).sum()) for n in base)
    stats = json.loads((sweep[1e-6] / "statistics.json").read_text())
    assert changed == stats["kept"] == 1


def test_statistics_match_a_direct_computation(fam, sweep):
    expert, base = tensors(fam["expert0"]), tensors(fam["base"])
    v = load_file(fam["expert0"] / MOMENTS)
    sal = {n: v[n] * (expert[n].double() - base[n].double()).float() ** 2 for n in base}
    allsal = torch.cat([s.reshape(-1) for s in sal.values()])
    stats = json.loads((sweep[0.3] / "statistics.json").read_text())
    k = round(0.3 * allsal.numel())
    assert stats["threshold"] == float(torch.sort(allsal, descending=True).values[k - 1])
    assert stats["total"] == allsal.numel() and stats["k"] == k
    assert stats["kept"] == int((allsal >= stats["threshold"]).sum())
    assert abs(stats["achieved_density"] - 0.3) <= stats["ties_at_threshold"] / allsal.numel() + 1e-12
    assert stats["metric"] == "fisher" and stats["moments"] == "full" and stats["density"] == 0.3
    name = "model.layers.0.self_attn.q_proj.weight"
    mask = sal[name] >= stats["threshold"]
    t = stats["tensors"][name]
    assert t["kept"] == int(mask.sum()) and t["total"] == mask.numel()
    assert t["rows_any"] == int(mask.any(1).sum()) and t["cols_any"] == int(mask.any(0).sum())
    assert t["kept_fraction"] == pytest.approx(float(mask.float().mean()))
    grafted = tensors(sweep[0.3])
    assert torch.equal(grafted[name], torch.where(mask, expert[name], base[name]))


def test_magnitude_metric_needs_no_moments(fam, tmp_path):
    out = ffg_sweep(fam["base"], fam["expert1"], None, [0.2], "magnitude", tmp_path / "mag", QUIET)
    stats = json.loads((out[0.2] / "statistics.json").read_text())
    expert, base = tensors(fam["expert1"]), tensors(fam["base"])
    mags = torch.cat([(expert[n].float() - base[n].float()).abs().reshape(-1) for n in base])
    assert stats["threshold"] == float(torch.sort(mags, descending=True).values[round(0.2 * len(mags)) - 1])
    assert stats["moments"] is None


def test_extracted_threshold_merges_to_the_graft_byte_for_byte(fam, sweep, tmp_path):
    template = {"merge_method": "ota", "base_model": str(fam["base"]),
                "parameters": {"epsilon": "1e-26", "fallback_to_base": True},
                "models": [{"model": str(fam["expert0"]),
                            "parameters": {"preconditioner_path": str(fam["expert0"] / MOMENTS)}}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(template))
    sweep_dir = sweep[0.3].parent
    assert main(["thresholds", str(tmp_path / "t.yml"), str(tmp_path / "m.yml"), "--expert",
                 f"{fam['expert0']}={sweep_dir}", "--density", f"{fam['expert0']}=0.30",
                 "--table", str(tmp_path / "choices.csv")]) == 0
    cfg = yaml.safe_load((tmp_path / "m.yml").read_text())
    thr = json.loads((sweep[0.3] / "statistics.json").read_text())["threshold"]
    assert cfg["models"][0]["parameters"]["precond_threshold"] == thr
    assert main(["merge", str(tmp_path / "m.yml"), str(tmp_path / "merged"), "--quiet"]) == 0
    merged, grafted = tensors(tmp_path / "merged"), tensors(sweep[0.3])
    assert list(merged) == list(grafted) and all(torch.equal(merged[n], grafted[n]) for n in merged)
    assert "fixed in config" in (tmp_path / "choices.csv").read_text()


def test_automatic_choice_is_the_smallest_density_keeping_the_score(fam, sweep, tmp_path):
    ref = str(fam["expert0"])
    (tmp_path / "scores.csv").write_text(
        "expert,density,score\n" + "".join(f"{ref},{d},{s}\n" for d, s in
                                            [(1e-6, 0.2), (0.1, 0.5), (0.3, 0.96), (1.0, 1.0)]))
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"merge_method": "ota", "base_model": "b",
                                                    "models": [{"model": ref}]}))
    assert main(["thresholds", str(tmp_path / "t.yml"), str(tmp_path / "m.yml"), "--expert",
                 f"{ref}={sweep[0.3].parent}", "--scores", str(tmp_path / "scores.csv"),
                 "--retention", "0.95", "--table", str(tmp_path / "c.csv")]) == 0
    cfg = yaml.safe_load((tmp_path / "m.yml").read_text())
    assert cfg["models"][0]["parameters"]["precond_threshold"] == json.loads(
        (sweep[0.3] / "statistics.json").read_text())["threshold"]
    assert ",auto,0.3," in (tmp_path / "c.csv").read_text()


def test_automatic_choice_without_a_swept_density_keeping_the_score_is_the_whole_expert(fam, tmp_path):
    """The sweep lacks density 1: the expert keeps every edit (no mask), and OTA of it
    alone is the expert itself."""
    ref = str(fam["expert0"])
    sweep = ffg_sweep(fam["base"], ref, fam["expert0"] / MOMENTS, [0.1, 0.3], "fisher", tmp_path / "sw", QUIET)
    (tmp_path / "scores.csv").write_text(
        "expert,density,score\n" + "".join(f"{ref},{d},{s}\n" for d, s in [(0.1, 0.5), (0.3, 0.9), (1.0, 1.0)]))
    (tmp_path / "t.yml").write_text(yaml.safe_dump({
        "merge_method": "ota", "base_model": str(fam["base"]), "parameters": {"epsilon": "1e-26"},
        "models": [{"model": ref, "parameters": {"preconditioner_path": str(fam["expert0"] / MOMENTS)}}]}))
    assert main(["thresholds", str(tmp_path / "t.yml"), str(tmp_path / "m.yml"), "--expert",
                 f"{ref}={sweep[0.3].parent}", "--scores", str(tmp_path / "scores.csv"),
                 "--retention", "0.95", "--table", str(tmp_path / "c.csv")]) == 0
    cfg = yaml.safe_load((tmp_path / "m.yml").read_text())
    assert "precond_threshold" not in cfg["models"][0]["parameters"]
    assert ",auto,1.0,," in (tmp_path / "c.csv").read_text() and "no FFG mask" in (tmp_path / "c.csv").read_text()
    assert main(["merge", str(tmp_path / "m.yml"), str(tmp_path / "merged"), "--quiet"]) == 0
    merged, expert = tensors(tmp_path / "merged"), tensors(fam["expert0"])
    assert all(torch.equal(merged[n], expert[n]) for n in merged)


@pytest.mark.parametrize("density", ["0", "1.5", "-0.1"])
def test_density_outside_the_unit_interval_is_refused(fam, tmp_path, capsys, density):
    rc = main(["ffg", "--base", str(fam["base"]), "--expert", str(fam["expert0"]), "--moments",
               str(fam["expert0"] / MOMENTS), "--density", density, "--quiet", str(tmp_path / "o")])
    assert rc == 1 and "is outside (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_explicit_cpu_device_gives_the_same_bytes(fam, sweep, tmp_path):
    out = ffg_sweep(fam["base"], fam["expert0"], fam["expert0"] / MOMENTS, [0.3], "fisher", tmp_path,
                    FfgOptions(progress=False, chunk_bytes=1024, device="cpu"))
    assert (out[0.3] / "model.safetensors").read_bytes() == (sweep[0.3] / "model.safetensors").read_bytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("device,message", [("cuda", "CUDA is not available"), ("tpu9", "unknown device")])
def test_unavailable_device_is_a_clear_error(fam, tmp_path, capsys, device, message):
    rc = main(["ffg", "--base", str(fam["base"]), "--expert", str(fam["expert0"]), "--moments",
               str(fam["expert0"] / MOMENTS), "--density", "0.1", "--quiet", "--device", device,
               str(tmp_path / "o")])
    assert rc == 1 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("which,message", [
    ("missing", "tensor model.norm.weight missing from moments file"),
    ("shape", "has shape [16], the weights have [16, 16]"),
    ("nan", "has NaN or Inf values"),
    ("negative", "has negative values"),
])
def test_bad_moments_are_refused_with_no_output(fam, tmp_path, capsys, which, message):
    v = load_file(fam["expert0"] / MOMENTS)
    name = "model.norm.weight" if which == "missing" else "model.layers.1.self_attn.k_proj.weight"
    if which == "missing":
        del v[name]
    elif which == "shape":
        v[name] = v[name][0].contiguous()
    else:
        v[name][3, 3] = float("nan") if which == "nan" else -2.0
    save_file(v, str(tmp_path / "bad.safetensors"))
    rc = main(["ffg", "--base", str(fam["base"]), "--expert", str(fam["expert0"]), "--moments",
               str(tmp_path / "bad.safetensors"), "--density", "0.1", "--quiet", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_expert_shape_mismatch_is_refused(fam, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(fam["expert0"], bad)
    w = load_file(bad / "model.safetensors")
    w["lm_head.weight"] = w["lm_head.weight"][:-1].contiguous()
    save_file(w, str(bad / "model.safetensors"), metadata={"format": "pt"})
    rc = main(["ffg", "--base", str(fam["base"]), "--expert", str(bad), "--metric", "magnitude",
               "--density", "0.1", "--quiet", str(tmp_path / "o")])
    assert rc == 1 and "tensor lm_head.weight in" in capsys.readouterr().err


def test_statistics_with_missing_fields_are_refused(fam, sweep, tmp_path, capsys):
    broken = tmp_path / "sweep"
    shutil.copytree(sweep[0.3], broken / "0.3")
    stats = json.loads((broken / "0.3/statistics.json").read_text())
    del stats["threshold"]
    (broken / "0.3/statistics.json").write_text(json.dumps(stats))
    (tmp_path / "t.yml").write_text(yaml.safe_dump({"merge_method": "ota", "models": [{"model": "x"}]}))
    rc = main(["thresholds", str(tmp_path / "t.yml"), str(tmp_path / "m.yml"), "--expert", f"x={broken}",
               "--density", "x=0.3"])
    assert rc == 1 and "statistics.json lacks threshold" in capsys.readouterr().err
    assert not (tmp_path / "m.yml").exists()
