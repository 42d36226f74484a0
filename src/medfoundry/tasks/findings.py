"""Findings from report text: the 14 CheXpert observations, each positive / negative / uncertain / not mentioned,
with the sentence that decided it.

How (the CheXpert labeler's three stages, on a spaCy pipeline with NegEx scopes):

1. **mention**: a blank English spaCy pipeline (tokenizer + rule sentencizer, no statistical model, so nothing is
   downloaded) and a ``span_ruler`` that marks every phrase of :mod:`medfoundry.tasks.findings_phrases`,
   overlapping spans allowed;
2. **negation and uncertainty scopes**: two ``negex`` components of the maintained ``negspacy`` package, one with
   negation cues and one with uncertainty cues; a cue scopes the mentions after it (or before it, for following
   cues) up to the end of its sentence or a termination word ("but", "however", ";");
3. **aggregation** per observation over the report, as CheXpert does: positive if any mention is positive, else
   uncertain if any is uncertain, else negative if any is negative, else not mentioned. A mention inside both a
   negation and an uncertainty scope is negative ("no effusion or pneumothorax": "or" is an uncertainty cue).
   *No Finding* is positive when no observation except Support Devices is positive or uncertain **and** no other
   abnormality (granuloma, degenerative change, hyperinflation, ... :data:`OTHER_ABNORMAL`) is mentioned
   positively; ``no_finding="chexpert"`` drops that second condition (CheXpert's own definition).

medspaCy's ConText would be the closer library, but its package pins spaCy < 3.8 and numpy < 2 on Python 3.11,
which the rest of medfoundry cannot use; negspacy (NegEx) installs on top of spaCy 3.8. Speed: thousands of
reports per second on one CPU core (``benchmarks/findings_iu.py`` measures it).

An empty report, or one made only of section headings, mentions nothing: every observation is "not mentioned" and
``ReportFindings.empty`` is true (No Finding is not claimed for a report that says nothing). Text that does not look
like English raises :class:`~medfoundry.errors.InputContractError` rather than returning findings. Install with
``pip install medfoundry[nlp]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from medfoundry.errors import InputContractError
from medfoundry.tasks.findings_phrases import (
    ABNORMAL_QUALIFIERS,
    BASELINE_NEGATION_WORDS,
    BASELINE_WINDOW,
    BLOCKS,
    MENTIONS,
    NEGATION_TERMSET,
    NORMAL_QUALIFIERS,
    OBSERVATIONS,
    OTHER_ABNORMAL,
    UNCERTAINTY_TERMSET,
)

LABELS = ("positive", "negative", "uncertain", "not mentioned")
_RANK = {"positive": 3, "uncertain": 2, "negative": 1}
_OTHER = "_other"
_BLOCK = "_block:"
_ANATOMY = "_anatomy:"
_HEADING_WORDS = (r"(findings?|impressions?|indications?|comparisons?|history|technique|exam(ination)?|"
                  r"clinical (history|information)|conclusions?|reason for (exam|study)|report)")
# a heading is a heading word followed by a colon ("FINDINGS:"); for the emptiness test the colon is optional
_HEADINGS = re.compile(r"\b" + _HEADING_WORDS + r"\s*:", re.IGNORECASE)
_HEADINGS_LOOSE = re.compile(r"\b" + _HEADING_WORDS + r"\b\s*:?|\bX{2,}\b", re.IGNORECASE)
_ENGLISH = frozenset(re.findall(r"\w+", "the a an of and or no not is are there with without in on at to for as be "
                                        "has have was were this that from by seen normal lungs lung heart clear size "
                                        "left right"))
_FOREIGN = frozenset(re.findall(r"\w+", "der die das und kein keine keiner keinen nicht ist mit ohne ein eine im "
                                        "le les et pas du des est avec sans aucun aucune une el los las con sin hay "
                                        "del il di che della sono com sem não em het een niet geen"))


@dataclass(frozen=True)
class Finding:
    """One observation's label for one report and the sentence that decided it ("" when not mentioned)."""

    observation: str
    label: str
    sentence: str = ""

    def as_dict(self) -> dict:
        return {"observation": self.observation, "label": self.label, "sentence": self.sentence}


