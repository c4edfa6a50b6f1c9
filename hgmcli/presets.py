"""The configs that ship inside the package (``hgmcli/configs/*.yaml``), by name.

``hgm pipeline --config smoke`` works from any folder once hgm is installed:
``--config`` takes a path, as before, or the name of a bundled config. A file
that exists wins, so a local ``smoke.yaml`` is never shadowed by the bundled
one. In a checkout, ``configs/`` at the top is a link to the same folder."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled() -> dict[str, Path]:
    """Bundled config name (file stem) -> path, sorted by name."""
    return dict(sorted((p.stem, p) for p in CONFIG_DIR.glob("*.yaml")))


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """The YAML file that ``--config`` means.

    In order: an existing file at that path; a bundled config named ``NAME`` or
    ``NAME.yaml``; the README's ``configs/NAME.yaml`` spelling run outside a
    checkout (no such file here, but a bundled ``NAME``). Anything else is a
    one-line ``ConfigError`` that lists the bundled names."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    configs = bundled()
    stem = path.name.removesuffix(".yaml")
    # A bare name, or configs/NAME.yaml relative to a folder that has no such file.
    if stem in configs and (path.parent == Path(".") or path.parent == Path("configs")):
        return configs[stem]
    names = ", ".join(configs) or "none"
    what = "is a folder, not a config file" if path.is_dir() else "no such file"
    raise ConfigError(f"config {text!r}: {what}, and not a bundled config (bundled: {names})")


def list_configs() -> list[tuple[str, str]]:
    """(name, one-line purpose) per bundled config, sorted by name.

    The purpose is the YAML's first comment line, less its ``# NAME.yaml —``
    prefix (every shipped config starts that way) and of a trailing colon where
    the comment goes on below; "" when there is none."""
    rows = []
    for name, path in bundled().items():
        rows.append((name, _purpose(path, name)))
    return rows


def _purpose(path: Path, name: str) -> str:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if not line.startswith("#"):
                return ""
            text = line.lstrip("#").strip()
            for prefix in (f"{name}.yaml", name):
                if text.startswith(prefix):
                    text = text[len(prefix):].lstrip(" \t:—–-")
                    break
            return text.rstrip(" :,;")  # a comment that goes on over the next lines
    return ""
