"""The comparability rule: when two Task2Vec embeddings may be compared, and what to do when not.

Distances between embeddings made differently measure the difference in how they were made, not
the tasks. This module is the ONE place that decides it; `TaskEmbedding.check_compatible` (and so
`distance`, `distance_matrix`, Model2Vec), `ExpertIndex` (``add``, ``select``, ``fit_model2vec``),
`EmbeddingStore.nearest` (the index filter and the files) and the Space all call it, and all report
a mismatch with the same line built by `incompatibility_message`.

Two embeddings are comparable when they agree on every key of `RULE`:

==================  ==================================================  =========================================
key                 read from the metadata                              option that fixes it
==================  ==================================================  =========================================
``probe``           ``probe``                                           ``--probe``
``probe_revision``  ``probe_revision`` (the probe's weights)             ``--probe`` (the same weights)
``method``          ``method`` (the Fisher estimator)                   ``--method``
``prior_examples``  ``method_options`` -> ``prior_examples`` (robust     ``--max-samples`` (``prior_examples=``)
                    prior's weight ``N``, ``variational``)
``beta``            ``method_options`` -> ``beta`` (robust prior)        ``beta=`` (API / batch YAML)
``image_size``      ``image_size``                                      ``--image-size``
``head_l2``         ``head_l2`` (the head's strength; ``auto``: by the    ``head_l2=`` (API / batch YAML)
                    evidence, per task)
``head``            ``head`` (the head's form; before it was recorded:   ``head=`` (API / batch YAML)
                    ``linear``, the only form there was)
``max_length``      ``max_length`` (text truncation, tokens)             ``--max-length``
``pooling``         ``pooling`` (text: how token features are pooled)    ``load_probe(..., pooling=...)``
==================  ==================================================  =========================================

and besides the metadata:

* ``dimension``: the number of filters (the same probe network gives the same number);
* the **trivial embedding** of a robust estimator (`PRIOR_METHODS`: the prior the distance sees): when
  both tensors are at hand they must agree; trivial embeddings that differ although the recorded prior
  (``prior_examples``, ``beta``) agrees are reported as such (an older library version, or an altered
  tensor).

**Missing keys.** The first four keys above and ``image_size`` (`ALWAYS_RECORDED`) are recorded by every
embedding this library ever wrote: a missing or empty one is the value ``""`` ("none": a text
embedding has no image size) and is compared like any other. The other keys were added later (or only
apply to some estimators / modalities): a side that does not record one (files, expert indexes or
store indexes written before it existed, or an estimator without a prior) leaves it **unknown**, and an
unknown key is not compared. What is known is still compared, and the trivial tensors (which every
embedding and every expert index holds) still decide the prior.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import IncompatibleEmbeddingsError

__all__ = [
    "ALWAYS_RECORDED",
    "Incompatibility",
    "PRIOR_METHODS",
    "RULE",
    "RuleKey",
    "check_comparable",
    "comparability_settings",
    "incompatibilities",
    "incompatibility_message",
]

#: Estimators whose trivial embedding is a prior the distance sees (the robust Fisher): for them the
#: trivial tensors of two embeddings must agree (`hf_task2vec.task2vec.ROBUST_METHODS`).
PRIOR_METHODS: tuple[str, ...] = ("relative", "variational")
#: Relative tolerance of the trivial-embedding comparison.
TRIVIAL_RTOL = 1e-5


def _json_entry(meta: Mapping[str, str], field: str, key: str) -> str:
    """``key`` of the JSON object recorded in ``meta[field]`` (``""``: absent or unreadable)."""
    try:
        recorded = json.loads(meta.get(field) or "{}")
    except ValueError:
        return ""
    value = recorded.get(key) if isinstance(recorded, dict) else None
    return "" if value is None else str(value)


def _method_option(key: str) -> Callable[[Mapping[str, str]], str]:
    """An estimator option recorded in ``method_options`` (JSON)."""
    return lambda meta: _json_entry(meta, "method_options", key)


def _text_setting(key: str) -> Callable[[Mapping[str, str]], str]:
    """A text setting: the metadata key, else the probe's recorded ``text_settings`` (JSON)."""

    def read(meta: Mapping[str, str]) -> str:
        value = meta.get(key)
        return str(value) if value not in (None, "") else _json_entry(meta, "text_settings", key)

    return read


