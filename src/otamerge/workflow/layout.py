"""Where the workflow's files live: one function per kind of path, and the model names
of the score tables.

Every output that depends on a seed sits in a tree rooted at that seed (``seed<N>/`` at
the top of ``results/``, of the demo's folder, of each rule's logs and benchmarks), so a
seed's whole run can be listed, copied or removed at once and a job never writes where
another seed's job does. The cross-seed summary, plots and report sit outside them.

Each function takes the seed as an int or as a wildcard such as ``"{seed}"``, so the
same function gives a rule's output pattern and a concrete path. Imports no torch: the
workflow reads it while building the DAG.
"""

from __future__ import annotations

import re
from pathlib import Path

from otamerge.names import MERGE_CONFIG, PRECONDITIONER, STATISTICS

Seed = int | str  # a seed, or a Snakemake wildcard standing for one

RESULTS = "results"
SUMMARY = f"{RESULTS}/summary"
PLOTS = f"{RESULTS}/plots"
LOGS = "logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

_SEED_ROOT = re.compile(rf"(?:^|/){RESULTS}/seed(\d+)/")


def seed_dir(seed: Seed) -> str:
    """The name of a seed's tree: ``seed<N>``."""
    return f"seed{seed}"


def seed_of(path: str | Path) -> int:
    """The seed of a file in a seed's results tree (``results/seed<N>/...``), e.g. a score
    file the summary reads. The last such folder counts, so a working directory that
    itself lies under some ``results/seed<M>/`` does not mislead it (names of models and
    merges hold no ``/``, so none can make a second one inside the tree)."""
    found = _SEED_ROOT.findall(Path(path).as_posix())
    if not found:
        raise ValueError(f"{path} is not in a seed's results folder ({RESULTS}/seed<N>/)")
    return int(found[-1])


def per_seed(path: str, seed: Seed) -> str:
    """A configured path with ``{seed}`` replaced by the seed (e.g. a demo text written
    per seed); a path without it is the same for every seed."""
    return path.replace("{seed}", str(seed))


def per_expert(path: str, seed: Seed, expert: str) -> str:
    """A configured path with ``{seed}`` and ``{expert}`` replaced (each expert's own text)."""
    return per_seed(path, seed).replace("{expert}", expert)


def root(seed: Seed) -> str:
    """``results/seed<N>``: everything a seed's run computes."""
    return f"{RESULTS}/{seed_dir(seed)}"


# the demo's own models and texts, under the demo's outdir

def demo_root(outdir: str, seed: Seed) -> str:
    return f"{outdir}/{seed_dir(seed)}"


def demo_base(outdir: str, seed: Seed) -> str:
    return f"{demo_root(outdir, seed)}/base"


def converted_base(outdir: str) -> str:
    """A pretrained family's base, converted once for every seed."""
    return f"{outdir}/base"


def demo_expert(outdir: str, seed: Seed, expert: str) -> str:
    return f"{demo_root(outdir, seed)}/experts/{expert}"


def demo_text(outdir: str, seed: Seed, name: str) -> str:
    """``calibration`` or ``heldout`` text of the demo's tasks."""
    return f"{demo_root(outdir, seed)}/text/{name}.txt"


def expert_text(outdir: str, seed: Seed, expert: str) -> str:
    """Training examples of one built expert's own task (its RegMean Gram matrices)."""
    return demo_text(outdir, seed, f"own/{expert}")


# models, moments, importance

def downloaded_model(seed: Seed, name: str) -> str:
    """A model as the download stage left it (weights, tokenizer, preconditioner)."""
    return f"{root(seed)}/models/{name}"


def graft_statistics(graft_folder: str | Path) -> Path:
    """The statistics.json an FFG graft folder holds."""
    return Path(graft_folder) / STATISTICS


def preconditioner(model_folder: str | Path) -> str:
    """The downloaded moments inside an expert's folder."""
    return f"{Path(model_folder).as_posix()}/{PRECONDITIONER}.safetensors"


def moments_path(seed: Seed, expert: str, kind: str) -> str:
    """Curvature files made from an expert's: ``rank1.safetensors`` (and ``rank1.json``, its
    storage report), ``bias_corrected.safetensors`` (exp_avg_sq / (1 - beta2^t)),
    ``empirical_fisher.safetensors`` (its curvature where it has no optimizer state)."""
    return f"{root(seed)}/moments/{expert}/{kind}"


def rank1_moments(seed: Seed, expert: str) -> str:
    return moments_path(seed, expert, "rank1.safetensors")


