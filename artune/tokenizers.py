"""Tokenizers (text -> tokens) and the Vocabulary (tokens <-> integer ids).

Standard library only. ``basic_english`` re-implements torchtext's ``get_tokenizer("basic_english")``
rule for rule, so results stay comparable with the origin without depending on torchtext, which is
no longer maintained.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

from artune.errors import UnknownTokenError  # noqa: F401  (re-exported)


def character(text: str) -> list[str]:
    """Every character is a token."""
    return list(text)


# torchtext's _patterns and _replacements, in its order: the order matters (the quote rule pads
# with spaces that the final whitespace rule then collapses).
_BASIC_ENGLISH_RULES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in zip(
        [r"\'", r"\"", r"\.", r"<br \/>", r",", r"\(", r"\)", r"\!", r"\?", r"\;", r"\:", r"\s+"],
        [" '  ", "", " . ", " ", " , ", " ( ", " ) ", " ! ", " ? ", " ", " ", " "],
    )
)


def basic_english(text: str) -> list[str]:
    """torchtext's basic_english: lower-case, split off punctuation, drop double quotes, split on spaces."""
    text = text.lower()
    for pattern, replacement in _BASIC_ENGLISH_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"character": character, "basic_english": basic_english}


def get_tokenizer(name: str) -> Callable[[str], list[str]]:
    try:
        return TOKENIZERS[name]
    except KeyError:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, but got {name!r}") from None


class Vocabulary:
    """A fixed, sorted list of tokens; a token's id is its index in ``itos``.

    Sorted so that the same corpus always gives the same ids, whatever order it was read in.
    Pickles as its token list only (``stoi`` is rebuilt), so it ships cheaply to workers.
    """

    def __init__(self, itos: Sequence[str]) -> None:
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("a vocabulary must not list a token twice")

    @classmethod
    def build(cls, *token_lists: Iterable[str]) -> "Vocabulary":
        """The sorted set of tokens across all the given token sequences."""
        tokens: set[str] = set()
        for token_list in token_lists:
            tokens.update(token_list)
        return cls(sorted(tokens))

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def __reduce__(self):
        return (Vocabulary, (self.itos,))

    def encode(self, tokens: Iterable[str], source: str = "the corpus") -> list[int]:
        """The ids of ``tokens``; an unknown one is an UnknownTokenError naming ``source``, what the vocabulary
        was built from (a corpus file, say)."""
        if not isinstance(tokens, (list, tuple, str)):
            tokens = list(tokens)  # may be walked twice below
        stoi = self.stoi
        try:
            return [stoi[token] for token in tokens]
        except KeyError:
            pass
        # Slow path, only to report every unknown token (in order of first appearance).
        unknown = list(dict.fromkeys(t for t in tokens if t not in stoi))
        shown = ", ".join(repr(t) for t in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UnknownTokenError(
            f"{len(unknown)} token(s) not in the vocabulary of {len(self)} built from {source}: {shown}{more}"
        )

    def decode(self, ids: Iterable[int], separator: str = "") -> str:
        itos = self.itos
        return separator.join(itos[int(i)] for i in ids)

    def to_list(self) -> list[str]:
        """The tokens in id order, for a checkpoint or a JSON manifest."""
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: Sequence[str]) -> "Vocabulary":
        return cls(itos)
