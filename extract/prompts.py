"""Text prompts scored against every crop: objective quality words and subjective feelings.

The paper (Sec. 3, Fig. 2) uses objective descriptions of quality factors (bright, contrast,
noisy, colorful, ...) and subjective descriptions of feelings (interesting, exciting,
depressing, fearful, ...). :func:`default_prompts` is our set in that spirit; users can pass
their own file (:func:`load_prompts`). The final strings, their order and their groups go into
the store's provenance, so two stores agree on features only when they agree on prompts.

Prompt files come in two formats, chosen by content:

JSON, either ``{"template": "a photo that looks {}.", "objective": [...], "subjective": [...]}``
(``template`` optional, default :data:`DEFAULT_TEMPLATE`; ``"{}"`` uses the words as given) or a
list of ``{"text": "...", "group": "objective"|"subjective"}`` holding final strings.

Plain text, one prompt per line, kept in file order::

    # comments and blank lines are ignored
    template: a photo that looks {}.
    objective: sharp
    subjective: boring
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GROUPS: tuple[str, ...] = ("objective", "subjective")

# "a photo that looks X." reads naturally for adjectives of both kinds ("... looks blurry.",
# "... looks boring.") and follows the "a photo of/that ..." phrasing CLIP was trained on.
DEFAULT_TEMPLATE = "a photo that looks {}."

DEFAULT_OBJECTIVE: tuple[str, ...] = (
    "bright", "dark", "high contrast", "low contrast", "sharp", "blurry",
    "clean", "noisy", "colorful", "dull", "detailed", "pixelated",
)
DEFAULT_SUBJECTIVE: tuple[str, ...] = (
    "interesting", "boring", "exciting", "relaxing", "pleasant",
    "annoying", "happy", "depressing", "fearful", "beautiful",
)


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class PromptSet:
    """The r prompts in scoring order.

    Attributes:
        texts: the final strings given to the CLIP tokenizer (template already applied).
        groups: ``"objective"`` or ``"subjective"`` for each text.
        template: the template the texts were made with, or None when given as final strings.
    """

    texts: tuple[str, ...]
    groups: tuple[str, ...]
    template: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "groups", tuple(self.groups))
        if not self.texts:
            raise ValueError("a prompt set needs at least one prompt")
        if len(self.texts) != len(self.groups):
            raise ValueError(f"{len(self.texts)} prompts but {len(self.groups)} groups")
        for text, group in zip(self.texts, self.groups):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"empty prompt text {text!r}")
            if group not in GROUPS:
                raise ValueError(f"prompt {text!r} has group {group!r}; expected one of {GROUPS}")
        seen: set[str] = set()
        for text in self.texts:
            if text in seen:
                raise ValueError(f"prompt {text!r} appears twice")
            seen.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_words(
        cls, objective: list[str] | tuple[str, ...], subjective: list[str] | tuple[str, ...], template: str = DEFAULT_TEMPLATE
    ) -> PromptSet:
        """Apply ``template`` to each word; objective prompts come first, then subjective ones."""
        _check_template(template)
        words = [*objective, *subjective]
        groups = ["objective"] * len(objective) + ["subjective"] * len(subjective)
        return cls(tuple(template.format(w) for w in words), tuple(groups), template)

    def subset(self, group: str) -> PromptSet:
        """The prompts of one group (``"objective"`` or ``"subjective"``), order kept."""
        if group not in GROUPS:
            raise ValueError(f"unknown prompt group {group!r}; expected one of {GROUPS}")
        keep = [i for i, g in enumerate(self.groups) if g == group]
        if not keep:
            raise ValueError(f"the prompt set has no {group} prompts")
        return PromptSet(tuple(self.texts[i] for i in keep), tuple(self.groups[i] for i in keep), self.template)

    def group_indices(self) -> list[list[int]]:
        """Indices of each non-empty group, in :data:`GROUPS` order (the softmax="group" blocks)."""
        blocks = [[i for i, g in enumerate(self.groups) if g == group] for group in GROUPS]
        return [b for b in blocks if b]


def default_prompts() -> PromptSet:
    """The default 12 objective + 10 subjective prompts with :data:`DEFAULT_TEMPLATE` (r = 22)."""
    return PromptSet.from_words(DEFAULT_OBJECTIVE, DEFAULT_SUBJECTIVE, DEFAULT_TEMPLATE)


def load_prompts(path: str | Path) -> PromptSet:
    """Read a prompt file (JSON or plain text, see the module docstring).

    Raises:
        PromptFileError: the file is missing, malformed, or names an unknown group; the message
            gives the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text") from exc
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            return _from_json(path, text)
        return _from_lines(path, text)
    except PromptFileError:
        raise
    except ValueError as exc:
        raise PromptFileError(f"prompt file {path}: {exc}") from exc


def _check_template(template: object) -> None:
    if not isinstance(template, str) or template.count("{}") != 1 or template.count("{") != 1 or template.count("}") != 1:
        raise ValueError(f"template {template!r} must contain exactly one '{{}}' and no other braces")


def _from_json(path: Path, text: str) -> PromptSet:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"prompt file {path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if isinstance(data, dict):
        unknown = set(data) - {"template", *GROUPS}
        if unknown:
            raise PromptFileError(f"prompt file {path}: unknown keys {sorted(unknown)}; expected template, objective, subjective")
        words = {}
        for group in GROUPS:
            items = data.get(group, [])
            if not isinstance(items, list) or not all(isinstance(w, str) for w in items):
                raise PromptFileError(f"prompt file {path}: {group!r} must be a list of strings")
            words[group] = items
        template = data.get("template", DEFAULT_TEMPLATE)
        return PromptSet.from_words(words["objective"], words["subjective"], template)
    if isinstance(data, list):
        texts, groups = [], []
        for k, item in enumerate(data):
            if not isinstance(item, dict) or set(item) != {"text", "group"}:
                raise PromptFileError(f"prompt file {path}: item {k} must be an object with exactly 'text' and 'group'")
            texts.append(item["text"])
            groups.append(item["group"])
        return PromptSet(tuple(texts), tuple(groups), None)
    raise PromptFileError(f"prompt file {path}: JSON must be an object or a list")


def _from_lines(path: Path, text: str) -> PromptSet:
    template = DEFAULT_TEMPLATE
    entries: list[tuple[str, str]] = []  # (word, group) in file order
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        where = f"prompt file {path}, line {lineno}"
        if not sep or not value:
            raise PromptFileError(f"{where}: expected 'objective: WORD', 'subjective: WORD' or 'template: TEXT', got {raw!r}")
        if key == "template":
            if entries:
                raise PromptFileError(f"{where}: the template line must come before the prompts")
            try:
                _check_template(value)
            except ValueError as exc:
                raise PromptFileError(f"{where}: {exc}") from exc
            template = value
        elif key in GROUPS:
            if value in first_line:
                raise PromptFileError(f"{where}: {value!r} repeats line {first_line[value]}")
            first_line[value] = lineno
            entries.append((value, key))
        else:
            raise PromptFileError(f"{where}: unknown label {key!r}; use objective, subjective or template")
    if not entries:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return PromptSet(tuple(template.format(w) for w, _ in entries), tuple(g for _, g in entries), template)
