"""Adam's exp_avg_sq from sharded checkpoints that real FSDP and DeepSpeed runs wrote on CPU
(tests/sharded_training.py), compared bit for bit with what each library reports."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import REPO
from otamerge.cli import main
from otamerge.curvature.optimizer_state import optimizer_moments
from otamerge.errors import OtaMergeError
from otamerge.io import download as dl

TRAIN = REPO / "tests/sharded_training.py"


def _train(kind: str, out) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        res = subprocess.run([sys.executable, str(TRAIN), kind, str(out)], capture_output=True, text=True, env=env,
                             timeout=600)
        # A rank killed by a signal (SIGABRT in gloo's teardown, seen once in CI; mp.spawn then
        # raises "process 1 terminated with signal SIGABRT") is the library's flake, not a wrong
        # state: train once more. Any other error fails at once.
        if res.returncode == 0 or attempt or "terminated with signal" not in res.stderr:
            break
        print(f"{kind} training: a rank was killed by a signal, retrying:\n{res.stderr[-2000:]}")
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    _train("fsdp", out)
    return out


def _same(moments: dict, reference) -> None:
    ref = load_file(str(reference))
    assert sorted(moments) == sorted(ref)  # every parameter, tied lm_head once (as the embedding)
    for name, value in ref.items():
        assert moments[name].dtype == value.dtype and moments[name].equal(value), name


def test_fsdp_sharded_optimizer_state_equals_the_full_state_fsdp_reports(fsdp, tmp_path):
    """Two FSDP2 ranks over gloo, each holding half of every state, saved with
    torch.distributed.checkpoint as accelerate's SHARDED_STATE_DICT does (optimizer_0/)."""
    assert len(list((fsdp / "optimizer_0").glob("*.distcp"))) == 2
    moments, record = optimizer_moments(fsdp / "optimizer_0", fsdp / "model")
    _same(moments, fsdp / "reference.safetensors")
    assert record == {"optimizer": "torch.distributed.checkpoint", "layout": "by name", "step": 3}
    # the download stage converts it once, like a Trainer's optimizer.pt
    out = dl.download(dl.Source("e", str(fsdp / "model"), preconditioner=str(fsdp / "optimizer_0")), tmp_path / "e")
    _same(load_file(str(out / "preconditioner.safetensors")), fsdp / "reference.safetensors")
    manifest = json.loads((out / dl.MANIFEST).read_text())
    assert manifest["files"][-1]["converted_from"] == "optimizer_0"
    # and the CLI
    assert main(["convert-optimizer", str(fsdp / "optimizer_0"), str(tmp_path / "m.safetensors"),
                 "--model", str(fsdp / "model")]) == 0
    _same(load_file(str(tmp_path / "m.safetensors")), fsdp / "reference.safetensors")


def test_a_checkpoint_of_another_model_is_a_one_line_error(fsdp, tmp_path):
    config = json.loads((fsdp / "model/config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    with pytest.raises(OtaMergeError, match=r"exp_avg_sq of model.layers.0.mlp.gate_proj.weight has shape "
                                            r"\[64, 32\], the parameter \[48, 32\]"):
        optimizer_moments(fsdp / "optimizer_0", other)
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(OtaMergeError, match="20 states for 29 parameters; no exp_avg_sq for model.layers.2"):
        optimizer_moments(fsdp / "optimizer_0", other)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_metadata_cannot_run_code(fsdp, tmp_path):
    """DCP keeps its index in a pickle: one that calls os.system is refused, nothing runs."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(OtaMergeError, match="posix.system is not allowed in checkpoint metadata"):
        optimizer_moments(bad, fsdp / "model")
    assert not (tmp_path / "PWNED").exists() and not (REPO / "PWNED").exists()


deepspeed_here = importlib.util.find_spec("deepspeed") is not None


@pytest.mark.skipif(not deepspeed_here and os.environ.get("OTAMERGE_REQUIRE_DEEPSPEED") != "1",
                    reason="deepspeed is not installed (make test installs it)")
def test_deepspeed_zero_checkpoint_through_deepspeeds_universal_converter(tmp_path):
    """ZeRO-2 on one CPU rank; DeepSpeed's own ds_to_universal makes per-parameter states."""
    _train("deepspeed", tmp_path)
    step = tmp_path / "ckpt/global_step3"
    with pytest.raises(OtaMergeError, match="a DeepSpeed ZeRO checkpoint; convert it with DeepSpeed's own tool"):
        optimizer_moments(step, tmp_path / "model")
    res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(step),
                          "--output_folder", str(tmp_path / "universal"), "--inject_missing_state"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    moments, record = optimizer_moments(tmp_path / "universal", tmp_path / "model")
    _same(moments, tmp_path / "reference.safetensors")
    assert record == {"optimizer": "DeepSpeed universal checkpoint", "layout": "by name", "step": 3}
