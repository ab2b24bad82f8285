import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from artune.tokenizers import (
    TOKENIZERS,
    UnknownTokenError,
    Vocabulary,
    basic_english,
    character,
    get_tokenizer,
)


def test_character_round_trip():
    text = "First Citizen:\nBefore we proceed, é ü 🙂"
    vocab = Vocabulary.build(character(text))
    assert vocab.decode(vocab.encode(character(text))) == text


# no per-example deadline: a loaded machine's stall is not the tokenizer's slowness
ANY_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ANY_MACHINE
@given(st.text())
def test_character_round_trip_any_text(text):
    vocab = Vocabulary.build(character(text))
    assert vocab.decode(vocab.encode(character(text))) == text


@ANY_MACHINE
@given(st.text())
def test_basic_english_is_idempotent_on_its_own_output(text):
    # Re-tokenizing the joined tokens gives the same tokens: each token is already normalized.
    tokens = basic_english(text)
    assert basic_english(" ".join(tokens)) == tokens


# Expected values follow torchtext's rules (lower-case, then each pattern in order, then split).
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # torchtext's own doc example
        (
            "You can now install TorchText using pip!",
            ["you", "can", "now", "install", "torchtext", "using", "pip", "!"],
        ),
        ("Don't stop", ["don", "'", "t", "stop"]),
        ('He said "hi".', ["he", "said", "hi", "."]),
        ("Pi is 3.14", ["pi", "is", "3", ".", "14"]),
        ("Great movie.<br />Loved it", ["great", "movie", ".", "loved", "it"]),
        ("a,b (c) d? e; f: g", ["a", ",", "b", "(", "c", ")", "d", "?", "e", "f", "g"]),
        ("Tabs\tand\nnew  lines", ["tabs", "and", "new", "lines"]),
        ("", []),
    ],
)
def test_basic_english_matches_torchtext(text, expected):
    assert basic_english(text) == expected


def test_basic_english_round_trip_through_vocabulary():
    text = "To be, or not to be: that is the question."
    tokens = basic_english(text)
    vocab = Vocabulary.build(tokens)
    assert vocab.decode(vocab.encode(tokens), separator=" ") == "to be , or not to be that is the question ."


def test_get_tokenizer():
    assert get_tokenizer("character") is character
    assert get_tokenizer("basic_english") is basic_english
    assert set(TOKENIZERS) == {"character", "basic_english"}
    with pytest.raises(ValueError, match="'bpe'"):
        get_tokenizer("bpe")


def test_vocabulary_is_sorted_and_deterministic():
    a = Vocabulary.build("cab", "ba")
    b = Vocabulary.build("ab", "bca")
    assert a.itos == ["a", "b", "c"] == b.itos
    assert a.stoi == {"a": 0, "b": 1, "c": 2}
    assert len(a) == 3
    assert a == b


def test_unknown_tokens_raise_and_are_named():
    vocab = Vocabulary.build("abc")
    with pytest.raises(UnknownTokenError) as info:
        vocab.encode("abxyx")
    message = str(info.value)
    assert "'x'" in message and "'y'" in message
    assert "not in the vocabulary" in message and "corpus" in message
    assert isinstance(info.value, ValueError)


def test_unknown_tokens_from_an_iterator_are_still_named():
    vocab = Vocabulary.build("abc")
    with pytest.raises(UnknownTokenError, match="'z'"):
        vocab.encode(iter("az"))


def test_many_unknown_tokens_are_summarised():
    vocab = Vocabulary.build("a")
    with pytest.raises(UnknownTokenError, match="and 3 more"):
        vocab.encode("bcdefghi")


def test_vocabulary_pickles_small_and_round_trips():
    vocab = Vocabulary.build(character("the quick brown fox"))
    data = pickle.dumps(vocab)
    restored = pickle.loads(data)
    assert restored == vocab and restored.stoi == vocab.stoi
    assert len(data) < 200


def test_vocabulary_list_round_trip():
    vocab = Vocabulary.build(["b", "a", "c"])
    assert vocab.to_list() == ["a", "b", "c"]
    assert Vocabulary.from_list(vocab.to_list()) == vocab
    with pytest.raises(ValueError, match="twice"):
        Vocabulary.from_list(["a", "a"])
