"""The released VRT models by name: download once, verify, convert once, cache.

`fetch("006_VRT_videodeblurring_GoPro")` returns a directory of converted weights
(`model_config.json` + `params/`, as `python -m vrt_jax.convert` writes) that every loader takes;
the first call downloads the official `.pth` from the VRT release with a progress bar, checks
its SHA-256, converts it and keeps only the converted copy. Later calls use the cache and need no
network.

Cache: `$VRT_JAX_CACHE`, else `$XDG_CACHE_HOME/vrt-jax`, else `~/.cache/vrt-jax`:
`converted/<name>/` (the weights), `checksums.json` (the SHA-256 of each download).
`$VRT_JAX_WEIGHTS_URL` replaces the release URL (a mirror, or `file:///folder` for offline use):
the file fetched is `<url>/<name>.pth`.

Checksums: the official release publishes none, and we found no published SHA-256 of these
files, so `SHA256` holds None for all nine. For those the first download's SHA-256 is recorded in
`checksums.json` (trust on first use, said in a log line) and every later download is checked
against it; a mismatch is refused. Where `SHA256` has a value, the download must match it.

The official VRT code and weights are licensed CC BY-NC 4.0 (non-commercial use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vrt_jax import presets

RELEASE_URL = "https://github.com/JingyunLiang/VRT/releases/download/v0.0"
URL_ENV = "VRT_JAX_WEIGHTS_URL"
CACHE_ENV = "VRT_JAX_CACHE"
LICENSE = "CC BY-NC 4.0"
_CHUNK = 1 << 20


class WeightsError(ValueError):
  """A download that failed or does not verify; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """A downloadable model: its constructor kwargs and the SHA-256 of its `.pth` (if known)."""

  model_kwargs: dict[str, Any]
  sha256: str | None = None


# No SHA-256 is published for the release files (see the module docstring).
MODELS: dict[str, Entry] = {name: Entry(presets.get_preset(name)) for name in presets.PRESETS}


def cache_dir() -> Path:
  """$VRT_JAX_CACHE, else $XDG_CACHE_HOME/vrt-jax, else ~/.cache/vrt-jax."""
  if os.environ.get(CACHE_ENV):
    return Path(os.environ[CACHE_ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "vrt-jax"


def url_for(name: str) -> str:
  """<$VRT_JAX_WEIGHTS_URL or the release URL>/<name>.pth."""
  base = os.environ.get(URL_ENV) or RELEASE_URL
  return f"{base.rstrip('/')}/{name}.pth"


def converted_dir(name: str) -> Path:
  return cache_dir() / "converted" / name


def is_cached(name: str) -> bool:
  from vrt_jax import checkpoint

  d = converted_dir(name)
  return (d / checkpoint.MODEL_CONFIG).is_file() and (d / checkpoint.PARAMS_DIR).is_dir()


def _recorded_checksums() -> dict[str, str]:
  path = cache_dir() / "checksums.json"
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return {}


def _record_checksum(name: str, digest: str) -> None:
  record = _recorded_checksums()
  record[name] = digest
  path = cache_dir() / "checksums.json"
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
  os.replace(tmp, path)


def _download(url: str, dest: Path, *, desc: str, progress: bool) -> str:
  """Streams `url` to `dest`, returning the SHA-256 of what was written."""
  digest = hashlib.sha256()
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with open(dest, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                        unit_divisor=1024, desc=desc, disable=not progress,
                                        leave=False) as bar:
        while chunk := response.read(_CHUNK):
          f.write(chunk)
          digest.update(chunk)
          bar.update(len(chunk))
  except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
    reason = getattr(e, "reason", e)
    raise WeightsError(
        f"cannot download {url} ({reason}).\nCheck the connection, or set {URL_ENV} to a mirror "
        "or a local folder (file:///path) holding the .pth files") from e
  return digest.hexdigest()


def fetch(name: str, *, progress: bool = True, log: Callable[[str], None] = print) -> Path:
  """The cached converted weights of a released model, downloading and converting them once.

  Returns the directory (`model_config.json` + `params/`). Raises WeightsError for an unknown
  name, a failed download or a checksum mismatch (the download is then deleted).
  """
  if name not in MODELS:
    raise WeightsError(f"unknown model {name!r}; the released models are: "
                       f"{', '.join(sorted(MODELS))}")
  target = converted_dir(name)
  if is_cached(name):
    return target
  from vrt_jax import checkpoint, convert
  from vrt_jax.vrt import VRT

  entry = MODELS[name]
  downloads = cache_dir() / "downloads"
  downloads.mkdir(parents=True, exist_ok=True)
  part = downloads / f"{name}.pth.part{os.getpid()}"
  url = url_for(name)
  log(f"downloading {name} from {url} (weights licensed {LICENSE}, non-commercial use)")
  try:
    digest = _download(url, part, desc=name, progress=progress)
    expected, source = entry.sha256, "the registry"
    if expected is None and name in _recorded_checksums():
      expected, source = _recorded_checksums()[name], f"{cache_dir() / 'checksums.json'}"
    if expected is not None and digest != expected.lower():
      raise WeightsError(
          f"checksum mismatch for {url}: SHA-256 {digest}, expected {expected} (from {source}).\n"
          f"The file is corrupt or not the official one; it was deleted. Check {URL_ENV} or retry")
    if expected is None:
      _record_checksum(name, digest)
      log(f"{name}: no published SHA-256; recorded {digest} from this first download "
          "(trust on first use: later downloads must match it)")
    model = VRT(**entry.model_kwargs)
    try:
      variables = convert.from_torch(convert.load_torch_checkpoint(str(part)), model)
    except Exception as e:
      raise WeightsError(f"{url} does not hold the {name} weights: {e}") from e
    tmp = target.parent / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.export_params(str(tmp), variables["params"], entry.model_kwargs,
                             name if name in presets.PRESETS else None)
    shutil.rmtree(target, ignore_errors=True)  # A half-written cache entry from a crash.
    os.replace(tmp, target)
  finally:
    part.unlink(missing_ok=True)
  log(f"{name}: converted and cached in {target}")
  return target
