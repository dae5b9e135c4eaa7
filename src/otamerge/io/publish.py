"""Publish a merged model to the Hugging Face hub: one commit of its folder, its card as README.md.

The hub token comes from the standard environment (HF_TOKEN or ``hf auth login``) and is
never written anywhere; HF_ENDPOINT points the client at another hub.
"""

from __future__ import annotations

from pathlib import Path

from otamerge.errors import OtaMergeError
from otamerge.names import CARD


def push(model_dir: str | Path, repo_id: str, card: str | Path | None = None, private: bool = True,
         message: str | None = None) -> dict:
    """Create ``repo_id`` if needed and commit every file of ``model_dir`` to it (``card``,
    when given, replaces the folder's README.md). Returns the repo and commit."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model_dir)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not (model_dir / "config.json").is_file():
        raise OtaMergeError(f"{model_dir}: not a model folder (no config.json)")
    ops = [CommitOperationAdd(p.relative_to(model_dir).as_posix(), str(p))
           for p in files if not (card and p.relative_to(model_dir).as_posix() == CARD)]
    if card:
        ops.append(CommitOperationAdd(CARD, str(card)))
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(url.repo_id, ops, commit_message=message or f"Upload {model_dir.name} (otamerge)")
    except HfHubHTTPError as exc:
        raise OtaMergeError(f"push to {repo_id}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:  # the hub refused the card's front matter
        raise OtaMergeError(f"push to {repo_id}: {' '.join(str(exc).split())}") from None
    return {"repo_id": url.repo_id, "url": str(url), "commit": info.oid, "files": [op.path_in_repo for op in ops]}