def _meta_key(key: str, missing: str = "") -> Callable[[Mapping[str, str]], str]:
    """Read ``key``; ``missing``: what an embedding written before the key existed stands for."""

    def read(meta: Mapping[str, str]) -> str:
        value = meta.get(key)
        return missing if value is None else str(value)

    return read


@dataclass(frozen=True)
class RuleKey:
    """One key of the comparability rule.

    Attributes:
        name: how messages name it (the metadata key).
        read: the value recorded in an embedding's metadata (``""``: not recorded).
        fix: what makes the two agree, naming the CLI option (or API argument) that sets it.
        always: recorded by every embedding ever written: ``""`` is a value and is compared. Otherwise a
            side that does not record the key leaves it unknown, and it is not compared.
    """

    name: str
    read: Callable[[Mapping[str, str]], str]
    fix: str
    always: bool = False


#: The keys compared, in the order messages list them.
RULE: tuple[RuleKey, ...] = (
    RuleKey("probe", _meta_key("probe"), "embed both with the same --probe", always=True),
    RuleKey(
        "probe_revision", _meta_key("probe_revision"),
        "the probe's weights differ: embed both with the same --probe weights", always=True,
    ),
    RuleKey("method", _meta_key("method"), "embed both with the same --method", always=True),
    RuleKey(
        "prior_examples", _method_option("prior_examples"),
        "the robust-Fisher prior: embed both with the same --max-samples, in Python prior_examples=",
    ),
    RuleKey(
        "beta", _method_option("beta"),
        "the robust-Fisher prior: embed both with the same beta (Task2Vec or batch YAML option)",
    ),
    RuleKey("image_size", _meta_key("image_size"), "embed both with the same --image-size", always=True),
    RuleKey(
        "head_l2", _meta_key("head_l2"),
        "the head's strength: embed both with the same head_l2 (Task2Vec or batch YAML option; default 0.001)",
    ),
    RuleKey(
        "head", _meta_key("head", "linear"),
        "the head's form: embed both with the same head (Task2Vec or batch YAML option; default 'prototype')",
    ),
    RuleKey("max_length", _text_setting("max_length"), "embed both with the same --max-length"),
    RuleKey("pooling", _text_setting("pooling"), "embed both with the same pooling: load_probe(..., pooling=...)"),
)
#: The keys every embedding records (missing = the value ``""``); the others are unknown when missing.
ALWAYS_RECORDED: tuple[str, ...] = tuple(k.name for k in RULE if k.always)
_PRIOR_KEYS = ("prior_examples", "beta")
_DIMENSION_FIX = "different probe networks: embed both with the same --probe"
_TRIVIAL_FIX = (
    "one was made by another hf_task2vec version or its trivial tensor was altered: re-embed both with this version"
)


@dataclass(frozen=True)
class Incompatibility:
    """One reason why two embeddings cannot be compared: ``key``, the two values (as shown) and the fix."""

    key: str
    first: str
    second: str
    fix: str

    def __str__(self) -> str:
        if self.key == "trivial embedding":
            return f"{self.key}: {self.first} ({self.fix})"
        return f"{self.key} {self.first} vs {self.second} ({self.fix})"


def _show(value: str) -> str:
    if value == "":
        return "none"
    return value if re.fullmatch(r"-?\d+(\.\d+)?", value) else repr(value)


def comparability_settings(meta: Mapping[str, str]) -> dict[str, str]:
    """The rule's keys as recorded in ``meta`` (``""``: not recorded): what decides comparability."""
    return {k.name: k.read(meta) for k in RULE}


