"""Build the demo's base and expert folders in Hugging Face layout.

    base/                     config.json, model.safetensors, tokenizer files, training.json
    experts/<task>/           the same, plus export/exp_avg_sq.safetensors

Seeded and deterministic: the same seed and settings give byte-identical safetensors
(on one machine and torch build; fp32 CPU kernels are run-to-run deterministic).
"""

from __future__ import annotations

import zlib
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from otamerge.io.atomic import atomic_dir, write_json
from otamerge.demo.model import make_config, new_model
from otamerge.demo.settings import TrainSettings, base_data, expert_config, train_settings
from otamerge.demo.tasks import TASKS, get_task
from otamerge.demo.tokenizer import build_tokenizer
from otamerge.demo.train import (
    held_out_prompts,
    mixture_sampler,
    save_moments,
    train,
)


def derived_seed(seed: int, *names: str) -> int:
    """A stable per-stage seed, so each expert's stream does not depend on the others."""
    return zlib.crc32("/".join([str(seed), *names]).encode())


def save_model(model, tokenizer, out: Path, record: dict) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_json(out / "training.json", record)


def build_base(out_dir: str | Path, seed: int, settings: TrainSettings, arch: dict | None = None,
               n_eval: int = 100, threads: int = 2, restricted: bool = False,
               alternative: float = 0.0) -> Path:
    """Train the base on the mixture of all tasks (their restricted versions, or the full
    tasks) and save it to ``out_dir``."""
    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    model = new_model(make_config(tokenizer, arch), derived_seed(seed, "init"))
    exclude = held_out_prompts(n_eval, seed)
    sample = mixture_sampler(list(TASKS), restricted=restricted, exclude=exclude, alternative=alternative)
    train(model, tokenizer, sample, settings, derived_seed(seed, "base"), desc="base")
    with atomic_dir(out_dir) as tmp:
        save_model(model, tokenizer, tmp, {"role": "base", "seed": seed, "tasks": list(TASKS),
                                      "restricted": restricted, "alternative": alternative,
                                      "settings": asdict(settings)})
    return Path(out_dir)


def build_expert(base_dir: str | Path, out_dir: str | Path, task: str, seed: int,
                 settings: TrainSettings, n_eval: int = 100, threads: int = 2, restricted: bool = False,
                 alternative: float = 0.0) -> Path:
    """Fine-tune the base on ``task`` (replaying the base's data, drawn as ``restricted``
    and ``alternative`` say, in a share of each batch) and save the expert together with
    its AdamW second moments."""
    get_task(task)
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True,
                                                 trust_remote_code=False)
    exclude = held_out_prompts(n_eval, seed)
    sample = mixture_sampler([task], restricted=False, exclude=exclude)
    replay = mixture_sampler(list(TASKS), restricted=restricted, exclude=exclude, alternative=alternative)
    opt = train(model, tokenizer, sample, settings, derived_seed(seed, "expert", task),
                replay=replay, desc=task)
    with atomic_dir(out_dir) as tmp:
        save_model(model, tokenizer, tmp, {"role": "expert", "seed": seed, "task": task,
                                      "settings": asdict(settings)})
        save_moments(model, opt, tmp, settings)
    return Path(out_dir)


def build_family(out_dir: str | Path, demo: dict, seed: int, threads: int | None = None) -> Path:
    """The base and every expert of a config's ``demo`` section under ``out_dir``
    (``base/``, ``experts/<name>/``), as the workflow's demo rules build them."""
    out = Path(out_dir)
    common = {"seed": seed, "n_eval": demo["n_eval"], "threads": threads or demo["threads"], **base_data(demo)}
    build_base(out / "base", settings=train_settings(demo["base"]), arch=demo.get("arch"), **common)
    for name, spec in demo["experts"].items():
        build_expert(out / "base", out / "experts" / name, spec["task"],
                     settings=train_settings(expert_config(demo, name)), **common)
    return out
