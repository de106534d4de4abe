"""Finding files in the local Hugging Face hub cache, offline.

Analysts already have their models and transcoders in the cache that `huggingface_hub` fills
(`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). Its layout, for a
model repo `ORG/NAME`:

    models--ORG--NAME/refs/<branch or tag>          the 40-hex commit id
    models--ORG--NAME/snapshots/<commit>/<path>     the file (or a symlink into blobs/)

Nothing here touches the network: a file that is not in the cache is an error whose hint is the
`huggingface-cli download` line that fetches it. References accepted (circuit-tracer's forms):

    ORG/NAME[/SUB/FOLDER][@REVISION]                 a repo, optionally a folder in it
    hf://ORG/NAME/PATH/IN/REPO[?revision=REV]        one file
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import CircuitStudioError

_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# circuit-tracer's short names for its transcoder sets
TRANSCODER_ALIASES = {"gemma": "mwhanna/gemma-scope-transcoders",
                      "llama": "mntss/transcoder-Llama-3.2-1B"}


class HubCacheError(CircuitStudioError):
    """A repo, revision or file is not in the local Hugging Face cache (or a reference is malformed)."""


@dataclass(frozen=True)
class HubRef:
    """A repo (and optionally a folder or file in it) at a revision; revision None means main."""

    repo: str  # "ORG/NAME"
    path: str = ""  # folder or file inside the repo, "" for the root
    revision: str | None = None

    def __str__(self) -> str:
        out = self.repo + (f"/{self.path}" if self.path else "")
        return out + (f"@{self.revision}" if self.revision else "")

    def download_hint(self, file: str | None = None) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        what = f" {file}" if file else (f' --include "{self.path}/*"' if self.path else "")
        return f"Fetch it on a machine with internet access: huggingface-cli download {self.repo}{what}{rev}"


def cache_dir() -> Path:
    """The hub cache folder as huggingface_hub would choose it (HF_HUB_CACHE, HF_HOME/hub, default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def looks_like_repo_ref(text: str) -> bool:
    """True for 'ORG/NAME[/...][@REV]' or 'hf://...' (callers check local paths first)."""
    if text.startswith("hf://"):
        return True
    head = text.split("@", 1)[0].split("/")
    return (len(head) >= 2 and all(_REPO_PART.fullmatch(p) for p in head[:2])
            and not text.startswith((".", "/", "~")))


def parse_repo_ref(text: str) -> HubRef:
    """'ORG/NAME[/SUB][@REV]', 'hf://ORG/NAME/SUB?revision=REV' or an alias -> HubRef."""
    text = TRANSCODER_ALIASES.get(text.strip(), text.strip())
    if text.startswith("hf://"):
        return parse_hf_uri(text, need_path=False)
    body, _, rev = text.partition("@")
    parts = [p for p in body.split("/") if p]
    if len(parts) < 2 or not all(_REPO_PART.fullmatch(p) for p in parts[:2]):
        raise HubCacheError(f"{text!r} is not a Hugging Face reference.",
                            "Write ORG/NAME, ORG/NAME/FOLDER or ORG/NAME@REVISION, or give a local path.")
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]), rev or None)


def parse_hf_uri(uri: str, *, need_path: bool = True) -> HubRef:
    """'hf://ORG/NAME/PATH[?revision=REV]' -> HubRef (circuit-tracer's parse_hf_uri grammar)."""
    split = urlsplit(uri)
    parts = [p for p in split.path.split("/") if p]
    if split.scheme != "hf" or not split.netloc or not parts or (need_path and len(parts) < 2):
        raise HubCacheError(f"{uri!r} is not a valid hf:// address.",
                            "Write hf://ORG/NAME/path/in/repo[?revision=REV].")
    rev = (parse_qs(split.query).get("revision") or [""])[0]
    return HubRef(f"{split.netloc}/{parts[0]}", "/".join(parts[1:]), rev or None)


def _repo_folder(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def snapshot_dir(ref: HubRef, file: str | None = None) -> Path:
    """The snapshot folder of `ref`'s repo at its revision. Raises HubCacheError when not cached
    (its hint fetches `file` when given, else the folder `ref.path`)."""
    folder = _repo_folder(ref.repo)
    if not folder.is_dir():
        raise HubCacheError(f"{ref.repo} is not in the local Hugging Face cache ({cache_dir()}).",
                            ref.download_hint(file) + " (or set HF_HOME / HF_HUB_CACHE to the cache that has it).")
    revision = ref.revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        refs = folder / "refs" / revision
        if not refs.is_file():
            have = sorted(p.name for p in (folder / "refs").glob("*")) if (folder / "refs").is_dir() else []
            raise HubCacheError(f"Revision {revision!r} of {ref.repo} is not in the local cache "
                                f"(cached refs: {', '.join(have) or 'none'}).", ref.download_hint(file))
        commit = refs.read_text(encoding="utf-8").strip()
    snap = folder / "snapshots" / commit
    if not snap.is_dir():
        raise HubCacheError(f"Snapshot {commit[:12]} of {ref.repo} ({revision}) is not in the local cache.",
                            ref.download_hint(file))
    return snap


def resolve_file(ref: HubRef, path: str | None = None) -> Path:
    """The cached file `path` (default `ref.path`) of `ref`'s repo. Raises HubCacheError naming it."""
    path = ref.path if path is None else path
    f = snapshot_dir(ref, path) / path
    if not f.is_file():  # a dangling symlink into blobs/ counts as missing too
        raise HubCacheError(f"{path} of {ref.repo}{'@' + ref.revision if ref.revision else ''} "
                            "is not in the local Hugging Face cache.", ref.download_hint(path))
    return f  # inside the snapshot (not the blob), so sibling paths keep working


def resolve_folder(ref: HubRef) -> Path:
    """The cached folder `ref.path` of `ref`'s repo (the snapshot root when empty)."""
    folder = snapshot_dir(ref) / ref.path
    if not folder.is_dir():
        raise HubCacheError(f"Folder {ref.path!r} of {ref.repo} is not in the local Hugging Face cache.",
                            ref.download_hint())
    return folder