def corrected_moments(seed: Seed, expert: str) -> str:
    return moments_path(seed, expert, "bias_corrected.safetensors")


def rank1_report(seed: Seed, expert: str) -> str:
    return moments_path(seed, expert, "rank1.json")


def fisher_moments(seed: Seed, expert: str) -> str:
    return moments_path(seed, expert, "empirical_fisher.safetensors")


def gram_dir(seed: Seed, expert: str) -> str:
    """X^T X of every linear layer's inputs on the expert's own text (RegMean's gram_path)."""
    return moments_path(seed, expert, "gram")


def hessians_dir(seed: Seed) -> str:
    return f"{root(seed)}/importance/hessians"


def importance_file(seed: Seed) -> str:
    """The base's OBS importance (one per seed, as the base is)."""
    return f"{root(seed)}/importance/sparsegpt.safetensors"


# model names in the score tables, and their folders

def graft_name(expert: str, metric: str, density: str) -> str:
    """``ffg/<expert>/<metric>/<density>``: an expert grafted at one sweep point."""
    return f"ffg/{expert}/{metric}/{density}"


def merge_name(merge: str) -> str:
    return f"merge/{merge}"


def graft_dir(seed: Seed, expert: str, metric: str, density: str) -> str:
    """A sweep point's grafted model and its ``statistics.json``."""
    return f"{root(seed)}/{graft_name(expert, metric, density)}"


def merge_dir(seed: Seed, merge: str) -> str:
    return f"{root(seed)}/merges/{merge}"


def merge_config(seed: Seed, merge: str) -> str:
    return f"{merge_dir(seed, merge)}/{MERGE_CONFIG}"


def merge_thresholds(seed: Seed, merge: str) -> str:
    """The FFG density and threshold chosen for each expert of a merge, and why."""
    return f"{merge_dir(seed, merge)}/thresholds.csv"


def merged_model(seed: Seed, merge: str) -> str:
    return f"{merge_dir(seed, merge)}/model"


def model_card(seed: Seed, merge: str) -> str:
    """A merged model's card with its scores (README.md, the hub's front matter)."""
    return f"{merge_dir(seed, merge)}/README.md"


def published(seed: Seed, merge: str) -> str:
    """Where a merged model was pushed: repo, commit and files."""
    return f"{merge_dir(seed, merge)}/published.json"


def lora_adapter(seed: Seed, merge: str) -> str:
    """A merged model's difference to the base as a PEFT LoRA adapter (config lora)."""
    return f"{merge_dir(seed, merge)}/lora"


def is_graft(model: str) -> bool:
    """Whether a model name of the score tables is a sweep point (``graft_name``)."""
    return model.startswith("ffg/")


def graft_expert(model: str) -> str:
    """The expert of a sweep point's model name."""
    return model.split("/")[1]


def model_folder(seed: Seed, model: str) -> str:
    """The folder of a model by its name in the score tables: ``base``, an expert,
    ``ffg/<expert>/<metric>/<density>`` or ``merge/<merge>``."""
    if is_graft(model):
        return f"{root(seed)}/{model}"
    if model.startswith("merge/"):
        return merged_model(seed, model.split("/", 1)[1])
    return downloaded_model(seed, model)


# evaluation

def scores(seed: Seed, backend: str, model: str) -> str:
    """One model's score rows from one backend (model, task, metric, score, n, backend)."""
    return f"{root(seed)}/evaluation/{backend}/{model}.json"


def raw_scores(seed: Seed, backend: str, model: str) -> str:
    """An external evaluator's own output folder for one model."""
    return f"{root(seed)}/evaluation/{backend}_raw/{model}"


# logs and benchmarks: per rule, then per seed, then the job's other wildcards

def log(rule: str, seed: Seed | None, name: str) -> str:
    """A job's log; ``seed`` None for the cross-seed jobs (summary, plots)."""
    return f"{LOGS}/{rule}/{name}.log" if seed is None else f"{LOGS}/{rule}/{seed_dir(seed)}/{name}.log"


def benchmark(rule: str, seed: Seed | None, name: str) -> str:
    """A job's benchmark file; ``seed`` None for jobs shared by every seed."""
    return f"{BENCHMARKS}/{rule}/{name}.tsv" if seed is None else f"{BENCHMARKS}/{rule}/{seed_dir(seed)}/{name}.tsv"


def summary(name: str) -> str:
    """A cross-seed table under ``results/summary``."""
    return f"{SUMMARY}/{name}"


def plot(name: str) -> str:
    return f"{PLOTS}/{name}.png"
