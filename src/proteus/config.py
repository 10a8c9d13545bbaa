"""Typed run configuration: YAML presets + ``--set key=value`` overrides, validated before any work.

A run config names its components (data sources, backbone, learner) by registry name, with the
component's own options beside ``name``::

    learner:
      name: simplecil
    backbone:
      name: efficientnet-lite0
      image_size: 64

Each component's options are validated by the model its registry entry declares, so a typo such
as ``learner.epoch`` fails at once, naming the key and the valid keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .registry import ConfigError, Options, Registry, format_validation_error
from .tracking import TrackingOptions


class Component(BaseModel):
    """A registry name plus that entry's (already validated) options."""

    model_config = ConfigDict(extra="forbid")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    # the validated options model itself, kept so that builders never parse a dict again
    _typed: Options | None = PrivateAttr(default=None)

    def resolved(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}

    def typed(self, registry: Registry, where: str = "") -> Options:
        """The options as the entry's typed model (validated once, then kept)."""
        if self._typed is None:
            self._typed = registry.parse_options(self.name, self.options, where or self.name)
        return self._typed

    @classmethod
    def of(cls, registry: Registry, raw: Any, where: str) -> "Component":
        """Validate ``{name: ..., option: value, ...}`` against ``registry``."""
        return _component(registry, raw, where)


class EvalOptions(Options):
    batch_size: int = Field(256, gt=0)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None  # run directory name; default "<preset stem>-<learner>-s<seed>"
    seed: int = 1993
    output_dir: str = "runs"
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    # "auto": bf16 autocast on a CUDA device that supports it, else fp32 (CPU runs stay fp32)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    progress: bool = True
    data: list[Component]
    scenario: dict[str, Any]
    backbone: Component
    learner: Component
    eval: EvalOptions = Field(default_factory=EvalOptions)
    save_model: bool = True
    checkpoint: bool = True  # after every task, so that --resume continues from the last one
    tracking: TrackingOptions = Field(default_factory=TrackingOptions)

    def resolved(self) -> dict[str, Any]:
        """Plain, JSON-ready dict with every default filled in (written to every run)."""
        out = self.model_dump(exclude={"data", "backbone", "learner"})
        out["data"] = [c.resolved() for c in self.data]
        out["backbone"] = self.backbone.resolved()
        out["learner"] = self.learner.resolved()
        return out

    def differs_from(self, recorded: dict[str, Any]) -> list[str]:
        """The top-level keys where a finished run's recorded config (``results.json``'s
        ``config``) is not this one, ignoring where the run was written and whether it showed
        progress, and options added later at their neutral default (:func:`comparable`); empty
        when the run is this config's run."""
        want, recorded = comparable(self.recorded()), comparable(recorded)
        keys = want.keys() | recorded.keys()
        return sorted(k for k in keys if want.get(k) != recorded.get(k))

    def recorded(self) -> dict[str, Any]:
        """The resolved config as a run's ``results.json`` records it (through JSON: tuples
        become lists)."""
        return json.loads(json.dumps(self.resolved()))

    def fingerprint(self) -> str:
        """:func:`config_fingerprint` of this config: equal to a finished run's exactly when
        :meth:`differs_from` finds nothing."""
        return config_fingerprint(self.recorded())


# where a run was written and whether it showed progress: not part of what a run measured
RUN_PLACE = frozenset({"name", "output_dir", "progress"})


def config_fingerprint(recorded: dict[str, Any]) -> str:
    """A short hash of a run's recorded config as :func:`comparable` keeps it, so that a stored
    result can later be checked against the config its preset resolves to now."""
    canonical = json.dumps(comparable(recorded), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def comparable(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded config without :data:`RUN_PLACE`, and without each component option declared
    with :func:`~proteus.registry.added_later` while it holds its neutral default: a run made
    before such an option existed compares equal to the same run made after. A component whose
    name is no longer registered is kept whole."""
    # lazy, as in validate: registering every component happens on first use
    from .backbones import BACKBONES
    from .data import DATASETS
    from .learners import LEARNERS

    def strip(section: Any, registry: Registry) -> Any:
        if not isinstance(section, dict) or section.get("name") not in registry.names():
            return section
        neutral = registry.get(section["name"]).options.neutral_defaults()
        return {k: v for k, v in section.items() if k not in neutral or v != neutral[k]}

    kept = {k: v for k, v in recorded.items() if k not in RUN_PLACE}
    for key, registry in (("backbone", BACKBONES), ("learner", LEARNERS)):
        if key in kept:
            kept[key] = strip(kept[key], registry)
    if isinstance(kept.get("data"), list):
        kept["data"] = [strip(source, DATASETS) for source in kept["data"]]
    return kept


def _split_component(raw: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"'{where}' must be a mapping with a 'name' key, got {raw!r}")
    opts = dict(raw)
    return str(opts.pop("name")), opts


def _component(registry: Registry, raw: Any, where: str) -> Component:
    name, opts = _split_component(raw, where)
    try:
        registry.get(name)
    except ConfigError as exc:
        raise ConfigError(f"'{where}.name': {exc}") from None
    options = registry.parse_options(name, opts, where)
    component = Component(name=name, options=options.model_dump(mode="json"))
    component._typed = options
    return component


def validate(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw config dict (YAML + overrides) into a :class:`RunConfig`."""
    # Imported here so that registering every component happens once, on first use.
    from .backbones import BACKBONES
    from .data import DATASETS, ScenarioOptions
    from .learners import LEARNERS

    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    known = set(RunConfig.model_fields)
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{key}'; valid keys here: {', '.join(sorted(known))}")
    for key in ("data", "backbone", "learner", "scenario"):
        if key not in raw:
            raise ConfigError(f"missing key '{key}'")
    for key in ("eval", "tracking"):
        if raw.get(key) is None:
            raw.pop(key, None)
    sources = raw["data"] if isinstance(raw["data"], list) else [raw["data"]]
    raw["data"] = [_component(DATASETS, s, f"data.{i}") for i, s in enumerate(sources)]
    raw["backbone"] = _component(BACKBONES, raw["backbone"], "backbone")
    raw["learner"] = _component(LEARNERS, raw["learner"], "learner")
    try:
        scenario = ScenarioOptions.model_validate(raw["scenario"] or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, ScenarioOptions, "scenario")) from None
    raw["scenario"] = scenario.model_dump(mode="json")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig, "")) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a","b","0","c"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            where = ".".join(path[: i + 1])
            if isinstance(node, list):
                node = node[_index(part, node, where)]
            else:
                if node.get(part) is None:  # an empty YAML section reads as null
                    node[part] = {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {text!r}: '{where}' is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, node, text)] = value
        else:
            node[last] = value
    return raw


def _index(part: str, node: list, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"'{where}': expected a list index below {len(node)}, got {part!r}")
    return int(part)


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a preset; ``base: other.yaml`` (relative to this file) inherits that preset first.

    Sections merge key by key, except that a component section naming a different ``name``
    (say ``learner: {name: ranpac}`` over a ``proteus`` base) replaces the base's section, whose
    options would not fit the new component.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to this file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path to another preset, got {base!r}")
    return _merge(read_yaml(path.parent / base, (*_seen, path.resolve())), data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        renamed = isinstance(value, dict) and isinstance(old, dict) and \
            "name" in value and value["name"] != old.get("name")
        if isinstance(value, dict) and isinstance(old, dict) and not renamed:
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML preset, apply ``key=value`` overrides, validate everything."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    raw.setdefault("name", None)
    config = validate(raw)
    if config.name is None:
        config.name = f"{Path(path).stem}-{config.learner.name}-s{config.seed}"
    return config