@dataclass(frozen=True)
class ReportFindings:
    """The 14 observations of one report, in :data:`OBSERVATIONS` order; ``empty`` when the text said nothing."""

    findings: tuple[Finding, ...]
    empty: bool = False
    other_abnormal: tuple[str, ...] = field(default_factory=tuple)

    def label(self, observation: str) -> str:
        """The label ("positive", "negative", "uncertain" or "not mentioned") of one observation."""
        for f in self.findings:
            if f.observation == observation:
                return f.label
        raise InputContractError(f"unknown observation {observation!r} (known: {', '.join(OBSERVATIONS)})")

    def labels(self) -> dict[str, str]:
        return {f.observation: f.label for f in self.findings}

    def positives(self, uncertain_as: str = "positive") -> set[str]:
        """Observations labelled positive (and uncertain ones when ``uncertain_as == "positive"``)."""
        keep = {"positive", "uncertain"} if uncertain_as == "positive" else {"positive"}
        return {f.observation for f in self.findings if f.label in keep}

    def as_dict(self) -> dict:
        return {"findings": [f.as_dict() for f in self.findings], "empty": self.empty,
                "other_abnormal_sentences": list(self.other_abnormal)}


@lru_cache(maxsize=1)
def _stems() -> tuple[str, ...]:
    """Every ``prefix*`` token of the phrase tables, none a prefix of another."""
    phrases = [p for f, a in MENTIONS.values() for p in (*f, *a)]
    phrases += [p for b in BLOCKS.values() for p in b] + list(OTHER_ABNORMAL)
    stems = {t[:-1] for p in phrases for t in p.split() if t.endswith("*")}
    # keep the shortest of nested prefixes ("infiltrat" covers "infiltrate"), so every word has one stem
    return tuple(sorted(s for s in stems if not any(o != s and s.startswith(o) for o in stems)))


@lru_cache(maxsize=1)
def _stem_regex() -> re.Pattern:
    return re.compile("^(?:" + "|".join(re.escape(s) for s in _stems()) + ")")


def _stem(word: str) -> str | None:
    m = _stem_regex().match(word)
    return m.group(0) + "*" if m else None


def _stem_norm(doc):
    """Set ``token.norm_`` to ``prefix*`` for tokens that start with a table prefix (``effusions`` → ``effusion*``),
    so one :class:`spacy.matcher.PhraseMatcher` on NORM matches every phrase (token-pattern REGEX predicates
    were 50x slower)."""
    for token in doc:
        stem = _stem(token.lower_)
        if stem:
            token.norm_ = stem
    return doc


class _Mentions:
    """Pipeline component: every table phrase as a span in ``doc.spans["sc"]`` (overlaps kept), label = observation
    (``_anatomy:``, ``_block:`` prefixes, ``_other``)."""

    def __init__(self, nlp) -> None:
        from spacy.matcher import PhraseMatcher

        self.matcher = PhraseMatcher(nlp.vocab, attr="NORM")
        groups: dict[str, list[str]] = {}
        for obs, (finding, anatomy) in MENTIONS.items():
            groups.setdefault(obs, []).extend(finding)
            groups.setdefault(_ANATOMY + obs, []).extend(anatomy)
        for obs, phrases in BLOCKS.items():
            groups[_BLOCK + obs] = list(phrases)
        groups[_OTHER] = list(OTHER_ABNORMAL)
        for label, phrases in groups.items():
            if phrases:
                self.matcher.add(label, [_stem_norm(nlp.make_doc(p.replace("*", ""))) for p in phrases])

    def __call__(self, doc):
        from spacy.tokens import Span

        doc.spans["sc"] = [Span(doc, start, end, label=key) for key, start, end in self.matcher(doc)]
        return doc


@lru_cache(maxsize=2)
def _pipeline():
    try:
        import negspacy.negation  # noqa: F401  (registers the "negex" factory)
        import spacy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputContractError("the findings extractor needs spaCy and negspacy: pip install medfoundry[nlp]") \
            from exc
    from spacy.language import Language

    if "medfoundry_stem_norm" not in Language.factories:
        Language.component("medfoundry_stem_norm", func=_stem_norm)
        Language.factory("medfoundry_mentions", func=lambda nlp, name: _Mentions(nlp))
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("medfoundry_stem_norm")
    nlp.add_pipe("medfoundry_mentions")
    nlp.add_pipe("negex", name="negation", config={"neg_termset": NEGATION_TERMSET, "extension_name": "negated",
                                                   "span_keys": ["sc"]})
    nlp.add_pipe("negex", name="uncertainty", config={"neg_termset": UNCERTAINTY_TERMSET,
                                                      "extension_name": "uncertain", "span_keys": ["sc"]})
    return nlp


