"""Parse: read the answer out of a trace, without executing anything.

Order of evidence: the last ``<tag>…</tag>`` (or an unclosed ``<tag>…`` when a stop sequence
cut the closing tag), then the recipe's regex, then label names and synonyms. With labels, the
*last* mention wins, since reasoning traces often list every option before committing to one.
A trace whose answer cannot be read gets ``None``, and is counted, never dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from curation.recipe import AnswerConfig


def _normalise(text: str, case_sensitive: bool) -> str:
    text = re.sub(r"\s+", " ", text).strip().strip(".,;:!\"'*`()[]")
    return text if case_sensitive else text.lower()


@dataclass
class AnswerParser:
    config: AnswerConfig

    def __post_init__(self) -> None:
        flags = 0 if self.config.case_sensitive else re.IGNORECASE
        self._tag = None
        if self.config.tag:
            name = re.escape(self.config.tag)
            self._tag = re.compile(rf"<{name}>(.*?)(?:</{name}>|$)", flags | re.DOTALL)
        self._regex = re.compile(self.config.regex, flags | re.DOTALL) if self.config.regex else None
        # synonym (normalised) -> class; longest synonyms first so "not upregulated" beats "upregulated"
        self._synonyms: dict[str, str] = {}
        labels = self.config.labels
        if isinstance(labels, list):
            labels = {label: [] for label in labels}
        for label, synonyms in (labels or {}).items():
            for surface in [label, *synonyms]:
                self._synonyms[_normalise(surface, self.config.case_sensitive)] = label
        if self._synonyms:
            alternatives = sorted(self._synonyms, key=len, reverse=True)
            self._mention = re.compile(r"(?<![\w-])(" + "|".join(re.escape(a) for a in alternatives) + r")(?![\w-])", flags)

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return None
        candidates: list[str] = []
        if self._tag is not None:
            tagged = [m.group(1) for m in self._tag.finditer(text) if m.group(1).strip()]
            if tagged:
                candidates.append(tagged[-1])
        if self._regex is not None:
            matches = list(self._regex.finditer(candidates[0] if candidates else text))
            if matches:
                last = matches[-1]
                candidates.insert(0, last.group(1) if last.groups() else last.group(0))
        if not self._synonyms:
            return _normalise(candidates[0], self.config.case_sensitive) or None if candidates else None
        for candidate in candidates:
            label = self._label_in(candidate)
            if label is not None:
                return label
        if self._tag is not None and candidates:
            # The model used the tag but wrote no known label in it: that answer is unreadable,
            # and guessing from the reasoning text would put words in its mouth.
            return None
        return self._label_in(text)

    def _label_in(self, text: str) -> str | None:
        exact = self._synonyms.get(_normalise(text, self.config.case_sensitive))
        if exact is not None:
            return exact
        mentions = list(self._mention.finditer(text))
        if not mentions:
            return None
        return self._synonyms[_normalise(mentions[-1].group(1), self.config.case_sensitive)]
