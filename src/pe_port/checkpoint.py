"""Official PE checkpoints: find them (hub cache or a path), read them safely, map them strictly.

Official files are torch pickles holding a state dict raw, or under "state_dict" or "weights";
keys may carry a `module.` prefix; CLIP (Core) files hold the vision keys under `visual.` beside
the text tower's keys (at the root) and the scalar `logit_scale`. `.safetensors` files with the
same keys are accepted too. Pickles are read with `weights_only=True`, so no arbitrary code runs.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pe_port.errors import CheckpointError

VISUAL_PREFIX = "visual."
# The CLIP wrapper's own parameter: log of the temperature of the image-text logits.
LOGIT_SCALE = "logit_scale"
# Seconds to wait for the hub before saying it cannot be reached.
HUB_TIMEOUT_S = 5



def hub_repo(name: str) -> str:
    return f"facebook/{name}"


def hub_filename(name: str) -> str:
    return f"{name}.pt"


def cached_checkpoint(name: str) -> str | None:
    """The path of `name`'s official checkpoint in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_repo(name), hub_filename(name))
    return path if isinstance(path, str) and os.path.exists(path) else None


def download_checkpoint(name: str) -> str:
    """Fetch `name`'s official checkpoint into the hub cache (cache only if HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cached = cached_checkpoint(name)
    if cached is not None:
        return cached
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")
    if not offline:
        _check_hub_reachable(constants.ENDPOINT, name)
    try:
        return hf_hub_download(repo_id=hub_repo(name), filename=hub_filename(name),
                               etag_timeout=HUB_TIMEOUT_S)
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"checkpoint {hub_filename(name)} of {hub_repo(name)} is not in the hub cache and "
            f"cannot be downloaded ({err.__class__.__name__}); pass --checkpoint PATH"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"cannot download {hub_repo(name)}: {err}") from None


def _check_hub_reachable(endpoint: str, name: str) -> None:
    """One short connection attempt: offline, the hub client would retry for minutes."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_TIMEOUT_S).close()
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {hub_filename(name)} of {hub_repo(name)} is not in the hub cache and the "
            f"hub ({url.hostname}) cannot be reached ({err.__class__.__name__}): offline? "
            "Pass --checkpoint PATH") from None


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a `.pt` or `.safetensors` file as float32 arrays, keys as stored."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {err}") from None
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path.name} (a PyTorch file) needs PyTorch: pip install 'pe-port[torch]', "
            "or convert it once where PyTorch is installed: pe-port convert CKPT.pt "
            "OUT.safetensors") from None

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError,
            OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt, truncated or not a weights file: {first_line}"
        ) from None
    if isinstance(content, Mapping):
        for wrapper in ("state_dict", "weights"):
            if isinstance(content.get(wrapper), Mapping):
                content = content[wrapper]
                break
    if not isinstance(content, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(content).__name__}, not a "
                              "state dict")
    tensors = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    return {k: v.detach().float().numpy() for k, v in tensors.items()}


def unwrapped(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys without the `module.` prefix distributed training adds."""
    return {_strip(k, "module."): v for k, v in state.items()}


def vision_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip `module.`; from CLIP files keep only the `visual.` keys, without the prefix."""
    state = unwrapped(state)
    if any(k.startswith(VISUAL_PREFIX) for k in state):
        state = {k[len(VISUAL_PREFIX):]: v for k, v in state.items()
                 if k.startswith(VISUAL_PREFIX)}
    return state


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def read_vision_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The vision tower's weights in checkpoint `path`, by their official names."""
    return vision_state_dict(read_state_dict(path))


def text_state_dict(state: Mapping[str, np.ndarray], path: str | Path) -> dict[str, np.ndarray]:
    """Strip `module.`; keep the text tower's keys (the root of a CLIP file, not `visual.`) and
    `logit_scale`. A file without them (a vision-only checkpoint) is an error naming it."""
    state = unwrapped(state)
    if not any(k.startswith(VISUAL_PREFIX) for k in state) or LOGIT_SCALE not in state:
        raise CheckpointError(
            f"checkpoint {path} holds no text tower (a vision-only file: images work, text "
            "needs the model's full CLIP checkpoint)")
    return {k: v for k, v in state.items() if not k.startswith(VISUAL_PREFIX)}


def read_text_weights(path: str | Path) -> dict[str, np.ndarray]:
    """The text tower's weights and `logit_scale` in CLIP checkpoint `path`."""
    return text_state_dict(read_state_dict(path), path)