def _content(text: str) -> str:
    """The text without section headings, de-identification marks and punctuation (for the emptiness test)."""
    return re.sub(r"[\W_]+", " ", _HEADINGS_LOOSE.sub(" ", text)).strip()


def check_english(text: str) -> None:
    """Raise :class:`InputContractError` when ``text`` is mostly non-Latin letters or has more common function words
    of other European languages than English ones: findings from a language the phrase tables do not cover would
    be invented (a terse English report of finding names only passes)."""
    letters = [c for c in text if c.isalpha()]
    if letters and sum(c.isascii() for c in letters) / len(letters) < 0.7:
        raise InputContractError("the report text is not in English (mostly non-Latin letters); the findings "
                                 "extractor reads English reports only")
    words = re.findall(r"[^\W\d_]+", text.lower())
    english = sum(w in _ENGLISH for w in words)
    foreign = sum(w in _FOREIGN for w in words)
    if foreign >= 2 and foreign > english:
        raise InputContractError("the report text does not look like English (it has more German/French/Spanish/"
                                 "Italian/Portuguese/Dutch function words than English ones); the findings "
                                 "extractor reads English reports only")


def _mention_label(span, sentence_text: str) -> str | None:
    negated, uncertain = span._.negated, span._.uncertain
    if span.label_.startswith(_ANATOMY):
        low = sentence_text.lower()
        abnormal = any(q in low for q in ABNORMAL_QUALIFIERS)
        if negated:
            return "negative"
        if not abnormal:
            return "negative" if any(q in low for q in NORMAL_QUALIFIERS) else None
    if negated:
        return "negative"
    return "uncertain" if uncertain else "positive"


def _findings_of(doc, no_finding: str) -> ReportFindings:
    spans = list(doc.spans["sc"])
    blocks = [(s.start, s.end, s.label_[len(_BLOCK):]) for s in spans if s.label_.startswith(_BLOCK)]
    best: dict[str, tuple[int, str, str]] = {}
    other: list[str] = []
    for span in spans:
        name = span.label_
        if name.startswith(_BLOCK):
            continue
        obs = name[len(_ANATOMY):] if name.startswith(_ANATOMY) else name
        if any(b0 <= span.start and span.end <= b1 and o == obs for b0, b1, o in blocks):
            continue
        sentence = span.sent.text.strip()
        label = _mention_label(span, sentence)
        if label is None:
            continue
        if obs == _OTHER:
            if label == "positive" and sentence not in other:
                other.append(sentence)
            continue
        rank = _RANK[label]
        if obs not in best or rank > best[obs][0]:
            best[obs] = (rank, label, sentence)
    findings = []
    for obs in OBSERVATIONS[1:]:
        _, label, sentence = best.get(obs, (0, "not mentioned", ""))
        findings.append(Finding(obs, label, sentence))
    abnormal = [f for f in findings if f.observation != "Support Devices" and f.label in ("positive", "uncertain")]
    if abnormal:
        nf = Finding("No Finding", "negative", abnormal[0].sentence)
    elif other and no_finding == "strict":
        nf = Finding("No Finding", "negative", other[0])
    else:
        nf = Finding("No Finding", "positive", "")
    return ReportFindings((nf, *findings), False, tuple(other))


def _empty() -> ReportFindings:
    return ReportFindings(tuple(Finding(o, "not mentioned") for o in OBSERVATIONS), True)


def extract_findings_many(texts: Iterable[str], *, no_finding: str = "strict", check_language: bool = True,
                          batch_size: int = 256) -> list[ReportFindings]:
    """Findings of many reports, in input order (one spaCy ``pipe`` pass; thousands of reports a second).

    ``no_finding``: "strict" (default; No Finding also needs no other abnormality mentioned) or "chexpert".
    Empty or heading-only texts give an ``empty`` result with every observation "not mentioned"; a text that is not
    English raises :class:`InputContractError` when ``check_language`` (pass False to get all "not mentioned" for
    such texts instead, e.g. in a batch where one row must not stop the rest — then ``empty`` is true for them).
    """
    if no_finding not in ("strict", "chexpert"):
        raise InputContractError(f"no_finding must be 'strict' or 'chexpert', not {no_finding!r}")
    texts = [t if isinstance(t, str) else "" for t in texts]
    keep: list[int] = []
    for i, t in enumerate(texts):
        if not _content(t):
            continue
        try:
            check_english(t)
        except InputContractError:
            if check_language:
                raise
            continue
        keep.append(i)
    out = [_empty() for _ in texts]
    nlp = _pipeline()
    for i, doc in zip(keep, nlp.pipe((_clean(texts[i]) for i in keep), batch_size=batch_size), strict=True):
        out[i] = _findings_of(doc, no_finding)
    return out


