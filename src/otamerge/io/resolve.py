"""Where a model or preconditioner reference points: a local path or the Hugging Face hub.

Hub references are resolved with huggingface_hub (its cache, HF_ENDPOINT and
HF_HUB_OFFLINE apply); the download stage fetches them ahead of a merge.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from otamerge.errors import OtaMergeError

MODEL_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def resolve_model(ref: str) -> Path:
    """A local model folder for ``ref`` (a path, or a hub repo id fetched to the cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise OtaMergeError(f"model {ref}: not a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, allow_patterns=MODEL_PATTERNS))
    except Exception as exc:
        raise OtaMergeError(f"model {ref}: not a local folder and not available from the hub "
                            f"({type(exc).__name__})") from None


def _escapes(path: str) -> str | None:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts or "\\" in path:
        return "absolute or escaping the download folder"
    return None


def safe_relative(path: str, what: str) -> PurePosixPath:
    """A path inside a repo or model folder that cannot leave it (no .., not absolute)."""
    why = _escapes(path)
    if why:
        raise OtaMergeError(f"{what}: refusing path {path!r} ({why})")
    return PurePosixPath(path)


def split_hub_path(ref: str) -> tuple[str, str] | None:
    """``repo_id:path`` or ``owner/name/path/in/repo`` -> (repo_id, path); None otherwise."""
    if ":" in ref and "/" in ref.split(":", 1)[0]:
        repo, file = ref.split(":", 1)
        return repo, file
    parts = ref.split("/")
    if len(parts) >= 3 and not ref.startswith((".", "/", "~")):
        return "/".join(parts[:2]), "/".join(parts[2:])
    return None


def resolve_preconditioner(ref: str, model_dir: Path, model: str) -> Path:
    """A local moments file: ``ref`` as a path (also relative to the model's folder),
    else a hub file given as ``repo_id/path`` or ``repo_id:path``."""
    candidates = [Path(ref).expanduser()]  # a file named as it is, else one inside the model's folder
    if _escapes(ref) is None:
        candidates.append(model_dir / ref)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hub = split_hub_path(ref)
    if hub is not None:
        safe_relative(hub[1], f"model {model}: preconditioner_path")
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(hub[0], hub[1]))
        except Exception as exc:
            raise OtaMergeError(f"model {model}: preconditioner_path {ref} not found locally or on the hub "
                                f"({type(exc).__name__})") from None
    raise OtaMergeError(f"model {model}: preconditioner_path {ref} not found")
