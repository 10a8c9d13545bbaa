"""WordNet 3.0 synset glosses labelled by supersense (the Debian package wordnet-base)."""

from __future__ import annotations

import re
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
    return _read(options, examples=False)


# a reader of its own rather than an option of "wordnet": a new option would enter every
# recorded wordnet run's config and so change the fingerprint of every stored text result
@DATASETS.register("wordnet-examples", WordNetOptions,
                   "WordNet 3.0 usage examples as 'word: example', labelled by the supersense "
                   "of that word's sense (supersense tagging), text")
def read_wordnet_examples(options: WordNetOptions) -> LabeledData:
    """One item per quoted usage example in a synset's gloss, ``"word: example"``, where word
    is the first of the synset's words that the example contains (the first word if none
    does), labelled by the synset's supersense: the label is the sense of one word in its
    context, not the topic of a definition. ``min_count`` and ``max_classes`` count examples.
    """
    return _read(options, examples=True)


def _read(options: WordNetOptions, examples: bool) -> LabeledData:
    root = Path(options.root)
    glosses: list[str] = []
    lexnames: list[str] = []
    for pos in dict.fromkeys(options.parts_of_speech):  # de-duplicated, order kept
        path = root / f"data.{pos}"
        if not path.is_file():
            raise DataError(f"{path}: WordNet data file not found "
                            "(the Debian package wordnet-base provides /usr/share/wordnet)")
        for gloss, lexname, words in _wordnet_records(path):
            for item in (_examples(gloss, words) if examples else [gloss]):
                glosses.append(item)
                lexnames.append(lexname)

    counts = Counter(lexnames)
    kept = [name for name, n in counts.items() if n >= options.min_count]
    if options.max_classes is not None:
        kept = sorted(kept, key=lambda name: (-counts[name], name))[: options.max_classes]
    if not kept:
        raise DataError(f"{root}: no WordNet supersense has at least {options.min_count} "
                        f"{'usage examples' if examples else 'glosses'}")
    class_names = sorted(kept)
    index = {name: i for i, name in enumerate(class_names)}
    keep = [i for i, name in enumerate(lexnames) if name in index]
    return LabeledData(
        items=[glosses[i] for i in keep],
        labels=np.array([index[lexnames[i]] for i in keep], dtype=np.int64),
        class_names=class_names,
        modality="text",
        official_split=None,
        source="wordnet-examples" if examples else "wordnet",
    )


_QUOTED = re.compile(r'"([^"]*)"')
_HEX = re.compile(r"[0-9a-fA-F]{2}")


def _examples(gloss: str, words: list[str]) -> list[str]:
    """``"word: example"`` for every quoted usage example in ``gloss``; ``word`` is the first of
    the synset's ``words`` that the example contains (case-insensitive, ``_`` read as a space),
    or the first word when none does (an inflected form: "ran" for "run")."""
    names = [w.replace("_", " ") for w in words]
    out = []
    for example in _QUOTED.findall(gloss):
        example = example.strip()
        if not example:
            continue
        lower = example.lower()
        word = next((n for n in names if n.lower() in lower), names[0])
        out.append(f"{word}: {example}")
    return out


def _wordnet_records(path: Path):
    """Yield ``(gloss, lexname, words)`` per synset line of one WordNet ``data.*`` file; the
    words are the synset's lemmas (``run``, ``operate``; adjective markers like ``(a)`` cut)."""
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
            count = int(fields[3], 16) if len(fields) > 3 and _HEX.fullmatch(fields[3]) else 0
            words = [re.sub(r"\(\w+\)$", "", w) for w in fields[4: 4 + 2 * count: 2]]
            p_cnt = fields[4 + 2 * count] if len(fields) > 4 + 2 * count else ""
            if count == 0 or len(words) != count or not (len(p_cnt) == 3 and p_cnt.isdigit()):
                raise DataError(f"{path}: line {lineno}: field 4 must be the hexadecimal count "
                                "of the synset's words, followed by that many word, lex_id pairs "
                                "and the 3-digit pointer count")
            yield gloss.strip(), LEXNAMES[int(fields[1])], words
