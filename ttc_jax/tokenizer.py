"""SentencePiece tokenizer: trained by the project for the built-in task, or
loaded from a real model's `.model` file.

For the built-in task the vocabulary is tiny (~40 pieces): single characters,
every digit its own piece, newline (the step delimiter) its own piece, each
punctuation mark its own piece (so "=-" never fuses and a sign is always a
separate token), plus a few merges of frequent words such as "answer".
"""

from __future__ import annotations

import io
import itertools
import os
import string
from collections.abc import Iterable, Sequence

import sentencepiece as spm

from ttc_jax.tasks.base import STEP_DELIMITER, Task

MODEL_FILENAME = "tokenizer.model"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
DIGITS = "0123456789"


class Tokenizer:
    """A thin wrapper over SentencePieceProcessor with explicit special ids."""

    def __init__(self, model_proto: bytes) -> None:
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

    # ---- ids

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._sp.pad_id()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def newline_id(self) -> int:
        """The step-delimiter token id (the PRM scores at these positions)."""
        ids = self._sp.encode(STEP_DELIMITER)
        if len(ids) != 1 or ids[0] == self.unk_id:
            raise ValueError(f"newline is not a single piece in this tokenizer: {ids}")
        return ids[0]

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    # ---- text

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes up to the first eos; pad and bos are dropped.

        Accepts any iterable of ints (lists, numpy or jax arrays).
        """
        ids = itertools.takewhile(lambda i: i != self.eos_id, (int(i) for i in ids))
        return self._sp.decode([i for i in ids if i not in (self.pad_id, self.bos_id)])

    def check_matches(self, vocab_size: int) -> None:
        """Raises when a model's vocabulary size disagrees with this tokenizer."""
        if vocab_size != self.vocab_size:
            raise ValueError(
                f"tokenizer vocab size {self.vocab_size} does not match model vocab size {vocab_size}"
            )

    # ---- files

    def save(self, directory: str) -> str:
        """Writes `<directory>/tokenizer.model` (atomically) and returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, MODEL_FILENAME)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self._proto)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Loads a directory holding `tokenizer.model`, or a `.model` file."""
        if os.path.isdir(path):
            path = os.path.join(path, MODEL_FILENAME)
        with open(path, "rb") as f:
            return cls(f.read())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self._proto == other._proto

    def __hash__(self) -> int:
        return hash(self._proto)


def train_tokenizer(samples: Sequence[str], vocab_size: int = 48) -> Tokenizer:
    """Trains a BPE tokenizer in memory on multi-line samples.

    vocab_size is an upper bound (hard_vocab_limit=False): a tiny corpus may
    yield fewer pieces. No byte fallback: it would add 256 byte pieces to a
    ~40-piece vocabulary; characters never seen in training map to <unk>.
    """
    chars = set("".join(samples))
    # Whole punctuation marks and the newline as atomic user symbols: the
    # newline must survive (sentencepiece otherwise treats it as a sentence
    # break) and operators/signs must never merge with their neighbours.
    symbols = [STEP_DELIMITER] + sorted(chars & set(string.punctuation))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(samples),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        split_digits=True,
        required_chars=DIGITS,
        user_defined_symbols=symbols,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=False,
        character_coverage=1.0,
        pad_id=PAD_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        num_threads=1,  # determinism
        minloglevel=2,
    )
    return Tokenizer(model.getvalue())


def task_corpus(task: Task, n_samples: int, seed: int = 0) -> list[str]:
    """Deterministic sample of the task's training texts (prompt + solution)."""
    return [task.prompt(p) + p.solution for p in task.train_problems(seed, n_samples)]


def build_task_tokenizer(
    task: Task,
    out_dir: str | None = None,
    vocab_size: int = 48,
    n_samples: int = 2000,
    seed: int = 0,
) -> Tokenizer:
    """Trains the tokenizer for a task; saves it to out_dir when given."""
    tokenizer = train_tokenizer(task_corpus(task, n_samples, seed), vocab_size)
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer
