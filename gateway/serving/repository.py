"""Model folders on disk: `<base_path>/<version>/<model files>`, or a single model file as version 1."""

from __future__ import annotations

from pathlib import Path

from gateway.core.errors import ConfigError

# What openvino.Core.read_model reads, in the order we prefer when a folder holds several.
MODEL_SUFFIXES = (".xml", ".onnx", ".tflite", ".pdmodel", ".json", ".pb")


def find_model_file(folder: Path) -> Path | None:
    """The model inside one version folder; a TF SavedModel is the folder itself."""
    if (folder / "saved_model.pb").is_file():
        return folder
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for suffix in MODEL_SUFFIXES:
        for p in files:
            if p.suffix.lower() == suffix and not (suffix == ".json" and p.name == "config.json"):
                return p
    return None


def discover_versions(model_name: str, base_path: str) -> dict[int, Path]:
    """Map each version number found under base_path to its model file.

    Raises ConfigError naming the model, the field and the path when nothing can be served.
    """
    root = Path(base_path)
    if not root.exists():
        raise ConfigError(
            f"model '{model_name}': field 'base_path' = \"{base_path}\": no such file or folder"
        )
    if root.is_file():
        return {1: root}
    versions: dict[int, Path] = {}
    empty: list[str] = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or not child.name.isdigit() or int(child.name) <= 0:
            continue  # OVMS ignores anything that is not a positive integer folder
        model_file = find_model_file(child)
        if model_file is None:
            empty.append(child.name)
        else:
            versions[int(child.name)] = model_file
    if not versions:
        if empty:
            raise ConfigError(
                f"model '{model_name}': field 'base_path' = \"{base_path}\": version folder(s) "
                f"{', '.join(empty)} hold no model file ({', '.join(MODEL_SUFFIXES)} or saved_model.pb)"
            )
        raise ConfigError(
            f"model '{model_name}': field 'base_path' = \"{base_path}\": no version folders "
            "(expected <base_path>/<version>/ with integer versions > 0)"
        )
    return versions


def folder_fingerprint(folder: Path) -> tuple:
    """(relative path, size, mtime) of every file under a version folder: it changes while a copy is
    under way, so a version that failed to load half-copied is tried again once the copy ends."""
    entries = []
    try:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    except OSError:
        pass  # a folder removed while we look: the next poll sees what is left
    return tuple(entries)


def looks_like_model(folder: Path) -> bool:
    """A folder with at least one positive-integer version folder, as the repository index lists them."""
    try:
        return folder.is_dir() and any(
            c.is_dir() and c.name.isdigit() and int(c.name) > 0 for c in folder.iterdir()
        )
    except OSError:
        return False


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """root / relative, refused when it is absolute or escapes root (through '..' or a symbolic link)."""
    from gateway.core.errors import InvalidArgument

    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        raise InvalidArgument(
            f"{what}: must be a relative path inside the model repository; got '{relative}'"
        )
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise InvalidArgument(f"{what}: '{relative}' points outside the model repository")
    return candidate
