"""Corrupt inputs, fuzzed headers and configs, a full disk: a merge and an FFG job either
succeed or stop with one line (``otamerge: error: ...``) naming the file, exit 1 and
leave nothing behind."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from checkpoints import MOMENTS, make_family
from otamerge.io.checkpoint import INDEX_FILE, Checkpoint
from otamerge.cli import main
from otamerge.errors import OtaMergeError

Q = "model.layers.1.self_attn.q_proj.weight"
K = "model.layers.1.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=2, seed=11)


def read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_header(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def shard(folder: Path) -> tuple[Path, Path]:
    """Split folder/model.safetensors into two shards and an index, as the hub does."""
    w = load_file(folder / "model.safetensors")
    names = sorted(w)
    files = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, part in files.items():
        save_file({n: w[n] for n in part}, str(folder / f), metadata={"format": "pt"})
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {n: f for f, part in files.items() for n in part}}
    (folder / INDEX_FILE).write_text(json.dumps(index))
    return folder / "model-00001-of-00002.safetensors", folder / "model-00002-of-00002.safetensors"


def corrupt(folder: Path, which: str) -> str:
    """Break the model in ``folder`` one way; returns what the error must say."""
    weights = folder / "model.safetensors"
    if which == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
        return f"{weights} is not a valid safetensors file (file is truncated"
    if which == "header_length":
        raw = weights.read_bytes()
        weights.write_bytes((1 << 40).to_bytes(8, "little") + raw[8:])
        return f"{weights} is not a valid safetensors file (header length beyond the end of the file)"
    header, data = read_header(weights)
    if which == "offsets_overlap":  # Q points at K's bytes: same size, so only the layout shows it
        header[Q]["data_offsets"] = header[K]["data_offsets"]
        write_header(weights, header, data)
        return f"{weights} is not a valid safetensors file (tensor "
    if which == "dtype_lie":  # fp32 bytes declared fp16
        header[Q]["dtype"] = "F16"
        write_header(weights, header, data)
        return f"{weights} is not a valid safetensors file (tensor {Q}: offsets"
    if which == "shard_missing":
        _, second = shard(folder)
        second.unlink()
        return f"file {second} is missing"
    if which == "index_extra":
        first, _ = shard(folder)
        index = json.loads((folder / INDEX_FILE).read_text())
        index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = first.name
        (folder / INDEX_FILE).write_text(json.dumps(index))
        return f"{first} does not hold tensor model.layers.9.mlp.up_proj.weight listed in its index"
    config = folder / "config.json"
    if which == "config_size":
        c = json.loads(config.read_text())
        c["hidden_size"] = 32
        config.write_text(json.dumps(c))
        return f"{config} says hidden_size=32 but tensor model.embed_tokens.weight has shape [{c['vocab_size']}, 16]"
    if which == "config_layers":
        c = json.loads(config.read_text())
        c["num_hidden_layers"] = 3
        config.write_text(json.dumps(c))
        return f"{config} says num_hidden_layers=3 but the weights have 2 layers"
    if which == "config_json":
        config.write_text('{"hidden_size": 16,')
        return f"{config} is not valid JSON"
    raise ValueError(which)


def run_job(job: str, fam: dict, expert: Path, out: Path, cfg_dir: Path | None = None) -> list[str]:
    """The CLI arguments of a merge (OTA with ``expert`` first; its config written in
    ``cfg_dir``, else beside ``out``) or an FFG sweep of ``expert``."""
    cfg_file = (cfg_dir or out.parent) / "c.yml"
    if job == "merge":
        cfg = {"merge_method": "ota", "base_model": str(fam["base"]), "parameters": {"epsilon": 1e-26},
               "models": [{"model": str(m), "parameters": {"preconditioner_path": str(fam["expert0"] / MOMENTS)}}
                          for m in (expert, fam["expert1"])]}
        cfg_file.write_text(yaml.safe_dump(cfg))
        return ["merge", "--quiet", str(cfg_file), str(out)]
    return ["ffg", str(out), "--quiet", "--base", str(fam["base"]), "--expert", str(expert),
            "--moments", str(fam["expert0"] / MOMENTS), "--density", "0.1", "0.5"]


def nothing_written(out: Path) -> bool:
    """No output and no temporary output (an FFG sweep's folder of densities may exist, empty)."""
    empty = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    return empty and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


KINDS = ["truncated", "header_length", "offsets_overlap", "dtype_lie", "shard_missing", "index_extra",
         "config_size", "config_layers", "config_json"]


@pytest.mark.parametrize("job", ["merge", "ffg"])
@pytest.mark.parametrize("which", KINDS)
def test_a_corrupt_input_is_one_line_naming_the_file_and_nothing_is_written(fam, tmp_path, capsys, job, which):
    expert = tmp_path / "expert"
    shutil.copytree(fam["expert0"], expert)
    message = corrupt(expert, which)
    out = tmp_path / "out"
    assert main(run_job(job, fam, expert, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("otamerge: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert nothing_written(out)


# --- fuzzing ----------------------------------------------------------------------------

@contextmanager
def no_hang(seconds: int):
    """Fail instead of hanging: SIGALRM raises in the main thread after ``seconds``."""
    def fire(*_):
        raise TimeoutError(f"no answer in {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
FUZZ = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutate_header(header: dict, draw) -> None:
    names = sorted(k for k in header if k != "__metadata__")
    kind = draw(st.sampled_from(["field", "drop_field", "entry", "add", "metadata", "offset", "shape"]))
    name = draw(st.sampled_from(names))
    if kind == "field":
        header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(JSON)
    elif kind == "drop_field":
        del header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif kind == "entry":
        header[name] = draw(JSON)
    elif kind == "add":
        header[draw(st.text(max_size=12))] = draw(JSON)
    elif kind == "metadata":
        header["__metadata__"] = draw(JSON)
    elif kind == "offset":
        header[name]["data_offsets"][draw(st.integers(0, 1))] += draw(st.integers(-64, 64))
    else:
        header[name]["shape"] = draw(st.lists(st.integers(-2, 40), max_size=3))


@st.composite
def broken_safetensors(draw, original: bytes) -> bytes:
    """A valid file with its header edited as JSON, its bytes overwritten or its end cut."""
    n = int.from_bytes(original[:8], "little")
    how = draw(st.sampled_from(["json", "bytes", "cut", "length"]))
    if how == "json":
        header = json.loads(original[8:8 + n])
        _mutate_header(header, draw)
        raw = json.dumps(header).encode()
        return len(raw).to_bytes(8, "little") + raw + original[8 + n:]
    if how == "bytes":
        out = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, n + 7))] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "cut":
        return original[:draw(st.integers(0, len(original) - 1))]
    return draw(st.integers(0, (1 << 64) - 1)).to_bytes(8, "little") + original[8:]


@pytest.fixture(scope="module")
def fuzz_root(fam, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(fam["expert0"], root / "expert")
    return root


def test_fuzzed_safetensors_headers_load_or_fail_with_our_error(fam, fuzz_root):
    weights = fuzz_root / "expert/model.safetensors"
    original = (fam["expert0"] / "model.safetensors").read_bytes()
    outcomes = {"ok": 0, "refused": 0}

    @FUZZ
    @given(data=broken_safetensors(original))
    def check(data: bytes) -> None:
        weights.write_bytes(data)
        with no_hang(20):
            try:
                ckpt = Checkpoint(fuzz_root / "expert", "fuzzed")
                for name in ckpt.names():
                    ckpt.get(name)
                    if ckpt.shape(name):
                        ckpt.get(name, (0, 1))
                ckpt.close()
                outcomes["ok"] += 1
            except OtaMergeError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1

    check()
    print(outcomes)
    assert outcomes["refused"] >= 300  # the mutations did break the file


def _mutate_config(cfg: dict, draw) -> dict | str:
    kind = draw(st.sampled_from(["top", "param", "model", "model_param", "drop", "text"]))
    if kind == "top":
        cfg[draw(st.sampled_from(["merge_method", "base_model", "models", "parameters", "dtype", "out_dtype",
                                  "tokenizer_source", "slices", "x"]))] = draw(JSON)
    elif kind == "param":
        cfg["parameters"][draw(st.sampled_from(["epsilon", "power", "normalise", "fallback_to_base", "rescale",
                                                "ties_density", "masked_task_vector_merge_method", "y"]))] = draw(JSON)
    elif kind == "model":
        cfg["models"][draw(st.integers(0, 1))] = draw(JSON)
    elif kind == "model_param":
        cfg["models"][draw(st.integers(0, 1))]["parameters"][draw(st.sampled_from(
            ["preconditioner_path", "precond_threshold", "rank1_approx", "weight", "z"]))] = draw(JSON)
    elif kind == "drop":
        del cfg[draw(st.sampled_from(sorted(cfg)))]
    else:  # YAML text with characters inserted, deleted or replaced
        text = yaml.safe_dump(cfg)
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(max_size=3)) + text[i + draw(st.integers(0, 3)):]
        return text
    return cfg


def test_fuzzed_merge_configs_merge_or_fail_with_one_line(fam, fuzz_root, capsys):
    good = {"merge_method": "ota", "base_model": str(fam["base"]), "dtype": "float32",
            "parameters": {"epsilon": 1e-26, "power": 0.5},
            "models": [{"model": str(fam[e]), "parameters": {"preconditioner_path": str(fam[e] / MOMENTS)}}
                       for e in ("expert0", "expert1")]}
    path, out = fuzz_root / "fuzz.yml", fuzz_root / "merged"
    codes = {0: 0, 1: 0}

    @FUZZ
    @given(data=st.data())
    def check(data) -> None:
        cfg = _mutate_config(json.loads(json.dumps(good)), data.draw)
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
        capsys.readouterr()
        with no_hang(60):
            rc = main(["merge", "--quiet", str(path), str(out)])
        err = capsys.readouterr().err
        assert rc == 0 or (rc == 1 and err.startswith("otamerge: error: ") and err.count("\n") == 1), err
        codes[rc] += 1
        shutil.rmtree(out, ignore_errors=True)

    check()
    print(codes)
    assert codes[0] >= 5 and codes[1] >= 300  # both outcomes were exercised


# --- a full disk ------------------------------------------------------------------------

def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "otamerge.cli", *args]


def in_small_tmpfs(folder: Path, size: int, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` with a tmpfs of ``size`` bytes mounted on ``folder`` (a user and mount
    namespace: no root needed, nothing left mounted); prints the folder's entries after."""
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; d="$2"; shift 2; "$@"; rc=$?; ls -A "$d"; exit $rc'
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                           str(size), str(folder), *cmd], capture_output=True, text=True)


def unshare_works(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    tmp.mkdir(exist_ok=True)
    return in_small_tmpfs(tmp, 1 << 16, ["true"]).returncode == 0


def model_bytes(folder: Path) -> int:
    ck = Checkpoint(folder)
    try:
        return sum(ck.get(n).nbytes for n in ck.names())
    finally:
        ck.close()


@pytest.mark.parametrize("job", ["merge", "ffg"])
def test_a_full_disk_is_a_clear_error_with_no_partial_output_and_the_next_run_succeeds(fam, tmp_path, job):
    """Two ways the space runs out: a tmpfs too small for the output (refused before any
    work, from the planned size) and a file size limit below the output's size (the write
    itself fails: EFBIG, as ENOSPC would on a disk that fills up meanwhile)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    args = run_job(job, fam, fam["expert0"], out, cfg_dir=tmp_path)
    need = model_bytes(fam["expert0"]) * (2 if job == "ffg" else 1)

    if not unshare_works(tmp_path / "probe"):  # say why rather than skip silently
        pytest.fail("unshare --user --mount is unavailable: cannot mount a small tmpfs")
    res = in_small_tmpfs(disk, need // 2, cli(*args))
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("otamerge: error: "), res.stderr
    assert f" but {disk} has only " in res.stderr
    assert res.stdout.strip() == ""  # the tmpfs held nothing at the end

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), no kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (need // 4, need // 4))

    res = subprocess.run(cli(*args), capture_output=True, text=True, preexec_fn=limit_file_size)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert f"no space left while writing {out}" in res.stderr and "File too large" in res.stderr
    assert nothing_written(out)

    res = subprocess.run(cli(*args), capture_output=True, text=True)  # with space
    assert res.returncode == 0, res.stderr
    assert out.is_dir() and (out / "0.1" if job == "ffg" else out).is_dir()