def incompatibilities(
    first: Mapping[str, str],
    second: Mapping[str, str],
    *,
    dims: tuple[int | None, int | None] = (None, None),
    trivials: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> list[Incompatibility]:
    """Every reason why an embedding with metadata ``first`` cannot be compared with one with ``second``
    (empty: comparable). ``dims`` and ``trivials`` add the dimension and trivial-embedding checks where
    they are known (``None``: unknown, e.g. a store index row)."""
    out: list[Incompatibility] = []
    for key in RULE:
        a, b = key.read(first), key.read(second)
        if not key.always and (a == "" or b == ""):
            continue  # unknown on one side: not compared
        if a != b:
            out.append(Incompatibility(key.name, _show(a), _show(b), key.fix))
    da, db = dims
    if da is not None and db is not None and int(da) != int(db):
        out.append(Incompatibility("dimension", str(int(da)), str(int(db)), _DIMENSION_FIX))
        return out
    ta, tb = trivials
    method = _meta_key("method")(first)
    if (
        ta is not None
        and tb is not None
        and method in PRIOR_METHODS
        and method == _meta_key("method")(second)
        and not any(p.key in _PRIOR_KEYS for p in out)
        and not _same_trivial(ta, tb)
    ):
        out.append(_trivial_mismatch(first, second))
    return out


def _same_trivial(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=TRIVIAL_RTOL))


def _trivial_mismatch(first: Mapping[str, str], second: Mapping[str, str]) -> Incompatibility:
    """The trivial tensors differ although no recorded prior key does."""
    prior = {k.name: (k.read(first), k.read(second)) for k in RULE if k.name in _PRIOR_KEYS}
    a, b = prior["prior_examples"]
    if (a == "") != (b == ""):  # one side does not record its prior's weight: that is the likely cause
        return Incompatibility(
            "prior_examples",
            _show(a) if a else "not recorded",
            _show(b) if b else "not recorded",
            "their robust-Fisher priors (trivial embeddings) differ: embed both with the same --max-samples, "
            "in Python prior_examples=",
        )
    agreed = " and ".join(f"{name} {_show(x)}" for name, (x, _) in prior.items() if x)
    what = f"the two differ although both record {agreed}" if agreed else "the two differ"
    return Incompatibility("trivial embedding", what, "", _TRIVIAL_FIX)


def incompatibility_message(first: str, second: str, problems: Sequence[Incompatibility]) -> str:
    """The one line that reports a mismatch everywhere: ``cannot compare FIRST with SECOND: KEY A vs B
    (FIX); ...``."""
    return f"cannot compare {first} with {second}: " + "; ".join(str(p) for p in problems)


def check_comparable(
    first: Any,
    second: Any,
    *,
    first_label: str | None = None,
    second_label: str | None = None,
) -> None:
    """Raise `IncompatibleEmbeddingsError` (with the one line of `incompatibility_message`, and the
    reasons in its ``problems`` attribute) unless two embeddings (`TaskEmbedding`-like: ``meta``,
    ``dim``, ``trivial``) may be compared. Labels default to the embeddings' task names."""
    problems = incompatibilities(
        first.meta, second.meta, dims=(first.dim, second.dim), trivials=(first.trivial, second.trivial)
    )
    if problems:
        raise incompatible_error(
            first_label or repr(first.meta.get("task", "")), second_label or repr(second.meta.get("task", "")), problems
        )


def incompatible_error(first: str, second: str, problems: Sequence[Incompatibility]) -> IncompatibleEmbeddingsError:
    """The `IncompatibleEmbeddingsError` of `incompatibility_message`, with ``problems`` attached."""
    error = IncompatibleEmbeddingsError(incompatibility_message(first, second, problems))
    error.problems = list(problems)  # type: ignore[attr-defined]
    return error
