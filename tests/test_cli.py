import json
import subprocess
import sys

from otamerge.cli import main


def test_evaluate_writes_tidy_rows(tiny_demo, tmp_path):
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(tiny_demo / "experts/add"), "--tasks", "add", "facts",
                 "--n", "10", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["task"], r["metric"], r["n"]) for r in rows] == [
        ("add", "add", "exact_match", 10), ("add", "add", "token_accuracy", 10),
        ("add", "facts", "exact_match", 50), ("add", "facts", "token_accuracy", 50)]
    assert all(r["backend"] == "builtin" and 0 <= r["score"] <= 1 for r in rows)


def test_errors_are_one_line_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "otamerge.cli", "evaluate", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr == f"otamerge: error: {tmp_path}: not a model folder (no config.json)\n"


def test_streaming_subcommands_never_import_transformers(tmp_path):
    """merge, ffg and compress-moments start in the time of `import torch` (transformers
    takes seconds more): none of them imports it, tokenizer_source union over one
    vocabulary included."""
    import yaml

    from checkpoints import MOMENTS, make_family

    fam = make_family(tmp_path / "fam", n_experts=2)
    cfg = {"merge_method": "ota", "base_model": str(fam["base"]), "tokenizer_source": "union",
           "models": [{"model": str(fam[e]), "parameters": {"preconditioner_path": str(fam[e] / MOMENTS)}}
                      for e in ("expert0", "expert1")]}
    (tmp_path / "ota.yml").write_text(yaml.safe_dump(cfg))
    runs = {
        "merge": ["merge", str(tmp_path / "ota.yml"), str(tmp_path / "merged"), "--quiet"],
        "ffg": ["ffg", "--base", str(fam["base"]), "--expert", str(fam["expert0"]), "--moments",
                str(fam["expert0"] / MOMENTS), "--density", "0.1", "--quiet", str(tmp_path / "ffg")],
        "compress-moments": ["compress-moments", str(fam["expert0"] / MOMENTS), str(tmp_path / "r1.safetensors"),
                             "--quiet"],
    }
    for name, args in runs.items():
        code = ("import sys; from otamerge.cli import main; main(sys.argv[1:]); "
                "print('transformers' in sys.modules)")
        res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[-1] == "False", name


def test_streaming_options_default_to_the_engines_chunk_size():
    from otamerge.cli import build_parser
    from otamerge.cli.models import _merge_options
    from otamerge.ffg.graft import FfgOptions
    from otamerge.io.checkpoint import CHUNK_BYTES

    args = build_parser().parse_args(["merge", "c.yml", "out", "--quiet", "--device", "cpu"])
    opts = _merge_options(args)
    assert opts.chunk_bytes == CHUNK_BYTES == 1 << 20 and FfgOptions().chunk_bytes == CHUNK_BYTES
    assert (opts.device, opts.progress, opts.out_shard_bytes) == ("cpu", False, 5 << 30)
    given = _merge_options(build_parser().parse_args(["merge", "c.yml", "out", "--chunk-mb", "2.5"]))
    assert given.chunk_bytes == int(2.5 * (1 << 20)) and given.progress
