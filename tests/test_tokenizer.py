"""Tests for the project's sentencepiece tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc_jax.tasks import ArithmeticConfig, ArithmeticTask
from ttc_jax.tokenizer import MODEL_FILENAME, Tokenizer, build_task_tokenizer, task_corpus, train_tokenizer

TASK = ArithmeticTask()
REV_TASK = ArithmeticTask(ArithmeticConfig(reverse_digits=True))
# Every character the task ever writes.
ALPHABET = "0123456789+-*=Q: answer\n"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return build_task_tokenizer(TASK)


def pieces(tok: Tokenizer, text: str) -> list[str]:
    return [tok.id_to_piece(i) for i in tok.encode(text)]


def test_special_ids_explicit(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    ids = tok.encode("1+2", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == tok.encode("1+2")


def test_vocab_is_tiny(tok):
    assert 20 < tok.vocab_size <= 48
    assert "answer" in {tok.id_to_piece(i) for i in range(tok.vocab_size)}  # frequent word merged


def test_digits_are_single_pieces(tok):
    for d in "0123456789":
        assert pieces(tok, d) == [d]
    assert pieces(tok, "1234567890") == list("1234567890")
    assert pieces(tok, "=-905") == ["=", "-", "9", "0", "5"]  # the sign never fuses


def test_newline_is_its_own_piece(tok):
    nl = tok.newline_id
    assert tok.encode("\n") == [nl]
    assert tok.encode("\n\n\n") == [nl] * 3
    assert tok.encode("answer 5\n")[-1] == nl
    for p in TASK.train_problems(0, 100):
        text = TASK.prompt(p) + p.solution
        ids = tok.encode(text)
        assert ids.count(nl) == text.count("\n")
        assert all(i != tok.unk_id for i in ids)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=200))
def test_round_trip_task_alphabet(tok, text):
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "\n", "\n\n", "0", "-7", "-999*9=-8991\n", "100000", "  answer  \n  ",
     "Q: 5-20*3\n5-20=-15\n-15*3=-45\nanswer -45\n"],
)
def test_round_trip_examples(tok, text):
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


@pytest.mark.parametrize("task", [TASK, REV_TASK], ids=["forward", "reverse"])
def test_round_trip_everything_the_task_writes(tok, task):
    for p in task.test_problems() + task.train_problems(1, 500):
        text = task.prompt(p) + p.solution
        assert tok.decode(tok.encode(text)) == text


def test_decode_stops_at_eos_and_drops_pad(tok):
    ids = tok.encode("12+3=15\n")
    assert tok.decode(ids + [tok.eos_id] + tok.encode("junk")) == "12+3=15\n"
    assert tok.decode([tok.bos_id] + ids + [tok.pad_id] * 4) == "12+3=15\n"
    assert tok.decode(np.asarray(ids + [tok.eos_id, tok.pad_id], dtype=np.int32)) == "12+3=15\n"
    assert tok.decode([]) == ""


def test_unknown_characters_map_to_unk(tok):
    assert tok.unk_id in tok.encode("é")


def test_save_load(tok, tmp_path):
    path = tok.save(str(tmp_path / "ckpt"))
    assert path.endswith(MODEL_FILENAME)
    for loaded in (Tokenizer.load(str(tmp_path / "ckpt")), Tokenizer.load(path)):
        assert loaded == tok
        assert loaded.vocab_size == tok.vocab_size
        text = "Q: 1+2\n1+2=3\nanswer 3\n"
        assert loaded.encode(text) == tok.encode(text)


def test_build_saves_to_out_dir(tmp_path):
    built = build_task_tokenizer(TASK, str(tmp_path), n_samples=200)
    assert Tokenizer.load(str(tmp_path)) == built


def test_training_is_deterministic(tok):
    assert build_task_tokenizer(TASK) == tok
    corpus = task_corpus(TASK, 300, seed=4)
    assert corpus == task_corpus(TASK, 300, seed=4)
    assert train_tokenizer(corpus) == train_tokenizer(corpus)


def test_vocab_mismatch_error_names_both_sizes(tok):
    tok.check_matches(tok.vocab_size)
    with pytest.raises(ValueError, match=rf"{tok.vocab_size}.*{tok.vocab_size + 7}"):
        tok.check_matches(tok.vocab_size + 7)
