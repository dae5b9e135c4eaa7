"""The model card (``README.md``) of a merged model, as the Hugging Face hub reads it.

Front matter (``huggingface_hub.ModelCardData``): the merged models that came from the hub
as ``base_model`` (with ``base_model_relation: merge``), ``library_name: transformers``,
tags ``merge``, ``otamerge`` and the method. Body: every model with its source and
resolved revision (from the ``manifest.json`` the download stage writes next to a model),
the FFG density chosen for each expert and why, the model's scores where known, and the
merge configuration itself. The text is parsed back with ``huggingface_hub.ModelCard``
before it is written, so a card that the hub's parser cannot read is never written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Sequence

import yaml

from otamerge.errors import OtaMergeError
from otamerge.names import MANIFEST


def sources(base: str | None, models: Sequence[str]) -> list[dict]:
    """(role, path, source, revision, commit) of the base and every model of a merge (as the
    parsed config names them); source, revision and commit from the model folder's
    manifest.json where it has one."""
    listed = ([("base", base)] if base else []) + [("model", m) for m in models]
    out = []
    for role, path in listed:
        manifest = Path(path) / MANIFEST
        info = json.loads(manifest.read_text()) if manifest.is_file() else {}
        out.append({"role": role, "path": str(path), "source": info.get("source") or str(path),
                    "revision": info.get("revision"), "commit": info.get("commit")})
    return out


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _parameters(cfg_raw: dict) -> dict[str, dict]:
    return {str(m.get("model")): m.get("parameters") or {} for m in cfg_raw.get("models") or []
            if isinstance(m, dict) and isinstance(m.get("parameters"), dict)}


def render(cfg_raw: dict, models: list[dict], choices: list[dict] | None = None,
           scores: list[dict] | None = None, title: str | None = None) -> str:
    """The card's text: front matter, models, FFG choices, scores and the merge config."""
    from huggingface_hub import ModelCard, ModelCardData

    method = str(cfg_raw.get("merge_method", "unknown"))
    hub = [m["source"] for m in models if m["revision"] is not None]  # local folders are no hub ids
    data = ModelCardData(base_model=hub or None, base_model_relation="merge" if hub else None,
                         library_name="transformers", tags=["merge", "otamerge", method])
    params = _parameters(cfg_raw)
    n = sum(m["role"] == "model" for m in models)
    parts = [f"# {title or f'A merge of {n} models'}",
             f"Merged by otamerge (OTA merging with Fast Fisher Grafting) with `{method}`"
             + (f" over the base `{models[0]['source']}`." if models and models[0]["role"] == "base" else "."),
             "## Models",
             _table(["role", "source", "revision", "commit", "parameters"],
                    [(m["role"], m["source"], m["revision"], m["commit"],
                      ", ".join(f"{k}: {v}" for k, v in params.get(m["path"], {}).items()) or None)
                     for m in models])]
    if choices:
        parts += ["## FFG densities",
                  "The Fast Fisher Grafting density and saliency threshold each expert's mask kept, and why.",
                  _table(["expert", "mode", "density", "threshold", "reason"],
                         [(c.get("expert"), c.get("mode"), c.get("density"), c.get("threshold"), c.get("reason"))
                          for c in choices])]
    if scores:
        parts += ["## Scores",
                  _table(["backend", "task", "metric", "score", "n"],
                         [(s["backend"], s["task"], s["metric"], f"{float(s['score']):.4f}", s["n"])
                          for s in sorted(scores, key=lambda s: (s["backend"], s["task"], s["metric"]))])]
    parts += ["## Merge configuration", "```yaml\n" + yaml.safe_dump(cfg_raw, sort_keys=False).rstrip() + "\n```"]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(parts) + "\n"
    parsed = ModelCard(text)  # the hub's own parser: front matter that it cannot read raises here
    if parsed.data.library_name != "transformers" or "merge" not in (parsed.data.tags or []):
        raise OtaMergeError("model card: its front matter did not survive huggingface_hub's parser")
    return text


def read_choices(path: str | Path | None) -> list[dict]:
    """Rows of a merge's thresholds.csv (empty for a merge without FFG masks)."""
    if not path or not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_scores(paths: Iterable[str | Path]) -> list[dict]:
    return [row for p in paths for row in json.loads(Path(p).read_text())]
