"""Name -> factory registries for datasets, backbones and learners.

Each entry declares a pydantic options model, so every component validates its own options and a
typo fails before any work with the valid keys listed (mammoth-style registries, no if/elif).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

T = TypeVar("T")


class Options(BaseModel):
    """Base of every component's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def neutral_defaults(cls) -> dict[str, Any]:
        """The options declared with :func:`added_later`, each with the default that reproduces
        the runs made before it existed."""
        return {name: field.default for name, field in cls.model_fields.items()
                if isinstance(field.json_schema_extra, dict)
                and field.json_schema_extra.get(_ADDED_LATER)}


_ADDED_LATER = "added_later"


def added_later(default: Any, **kwargs: Any) -> Any:
    """A pydantic ``Field`` for an option added after results were stored, whose ``default``
    leaves a run exactly as it was before the option existed. A config fingerprint leaves such
    an option out while it holds that default (:func:`proteus.config.config_fingerprint`), so
    adding it does not mark every stored row of its component stale."""
    return Field(default, json_schema_extra={_ADDED_LATER: True}, **kwargs)


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


@dataclass
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    options: type[Options]
    summary: str


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, options: type[Options] = Options, summary: str = ""):
        """Decorator: ``@DATASETS.register("fashion-mnist", FashionMNISTOptions, "...")``."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = summary or (factory.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, factory, options, doc)
            return factory

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def parse_options(self, name: str, raw: dict[str, Any] | None, where: str) -> Options:
        """Validate ``raw`` against the entry's options model; errors name ``where.key``."""
        entry = self.get(name)
        try:
            return entry.options.model_validate(raw or {})
        except ValidationError as exc:
            # "name" sits beside the options in a config section, so it is valid there too
            raise ConfigError(format_validation_error(exc, entry.options, where,
                                                      also=["name"])) from None

    def create(self, name: str, options: Options, **kwargs) -> T:
        """Build entry ``name`` from options that are already its typed model."""
        entry = self.get(name)
        if not isinstance(options, entry.options):
            raise TypeError(f"{self.kind} {name!r} takes {entry.options.__name__}, "
                            f"got {type(options).__name__}")
        return entry.factory(options, **kwargs)

    def build(self, name: str, raw: dict[str, Any] | None = None, where: str = "", **kwargs) -> T:
        options = self.parse_options(name, raw, where or f"{self.kind}.options")
        return self.get(name).factory(options, **kwargs)


def format_validation_error(exc: ValidationError, model: type[BaseModel], where: str,
                            also: list[str] | tuple = ()) -> str:
    """One readable line per problem: the dotted key, what is wrong, and the valid keys."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{where}.{loc}" if where and loc else (where or loc)
        if err["type"] == "extra_forbidden":
            valid = _valid_keys(model, err["loc"][:-1])
            if len(err["loc"]) == 1:
                valid = sorted({*valid, *also})
            lines.append(f"unknown key '{key}'; valid keys here: {', '.join(valid)}")
        else:
            lines.append(f"bad value for '{key}': {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _valid_keys(model: type[BaseModel], path: tuple) -> list[str]:
    """Field names of the (nested) model at ``path``; best effort for lists and unions."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_of(field.annotation)
    return sorted(getattr(current, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
