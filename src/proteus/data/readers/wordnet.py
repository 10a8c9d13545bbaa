"""WordNet 3.0 synset glosses labelled by supersense (the Debian package wordnet-base)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Literal, NamedTuple

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
    glosses: list[str] = []
    lexnames: list[str] = []
    for path in _data_files(options):
        for gloss, lexname, words in _wordnet_records(path):
            for item in (_examples(gloss, words) if examples else [gloss]):
                glosses.append(item)
                lexnames.append(lexname)
    return _labelled(glosses, lexnames, options, "supersense",
                     "usage examples" if examples else "glosses",
                     "wordnet-examples" if examples else "wordnet")


def _data_files(options: WordNetOptions) -> list[Path]:
    """``root/data.<pos>`` for each part of speech asked for (de-duplicated, order kept)."""
    paths = [Path(options.root) / f"data.{pos}" for pos in dict.fromkeys(options.parts_of_speech)]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: WordNet data file not found "
                            "(the Debian package wordnet-base provides /usr/share/wordnet)")
    return paths


def _labelled(items: list[str], names: list[str], options: WordNetOptions, kind: str,
              counted: str, source: str) -> LabeledData:
    """Keep the classes (``names``, one per item) with at least ``min_count`` items, then the
    ``max_classes`` most frequent (ties by name); labels follow sorted class names."""
    counts = Counter(names)
    kept = [name for name, n in counts.items() if n >= options.min_count]
    if options.max_classes is not None:
        kept = sorted(kept, key=lambda name: (-counts[name], name))[: options.max_classes]
    if not kept:
        raise DataError(f"{options.root}: no WordNet {kind} has at least {options.min_count} "
                        f"{counted}")
    class_names = sorted(kept)
    index = {name: i for i, name in enumerate(class_names)}
    keep = [i for i, name in enumerate(names) if name in index]
    return LabeledData(
        items=[items[i] for i in keep],
        labels=np.array([index[names[i]] for i in keep], dtype=np.int64),
        class_names=class_names,
        modality="text",
        official_split=None,
        source=source,
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
    for record in _synset_records(path):
        yield record.gloss, record.lexname, record.words


class _Synset(NamedTuple):
    offset: str
    lexname: str
    words: list[str]
    # (pointer symbol, target offset, target part of speech, source/target word numbers)
    pointers: list[tuple[str, str, str, str]]
    gloss: str


def _synset_records(path: Path):
    """Yield one :class:`_Synset` per synset line of one WordNet ``data.*`` file."""
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
            base = 5 + 2 * count
            pointers = [tuple(fields[base + 4 * k: base + 4 * k + 4]) for k in range(int(p_cnt))]
            if any(len(ptr) != 4 for ptr in pointers):
                raise DataError(f"{path}: line {lineno}: the pointer count {p_cnt} announces "
                                "more pointers (symbol, offset, pos, source/target) than the "
                                "line holds")
            yield _Synset(fields[0], LEXNAMES[int(fields[1])], words, pointers, gloss.strip())


# WordNet's semantic pointers between synsets of one part of speech (wninput(5WN)), by symbol.
# Most come with their inverse in the other direction (a hypernym pointer from A to B is a
# hyponym pointer from B to A); entailment and cause have none, and verb group is symmetric.
RELATIONS = {
    "@": "hypernym", "~": "hyponym", "@i": "instance hypernym", "~i": "instance hyponym",
    "#m": "member holonym", "%m": "member meronym", "#s": "substance holonym",
    "%s": "substance meronym", "#p": "part holonym", "%p": "part meronym",
    ";c": "topic domain", "-c": "topic domain member", ";r": "region domain",
    "-r": "region domain member", ";u": "usage domain", "-u": "usage domain member",
    "*": "entailment", ">": "cause", "$": "verb group",
}


class WordNetRelationsOptions(WordNetOptions):
    min_count: int = Field(1000, ge=0)  # pairs


@DATASETS.register("wordnet-relations", WordNetRelationsOptions,
                   "WordNet 3.0 synset pairs as 'a -> b', labelled by the relation from a to b "
                   "(hypernym, part meronym, ...), text")
def read_wordnet_relations(options: WordNetRelationsOptions) -> LabeledData:
    """One item per semantic pointer between two synsets of a loaded part of speech,
    ``"a -> b"`` with each synset's first word, labelled by the relation the pointer names
    (:data:`RELATIONS`; noun and verb hypernyms are one class). Most relations come with their
    inverse (``"dog -> canine"`` hypernym, ``"canine -> dog"`` hyponym), so the label turns on
    the order of the two words as much as on which words they are. A text that two relations
    share (two synsets with the same first words) is dropped; a text repeated under one
    relation is kept once. ``min_count`` and ``max_classes`` count pairs.
    """
    first_word: dict[tuple[str, str], str] = {}
    pointers: list[tuple[str, str, str, str]] = []  # (symbol, pos, source offset, target offset)
    for path in _data_files(options):
        pos = path.name[len("data.")]  # "n" or "v", as pointers name the target's
        for record in _synset_records(path):
            first_word[(pos, record.offset)] = record.words[0].replace("_", " ")
            pointers += [(symbol, pos, record.offset, target)
                         for symbol, target, target_pos, words in record.pointers
                         # semantic (whole synset, "0000") and within the part of speech
                         if symbol in RELATIONS and words == "0000" and target_pos == pos]

    labels_of: dict[str, set[str]] = {}
    for symbol, pos, source, target in pointers:
        if (pos, target) not in first_word:
            raise DataError(f"{Path(options.root) / ('data.noun' if pos == 'n' else 'data.verb')}"
                            f": synset {source} points ({symbol!r}) to {target}, which is not in "
                            "the file")
        text = f"{first_word[(pos, source)]} -> {first_word[(pos, target)]}"
        labels_of.setdefault(text, set()).add(RELATIONS[symbol])
    pairs = [(text, next(iter(names))) for text, names in labels_of.items() if len(names) == 1]
    return _labelled([text for text, _ in pairs], [name for _, name in pairs], options,
                     "relation", "pairs", "wordnet-relations")