def extract_findings(text: str, *, no_finding: str = "strict") -> ReportFindings:
    """Findings of one report text (see :func:`extract_findings_many`)."""
    if not isinstance(text, str):
        raise InputContractError(f"report text must be a string, not {type(text).__name__}")
    return extract_findings_many([text], no_finding=no_finding)[0]


def _clean(text: str) -> str:
    # de-identification marks carry no meaning; headings would merge with the first sentence
    text = re.sub(r"\bX{2,}\b", " ", text)
    return _HEADINGS.sub(". ", text)


@lru_cache(maxsize=1)
def _keyword_regexes() -> tuple[tuple[str, re.Pattern], ...]:
    def rx(phrase: str) -> str:
        return r"\s*".join(re.escape(w[:-1]) + r"\w*" if w.endswith("*") else re.escape(w) + r"\b"
                           for w in phrase.split())

    groups = {obs: finding for obs, (finding, _) in MENTIONS.items()}
    groups[_OTHER] = OTHER_ABNORMAL
    return tuple((obs, re.compile(r"\b(?:" + "|".join(rx(p) for p in phrases) + ")"))
                 for obs, phrases in groups.items())


def keyword_findings(text: str) -> ReportFindings:
    """The baseline: the same finding phrases matched as words, negative when a negation word
    (:data:`BASELINE_NEGATION_WORDS`) is among the :data:`BASELINE_WINDOW` words before the mention in its
    sentence; no uncertainty, no anatomy qualifiers, no blocks. No Finding: nothing positive except Support
    Devices, and no other abnormality (:data:`OTHER_ABNORMAL`) mentioned without negation — the same rule as the
    extractor's default."""
    if not _content(text):
        return _empty()
    low = _clean(text).lower()
    best: dict[str, str] = {}
    for obs, regex in _keyword_regexes():
        for m in regex.finditer(low):
            before = re.split(r"[.;]", low[:m.start()])[-1]
            window = re.findall(r"[a-z]+", before)[-BASELINE_WINDOW:]
            label = "negative" if BASELINE_NEGATION_WORDS & set(window) else "positive"
            if best.get(obs) != "positive":
                best[obs] = label
    findings = [Finding(o, best.get(o, "not mentioned")) for o in OBSERVATIONS[1:]]
    positive = any(f.label == "positive" for f in findings if f.observation != "Support Devices")
    positive = positive or best.get(_OTHER) == "positive"
    return ReportFindings((Finding("No Finding", "negative" if positive else "positive"), *findings))


def findings_table(results: Sequence[ReportFindings]) -> list[dict[str, str]]:
    """One row per report, one column per observation (label strings), for CSV or JSON output."""
    return [r.labels() for r in results]


def read_report_texts(path, columns: Sequence[str] = ("text",)) -> tuple[list[str], list[dict[str, str]]]:
    """Report texts from a ``.csv`` (the named ``columns`` joined with a space, per row) or any other text file
    (the whole file, one report). Returns ``(texts, rows)``; ``rows`` are the CSV rows (``[]`` for a text file).

    Raises :class:`InputContractError` for a CSV without one of the columns (the error names the columns it has),
    an empty text file, or a file that is not UTF-8 text."""
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputContractError(f"no such report file: {path}")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputContractError(f"{path} is not UTF-8 text") from exc
    if path.suffix.lower() != ".csv":
        if not raw.strip():
            raise InputContractError(f"{path} is empty: no report text to read")
        return [raw], []
    rows = list(csv.DictReader(raw.splitlines()))
    have = list(rows[0].keys()) if rows else []
    missing = [c for c in columns if c not in have]
    if not rows or missing:
        raise InputContractError(f"{path} has no column {', '.join(map(repr, missing or columns))} "
                                 f"(columns: {', '.join(have) or 'none'}); choose one with --column")
    return [" ".join((r.get(c) or "").strip() for c in columns).strip() for r in rows], rows
