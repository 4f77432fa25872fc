"""Text prompts scored against every crop: objective quality words and subjective feelings.

The paper (Sec. 3, Fig. 2) uses objective descriptions of quality factors (bright, contrast,
noisy, colorful, ...) and subjective descriptions of feelings (interesting, exciting,
depressing, fearful, ...). :func:`default_prompts` is our set in that spirit; users can pass
their own file (:func:`load_prompts`). The final strings, their order and their groups go into
the store's provenance, so two stores agree on features only when they agree on prompts.

Prompt files (``extract --prompts FILE``, ``store rescore --prompts FILE``) come in two formats,
chosen by content (a file whose first non-blank character is ``{`` or ``[`` is JSON). Both are
UTF-8, with or without a byte-order mark.

JSON, either ``{"template": "a photo that looks {}.", "objective": [...], "subjective": [...]}``
(``template`` optional, default :data:`DEFAULT_TEMPLATE`; ``"{}"`` uses the words as given) or a
list of ``{"text": "...", "group": "objective"|"subjective"}`` holding final strings.

Plain text, one prompt per line, kept in file order::

    # comments and blank lines are ignored
    template: a photo that looks {}.
    objective: sharp
    subjective: boring

Refused, naming the file and the line (text) or item (JSON): an empty or whitespace-only prompt,
a prompt that repeats another as CLIP reads it (CLIP's tokenizer ignores case and spacing,
see :func:`clip_text_key`), and a softmax block of fewer than 2 prompts
(see :meth:`PromptSet.softmax_blocks`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from clifvqa.errors import ClifvqaError

GROUPS: tuple[str, ...] = ("objective", "subjective")
SOFTMAX_MODES: tuple[str, ...] = ("all", "group")

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


class PromptError(ClifvqaError):
    """Prompts that cannot be used: none, an empty or repeated one, an unknown group, a bad template."""


class PromptFileError(PromptError):
    """A prompt file that cannot be used; the message names the file and, where known, the line."""


# CLIP's pre-tokenizer split (letters, single digits, punctuation runs, English clitics), run on
# lowercased text: the white space between these pieces never reaches the model.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


def clip_text_key(text: str) -> str:
    """``text`` as CLIP's tokenizer reads it: lowercased, split into its pre-tokenizer pieces,
    so case and spacing (``"Sharp ."`` vs ``"sharp."``) do not count. Prompts with the same key
    get the same embedding, so they count as duplicates."""
    return " ".join(_CLIP_PIECES.findall(text.lower()))


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
            raise PromptError("a prompt set needs at least one prompt")
        if len(self.texts) != len(self.groups):
            raise PromptError(f"{len(self.texts)} prompts but {len(self.groups)} groups")
        for text, group in zip(self.texts, self.groups):
            _check_text(text)
            if group not in GROUPS:
                raise PromptError(f"prompt {text!r} has group {group!r}; expected one of {GROUPS}")
        seen: dict[str, str] = {}
        for text in self.texts:
            key = clip_text_key(text)
            if key in seen:
                raise PromptError("prompt " + _duplicate_message(text, repr(seen[key])))
            seen[key] = text

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_words(
        cls,
        objective: list[str] | tuple[str, ...],
        subjective: list[str] | tuple[str, ...],
        template: str = DEFAULT_TEMPLATE,
    ) -> PromptSet:
        """Apply ``template`` to each word; objective prompts come first, then subjective ones.
        An empty or whitespace-only word is refused (it would make ``"a photo that looks ."``)."""
        _check_template(template)
        words = [*objective, *subjective]
        for word in words:
            _check_text(word)
        groups = ["objective"] * len(objective) + ["subjective"] * len(subjective)
        return cls(tuple(template.format(w) for w in words), tuple(groups), template)

    def subset(self, group: str) -> PromptSet:
        """The prompts of one group (``"objective"`` or ``"subjective"``), order kept."""
        if group not in GROUPS:
            raise ValueError(f"unknown prompt group {group!r}; expected one of {GROUPS}")
        keep = [i for i, g in enumerate(self.groups) if g == group]
        if not keep:
            raise PromptError(f"the prompt set has no {group} prompts")
        return PromptSet(tuple(self.texts[i] for i in keep), tuple(self.groups[i] for i in keep), self.template)

    def group_indices(self) -> list[list[int]]:
        """Indices of each non-empty group, in :data:`GROUPS` order (the softmax="group" blocks)."""
        blocks = [[i for i, g in enumerate(self.groups) if g == group] for group in GROUPS]
        return [b for b in blocks if b]

    def softmax_blocks(self, softmax: str) -> list[list[int]]:
        """The index blocks one softmax runs over: all prompts (``"all"``) or each non-empty group
        (``"group"``).

        Raises:
            PromptError: a block of fewer than 2 prompts: softmax over one prompt is constant 1.0,
                so its features would carry no information.
            ValueError: an unknown mode.
        """
        blocks, short = self._softmax_check(softmax)
        if short:
            raise PromptError(short[1])
        return blocks

    def _softmax_check(self, softmax: str) -> tuple[list[list[int]], tuple[list[int], str] | None]:
        """The blocks, and the first block that is too small with the reason (None when none is)."""
        if softmax not in SOFTMAX_MODES:
            raise ValueError(f"softmax must be 'all' or 'group', got {softmax!r}")
        blocks = self.group_indices() if softmax == "group" else [list(range(len(self)))]
        for block in blocks:
            if len(block) < 2:
                texts = ", ".join(repr(self.texts[i]) for i in block)
                group = self.groups[block[0]]
                what = (f"the {group} group has only {texts}; add prompts to it or use softmax 'all'"
                        if softmax == "group" else f"the only prompt is {texts}; add prompts")
                why = "softmax over one prompt is constant 1.0: every feature would be exactly 1.0"
                message = f"softmax {softmax!r} needs at least 2 prompts per softmax, but {what} ({why})"
                return blocks, (block, message)
        return blocks, None


def default_prompts() -> PromptSet:
    """The default 12 objective + 10 subjective prompts with :data:`DEFAULT_TEMPLATE` (r = 22)."""
    return PromptSet.from_words(DEFAULT_OBJECTIVE, DEFAULT_SUBJECTIVE, DEFAULT_TEMPLATE)


def load_prompts(path: str | Path, softmax: str | None = None) -> PromptSet:
    """Read a prompt file: JSON or plain text, UTF-8 with or without a byte-order mark.

    JSON object (``template`` optional, default :data:`DEFAULT_TEMPLATE`)::

        {"template": "a {} photo", "objective": ["sharp", "blurry"], "subjective": ["boring", "calm"]}

    JSON list of final strings (no template applied)::

        [{"text": "a sharp photo", "group": "objective"}, {"text": "a blurry photo", "group": "objective"}]

    Plain text, one ``objective:`` or ``subjective:`` prompt per line in scoring order, an optional
    ``template:`` line first, ``#`` comments and blank lines ignored::

        template: a photo that looks {}.
        objective: sharp
        objective: blurry

    Args:
        path: the file.
        softmax: ``"all"`` or ``"group"`` to also check the file gives every softmax at least 2
            prompts (:meth:`PromptSet.softmax_blocks`); None skips that check.

    Raises:
        PromptFileError: one line naming the file, and the line (text) or item (JSON) where it
            applies: unreadable, not UTF-8, malformed, unknown group, empty or whitespace-only
            prompt, a prompt that repeats another as CLIP reads it (case and spacing ignored; a
            duplicate would count twice in the softmax), or a softmax over fewer than 2 prompts.
    """
    path = Path(path)
    try:
        # utf-8-sig: files saved by Windows editors start with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PromptFileError(f"cannot read prompt file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text; save it as UTF-8") from exc
    try:
        if text.lstrip().startswith(("{", "[")):
            template, entries = _from_json(path, text)
        else:
            template, entries = _from_lines(path, text)
        return _build(path, template, entries, softmax)
    except PromptFileError:
        raise
    except ValueError as exc:
        raise PromptFileError(f"prompt file {path}: {exc}") from exc


@dataclass(frozen=True)
class _Entry:
    """One prompt as read: the word (or the final text when there is no template), its group,
    and where it is in the file (``line 4`` or ``objective[2]``)."""

    value: str
    group: str
    where: str


def _check_template(template: object) -> None:
    if (
        not isinstance(template, str)
        or template.count("{}") != 1
        or template.count("{") != 1
        or template.count("}") != 1
    ):
        raise PromptError(f"template {template!r} must contain exactly one '{{}}' and no other braces")


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise PromptError(f"prompt {text!r} is not a string")
    if not text.strip():
        raise PromptError(f"empty prompt {text!r}; give a word or remove it")


def _duplicate_message(text: str, first: str) -> str:
    return (f"{text!r} repeats {first} as CLIP reads it (case and spacing are ignored); it would count "
            "twice in the softmax, silently shrinking every other prompt's share; remove one")


def _build(path: Path, template: str | None, entries: list[_Entry], softmax: str | None) -> PromptSet:
    """The checked :class:`PromptSet` of ``entries``; errors name the entry's place in ``path``."""
    if not entries:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    texts: list[str] = []
    first: dict[str, str] = {}
    for entry in entries:
        where = f"prompt file {path}, {entry.where}"
        try:
            _check_text(entry.value)
        except ValueError as exc:
            raise PromptFileError(f"{where}: {exc}") from None
        text = template.format(entry.value) if template is not None else entry.value
        key = clip_text_key(text)
        if key in first:
            raise PromptFileError(f"{where}: {_duplicate_message(entry.value, first[key])}")
        first[key] = entry.where
        texts.append(text)
    prompts = PromptSet(tuple(texts), tuple(e.group for e in entries), template)
    if softmax is not None:
        _, short = prompts._softmax_check(softmax)
        if short:
            places = ", ".join(entries[i].where for i in short[0])
            raise PromptFileError(f"prompt file {path}, {places}: {short[1]}")
    return prompts


