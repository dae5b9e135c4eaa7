"""Fetch a model (and its preconditioner) from the Hugging Face hub or a local folder.

Only the files a merge needs are fetched (config, weights, tokenizer files, and the
preconditioner), pinned to a revision whose resolved commit is recorded in
``manifest.json`` next to the files. Downloads go to a fixed ``.<name>.partial`` folder
beside the destination, so an interrupted run resumes there (huggingface_hub keeps its
``.incomplete`` files), and the destination appears, by one rename, only when every
file is complete. The hub token comes from the standard environment (HF_TOKEN) and is
never written anywhere.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from otamerge.io.atomic import check_space, write_json
from otamerge.errors import OtaMergeError
from otamerge.io.resolve import safe_relative, split_hub_path
from otamerge.names import MANIFEST, PRECONDITIONER

OPTIMIZER_SUFFIXES = (".pt", ".pth", ".bin")  # a torch optimizer state, converted to safetensors here
NEEDED = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
          "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
          "adapter_config.json"]  # a LoRA expert: adapter_model.safetensors comes with *.safetensors


@dataclass(frozen=True)
class Source:
    """One model of the config: a hub repo id or a local folder, and its preconditioner."""

    name: str
    ref: str
    revision: str = "main"
    preconditioner: str | None = None


def needed(files: list[str]) -> list[str]:
    """The repo files a merge needs (top-level weights, config and tokenizer files)."""
    return sorted(f for f in files if "/" not in f and any(fnmatch.fnmatch(f, pat) for pat in NEEDED))


def _is_local(ref: str) -> bool:
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~"))


def _repo_files(name: str, repo: str, revision: str) -> tuple[str, dict[str, int]]:
    """(resolved commit, {path: size}) of a hub repo at a revision."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise OtaMergeError(f"{name}: revision {revision!r} not found in {repo}") from None
    except RepositoryNotFoundError:
        raise OtaMergeError(f"{name}: repository {repo} not found (or gated: set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise OtaMergeError(f"{name}: hub error for {repo}@{revision} ({exc.__class__.__name__})") from None
    return info.sha, {s.rfilename: s.size or 0 for s in info.siblings or []}


def _hub_plan(src: Source) -> tuple[str, list[tuple[str, str, int]], tuple[str, str, str] | None]:
    """(commit, [(repo_id, path in repo, size)], preconditioner) of everything to fetch."""
    commit, sizes = _repo_files(src.name, src.ref, src.revision)
    files = [(src.ref, f, sizes[f]) for f in needed(list(sizes))]
    if not any(f.endswith(".safetensors") for _, f, _ in files):
        raise OtaMergeError(f"{src.name}: {src.ref}@{src.revision} has no safetensors weights")
    pre = _preconditioner(src, commit)
    if pre:
        pre_sizes = sizes if pre[0] == src.ref else _repo_files(src.name, pre[0], pre[2])[1]
        if pre[1] not in pre_sizes:
            raise OtaMergeError(f"{src.name}: preconditioner {pre[1]} not found in {pre[0]} at revision {pre[2]}")
        files.append((pre[0], pre[1], pre_sizes[pre[1]]))
    return commit, files, pre


def _preconditioner(src: Source, commit: str) -> tuple[str, str, str] | None:
    """(repo_id, path, revision) of a hub preconditioner, or None if it is local/absent."""
    if not src.preconditioner or _is_local(src.preconditioner):
        return None
    hub = split_hub_path(src.preconditioner) or (src.ref, src.preconditioner)  # (else in the model's repo)
    path = str(safe_relative(hub[1], f"{src.name}: preconditioner"))
    return hub[0], path, commit if hub[0] == src.ref else "main"


def download(src: Source, dest: str | Path) -> Path:
    """Fetch ``src`` into ``dest`` (model files, ``export``/preconditioner, manifest.json)."""
    dest = Path(dest)
    if (dest / MANIFEST).is_file():
        return dest  # complete: a re-run downloads nothing
    if _is_local(src.ref):
        return _from_local(src, dest)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    commit, files, pre = _hub_plan(src)
    partial = dest.with_name(f".{dest.name}.partial")
    check_space(sum(size for *_, size in files), dest.parent, f"{src.name} ({src.ref})")
    record = []
    for i, (repo, path, _) in enumerate(files):
        is_pre = pre is not None and i == len(files) - 1
        rel = safe_relative(path, f"{src.name}: {repo}")
        # the preconditioner gets a folder of its own: its repo path may clash with model files
        where = partial / ".preconditioner" if is_pre else partial
        revision = pre[2] if is_pre else commit
        try:
            got = Path(hf_hub_download(repo, str(rel), revision=revision, local_dir=where))
        except EntryNotFoundError:
            raise OtaMergeError(f"{src.name}: {path} not found in {repo} at revision {revision}") from None
        except HfHubHTTPError as exc:
            raise OtaMergeError(f"{src.name}: download of {repo}/{path}@{revision} failed "
                                f"({exc.__class__.__name__})") from None
        if is_pre:
            got = got.replace(partial / (PRECONDITIONER + got.suffix))
        record.append({"repo": repo, "path": str(got.relative_to(partial)), "revision": revision,
                       "size": got.stat().st_size})
    if src.preconditioner and pre is None:  # a local preconditioner for a hub model
        record.append(_link_preconditioner(src, Path.cwd(), partial))
    _name_optimizer_states(partial, record)
    manifest = {"name": src.name, "source": src.ref, "revision": src.revision, "commit": commit,
                "files": record}
    for junk in (".cache", ".preconditioner"):
        shutil.rmtree(partial / junk, ignore_errors=True)
    return _finish(partial, dest, manifest)


def _finish(partial: Path, dest: Path, manifest: dict) -> Path:
    write_json(partial / MANIFEST, manifest)
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    return dest


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy
        shutil.copy2(src, dst)


def _link_preconditioner(src: Source, folder: Path, partial: Path) -> dict:
    p = Path(src.preconditioner).expanduser()  # a path as it is, else one inside the model's folder
    p = p if p.exists() else folder / safe_relative(src.preconditioner, f"{src.name}: preconditioner")
    if p.is_dir():  # a sharded checkpoint (FSDP, DeepSpeed universal): its states by name, converted here
        from otamerge.curvature.optimizer_state import convert

        out = partial / f"{PRECONDITIONER}.safetensors"
        record = convert(p, partial, out)
        return {"path": out.name, "source": str(p.resolve()), "size": out.stat().st_size,
                "optimizer_state": record, "converted_from": p.name}
    if not p.is_file():
        raise OtaMergeError(f"{src.name}: preconditioner {src.preconditioner} not found")
    target = partial / (PRECONDITIONER + p.suffix)
    _link(p, target)
    return {"path": target.name, "source": str(p.resolve()), "size": p.stat().st_size}


def _name_optimizer_states(partial: Path, record: list[dict]) -> None:
    """A torch optimizer state (a Trainer's ``optimizer.pt``) becomes the safetensors moments
    every rule reads, its states named by the downloaded model's config (see
    curvature/optimizer_state.py); the .pt file is not kept."""
    pt = next((partial / r["path"] for r in record if Path(r["path"]).stem == PRECONDITIONER
               and Path(r["path"]).suffix in OPTIMIZER_SUFFIXES), None)
    if pt is None:
        return
    from otamerge.curvature.optimizer_state import TRAINER_STATE, convert

    origin = next(r for r in record if partial / r["path"] == pt)
    # a local Trainer checkpoint's trainer_state.json (its global step goes into the record)
    beside = Path(origin["source"]).with_name(TRAINER_STATE) if "source" in origin else None
    out = partial / f"{PRECONDITIONER}.safetensors"
    origin["optimizer_state"] = convert(pt, partial, out, trainer_state=beside)
    origin.update(path=out.name, size=out.stat().st_size, converted_from=pt.name)
    pt.unlink()


def _from_local(src: Source, dest: Path) -> Path:
    """A local folder: its needed files are hard-linked (copied across file systems)."""
    folder = Path(src.ref).expanduser()
    if not folder.is_dir():
        raise OtaMergeError(f"{src.name}: local source {folder} is not a folder")
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    record = []
    try:
        for f in needed([p.name for p in folder.iterdir() if p.is_file()]):
            _link(folder / f, partial / f)
            record.append({"path": f, "size": (folder / f).stat().st_size})
        if src.preconditioner:
            record.append(_link_preconditioner(src, folder, partial))
        _name_optimizer_states(partial, record)
    except BaseException:  # links are cheap to redo: leave nothing (a hub download keeps its partial to resume)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    manifest = {"name": src.name, "source": str(folder.resolve()), "revision": None, "commit": None,
                "files": record}
    return _finish(partial, dest, manifest)
