"""WordNet 3.0 synset glosses labelled by supersense (the Debian package wordnet-base)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from proteus.data.base import DataError, LabeledData
from proteus.data.readers._common import DATASETS
from proteus.registry import Options


# lexicographer file names, indexed by the 2-digit lex_filenum field of data.* records
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()


class WordNetOptions(Options):
    root: str = "/usr/share/wordnet"
    parts_of_speech: list[Literal["noun", "verb"]] = Field(
        default_factory=lambda: ["noun", "verb"], min_length=1)
    min_count: int = Field(340, ge=0)
    max_classes: int | None = Field(None, ge=1)


@DATASETS.register("wordnet", WordNetOptions,
                   "WordNet 3.0 glosses labelled by supersense (lexicographer file), text")
def read_wordnet(options: WordNetOptions) -> LabeledData:
    """Synset glosses from ``root/data.noun`` / ``root/data.verb``, labelled by supersense.

    Each record line is ``offset lex_filenum ss_type ... | gloss``; field 1 is the 2-digit
    lexicographer file number (an index into :data:`LEXNAMES`). Lines starting with two spaces
    are the licence header. Classes with fewer than ``min_count`` glosses are dropped, then the
    ``max_classes`` most frequent are kept (ties by name); labels follow sorted class names.
    """
    root = Path(options.root)
    glosses: list[str] = []
    lexnames: list[str] = []
    for pos in dict.fromkeys(options.parts_of_speech):  # de-duplicated, order kept
        path = root / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"{path}: WordNet data file not found "
                            "(the Debian package wordnet-base provides /usr/share/wordnet)")
        for gloss, lexname in _wordnet_records(path):
            glosses.append(gloss)
            lexnames.append(lexname)

    counts = Counter(lexnames)
    kept = [name for name, n in counts.items() if n >= options.min_count]
    if options.max_classes is not None:
        kept = sorted(kept, key=lambda name: (-counts[name], name))[: options.max_classes]
    if not kept:
        raise DataError(f"{root}: no WordNet supersense has at least {options.min_count} glosses")
    class_names = sorted(kept)
    index = {name: i for i, name in enumerate(class_names)}
    keep = [i for i, name in enumerate(lexnames) if name in index]
    return LabeledData(
        items=[glosses[i] for i in keep],
        labels=np.array([index[lexnames[i]] for i in keep], dtype=np.int64),
        class_names=class_names,
        modality="text",
        official_split=None,
        source="wordnet",
    )


def _wordnet_records(path: Path):
    """Yield ``(gloss, lexname)`` per synset line of one WordNet ``data.*`` file."""
    # WordNet 3.0 is ASCII apart from a few stray bytes; they must not abort a 95k-line read
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            if not sep:
                raise DataError(f"{path}: line {lineno}: no ' | ' before the gloss")
            fields = head.split()
            if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) >= len(LEXNAMES):
                found = fields[1] if len(fields) > 1 else "nothing"
                raise DataError(f"{path}: line {lineno}: field 2 must be a lexicographer file "
                                f"number 00..{len(LEXNAMES) - 1}, found {found!r}")
            yield gloss.strip(), LEXNAMES[int(fields[1])]