def _from_json(path: Path, text: str) -> tuple[str | None, list[_Entry]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"prompt file {path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if isinstance(data, dict):
        unknown = set(data) - {"template", *GROUPS}
        if unknown:
            raise PromptFileError(
                f"prompt file {path}: unknown keys {sorted(unknown)}; expected template, objective, subjective"
            )
        entries = []
        for group in GROUPS:
            items = data.get(group, [])
            if not isinstance(items, list) or not all(isinstance(w, str) for w in items):
                raise PromptFileError(f"prompt file {path}: {group!r} must be a list of strings")
            entries += [_Entry(word, group, f"{group}[{k}]") for k, word in enumerate(items)]
        template = data.get("template", DEFAULT_TEMPLATE)
        _check_template(template)
        return template, entries
    if isinstance(data, list):
        entries = []
        for k, item in enumerate(data):
            if not isinstance(item, dict) or set(item) != {"text", "group"}:
                raise PromptFileError(f"prompt file {path}: item {k} must be an object with exactly 'text' and 'group'")
            if not isinstance(item["text"], str):
                raise PromptFileError(f"prompt file {path}, item {k}: 'text' must be a string")
            if item["group"] not in GROUPS:
                raise PromptFileError(
                    f"prompt file {path}, item {k}: group {item['group']!r}; expected one of {GROUPS}")
            entries.append(_Entry(item["text"], item["group"], f"item {k}"))
        return None, entries
    raise PromptFileError(f"prompt file {path}: JSON must be an object or a list")


def _from_lines(path: Path, text: str) -> tuple[str, list[_Entry]]:
    template = DEFAULT_TEMPLATE
    entries: list[_Entry] = []  # in file order
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        where = f"prompt file {path}, line {lineno}"
        if not sep:
            raise PromptFileError(
                f"{where}: expected 'objective: WORD', 'subjective: WORD' or 'template: TEXT', got {raw!r}"
            )
        if key == "template":
            if entries:
                raise PromptFileError(f"{where}: the template line must come before the prompts")
            try:
                _check_template(value)
            except ValueError as exc:
                raise PromptFileError(f"{where}: {exc}") from exc
            template = value
        elif key in GROUPS:
            entries.append(_Entry(value, key, f"line {lineno}"))
        else:
            raise PromptFileError(f"{where}: unknown label {key!r}; use objective, subjective or template")
    return template, entries
