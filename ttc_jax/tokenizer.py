"""Tokenizers: the project's sentencepiece `Tokenizer` (trained for the
built-in task, or loaded from a real model's `.model` file) and
`HFTokenizer` (a Hugging Face `tokenizer.json`, e.g. Llama-3 or Qwen), both
with the same interface. `load_tokenizer(path)` picks the right one.

For the built-in task the vocabulary is tiny (~40 pieces): single characters,
every digit its own piece, newline (the step delimiter) its own piece, each
punctuation mark its own piece (so "=-" never fuses and a sign is always a
separate token), plus a few merges of frequent words such as "answer".

Real sentencepiece models (Llama-2, Gemma) differ from the built-in one:

* no pad piece (`pad_id() == -1`): `pad_id` falls back to eos (else unk),
  so right-padding works; padding is always cut by lengths, never by id.
* byte fallback: "\n" may be the byte piece "<0x0A>", and with
  `add_dummy_prefix` `encode("\n")` gives ["\u2581", "<0x0A>"]; `newline_id`
  skips that lone dummy-prefix piece.
* dummy prefix: every `encode` call starts its text with a space ("\u2581"),
  which `decode` strips again, so `decode(encode(x)) == x`; but
  `encode(a) + encode(b)` decodes to `a + " " + b`. The project encodes
  prompt and completion separately and decodes completions on their own, so
  training, decoding and scoring all see the same tokens.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import string
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sentencepiece as spm

from ttc_jax.atomic import atomic_open
from ttc_jax.tasks.base import STEP_DELIMITER, Task

MODEL_FILENAME = "tokenizer.model"
HF_TOKENIZER_FILENAME = "tokenizer.json"
HF_CONFIG_FILENAME = "tokenizer_config.json"
HF_SPECIAL_TOKENS_FILENAME = "special_tokens_map.json"
HF_MODEL_CONFIG_FILENAME = "config.json"
HF_CHAT_TEMPLATE_FILENAME = "chat_template.jinja"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
DIGITS = "0123456789"
# Sentencepiece's word-boundary mark; with add_dummy_prefix every text starts with it.
DUMMY_PREFIX = "\u2581"
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
_SPM_MAX_SENTENCE_BYTES = 4192  # sentencepiece's default max_sentence_length


def _write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def _single_newline(ids: list[int], piece: Callable[[int], str],
                    decode: Callable[[list[int]], str], unk_id: int) -> int:
    """The newline token, given `ids` = the encoding of the step delimiter.

    A lone leading dummy-prefix piece (sentencepiece's add_dummy_prefix) is
    skipped; what remains must be one token that decodes back to "\n".
    """
    if len(ids) == 2 and piece(ids[0]) == DUMMY_PREFIX:
        ids = ids[1:]
    if len(ids) != 1 or ids[0] == unk_id or decode(ids) != STEP_DELIMITER:
        raise ValueError(f"newline is not a single piece in this tokenizer: {STEP_DELIMITER!r} "
                         f"encodes to {ids} ({[piece(i) for i in ids]}); the step delimiter "
                         "must be a token of its own")
    return ids[0]


class Tokenizer:
    """A thin wrapper over SentencePieceProcessor with explicit special ids."""

    FILENAME = MODEL_FILENAME  # what `save` writes

    def __init__(self, model_proto: bytes) -> None:
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)

    # ---- ids

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        """The model's pad piece; without one (Llama-2) eos, else unk.

        Padding is always cut off by lengths, so sharing the id is harmless;
        `decode` stops at eos (or drops unk) either way.
        """
        for i in (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()):
            if i >= 0:
                return i
        raise ValueError("this sentencepiece model has no pad, eos or unk piece to pad with")

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
        """The step-delimiter token id (the PRM scores at these positions).

        Works for a "\n" piece and for byte-fallback models ("<0x0A>"), with
        or without a dummy prefix; raises when newline is not one token.
        """
        return _single_newline(self._sp.encode(STEP_DELIMITER), self._sp.id_to_piece,
                               self._sp.decode, self._sp.unk_id())

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    # ---- text

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of text; with add_dummy_prefix (Llama-2) the text is
        encoded as if it started with a space, which `decode` drops again."""
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

    def files(self) -> dict[str, bytes]:
        """What `save` writes: {file name: contents}."""
        return {MODEL_FILENAME: self._proto}

    def digest(self) -> str:
        """sha256 of the model file (what checkpoint records compare)."""
        return hashlib.sha256(self._proto).hexdigest()

    def save(self, directory: str) -> str:
        """Writes `<directory>/tokenizer.model` (atomically) and returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, MODEL_FILENAME)
        _write_bytes(path, self._proto)
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


# ---------------------------------------------------------------- Hugging Face


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"a special token must be a string or a {{'content': ...}} dict, "
                     f"got {value!r}")


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return obj


def _canonical_json(obj: Mapping) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _parse_tokenizer_json(data: bytes) -> Any:
    from tokenizers import Tokenizer as FastTokenizer  # pylint: disable=import-outside-toplevel
    try:
        return FastTokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # pylint: disable=broad-except  (tokenizers raises its own types)
        raise ValueError(f"not a Hugging Face tokenizer.json: {e}") from e


def _hf_config(directory: str, fast: Any) -> dict:
    """tokenizer_config.json of a directory, with the special tokens it lacks
    taken from special_tokens_map.json, else from config.json's *_token_id
    (the first one of a list), and chat_template.jinja when it has no template."""
    config = _read_json(os.path.join(directory, HF_CONFIG_FILENAME))
    special_map = _read_json(os.path.join(directory, HF_SPECIAL_TOKENS_FILENAME))
    model_config = _read_json(os.path.join(directory, HF_MODEL_CONFIG_FILENAME))
    for key in SPECIAL_KEYS:
        if _token_content(config.get(key)) is not None:
            continue
        token = _token_content(special_map.get(key))
        token_id = model_config.get(f"{key}_id")
        if isinstance(token_id, list):  # e.g. Llama-3.1 instruct lists several eos ids
            token_id = token_id[0] if token_id else None
        if token is None and token_id is not None:
            token = fast.id_to_token(int(token_id))
            if token is None:
                raise ValueError(f"{key}_id {token_id} of {HF_MODEL_CONFIG_FILENAME} in "
                                 f"{directory} is outside the tokenizer's vocabulary")
        if token is not None:
            config[key] = token
    template_path = os.path.join(directory, HF_CHAT_TEMPLATE_FILENAME)
    if not config.get("chat_template") and os.path.isfile(template_path):
        with open(template_path, encoding="utf-8") as f:
            config["chat_template"] = f.read()
    return config


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat template: {message}")


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json) with the
    interface of `Tokenizer`.

    `config` is the tokenizer_config.json object; its bos_token / eos_token /
    pad_token / unk_token (strings or {"content": ...} dicts) name the special
    tokens. `load` fills the ones it lacks from special_tokens_map.json, then
    from config.json's *_token_id. Without a pad token pad = eos; without a
    bos token bos = eos (Qwen-style); without an unk token unk_id = -1; an
    eos token is required. `encode` never adds special tokens by itself:
    callers pass bos=True / eos=True.

    Byte-level BPE (Llama-3, Qwen) round-trips any text. A tokenizer.json
    converted from sentencepiece (Metaspace, prepend_scheme "first") drops a
    leading space in `decode(encode(x))`, exactly as transformers does.
    """

    FILENAME = HF_TOKENIZER_FILENAME  # what `save` returns

    def __init__(self, tokenizer_json: bytes | str,
                 config: Mapping[str, Any] | None = None) -> None:
        if isinstance(tokenizer_json, str):
            tokenizer_json = tokenizer_json.encode("utf-8")
        self._setup(tokenizer_json, dict(config or {}), _parse_tokenizer_json(tokenizer_json))

    def _setup(self, tokenizer_json: bytes, config: dict, fast: Any) -> None:
        self._json = tokenizer_json
        # Round-trip through JSON: the saved file must reload to an equal tokenizer.
        self._config_bytes = _canonical_json(config)
        self._config = json.loads(self._config_bytes)
        self._tok = fast
        # Added tokens may leave holes in the ids: the size is the largest id + 1.
        top = max(fast.get_vocab(with_added_tokens=True).values(), default=-1)
        self._vocab_size = max(fast.get_vocab_size(with_added_tokens=True), top + 1)
        ids = {key: self._special_id(key) for key in SPECIAL_KEYS}
        if ids["eos_token"] is None:
            raise ValueError("the tokenizer has no eos token: set eos_token in "
                             "tokenizer_config.json (or eos_token_id in config.json)")
        self._eos = ids["eos_token"]
        self._bos = self._eos if ids["bos_token"] is None else ids["bos_token"]
        self._pad = self._eos if ids["pad_token"] is None else ids["pad_token"]
        self._unk = -1 if ids["unk_token"] is None else ids["unk_token"]

    def _special_id(self, key: str) -> int | None:
        token = _token_content(self._config.get(key))
        if token is None:
            return None
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{key} {token!r} of the tokenizer config is not in the vocabulary")
        return token_id

    # ---- ids

    @property
    def vocab_size(self) -> int:
        """Number of token ids (base vocabulary plus added tokens)."""
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def newline_id(self) -> int:
        """The step-delimiter token id: "\\n" must encode to one token
        ("Ċ" in byte-level BPE); raises otherwise."""
        return _single_newline(self._tok.encode(STEP_DELIMITER, add_special_tokens=False).ids,
                               self.id_to_piece, self._decode_raw, self._unk)

    def id_to_piece(self, token_id: int) -> str:
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            raise IndexError(f"token id {token_id} is outside the vocabulary "
                             f"[0, {self.vocab_size})")
        return piece

    # ---- text

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes up to the first eos; pad and bos are dropped (other special
        tokens are kept as text). Accepts any iterable of ints."""
        ids = itertools.takewhile(lambda i: i != self.eos_id, (int(i) for i in ids))
        return self._decode_raw([i for i in ids if i not in (self.pad_id, self.bos_id)])

    def _decode_raw(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def check_matches(self, vocab_size: int) -> None:
        """Raises when a model's embedding has fewer rows than this tokenizer
        has ids. More rows are fine: checkpoints pad their embeddings (Qwen2.5:
        151,665 ids in 151,936 rows)."""
        if vocab_size < self.vocab_size:
            raise ValueError(f"tokenizer vocab size {self.vocab_size} exceeds the model vocab size "
                             f"{vocab_size}")

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = False, **extra: Any) -> str:
        """The chat prompt text from the config's `chat_template` (jinja2).

        Encode the result with bos=False: templates write their own BOS.
        """
        template = self._config.get("chat_template")
        if isinstance(template, list):  # [{"name": ..., "template": ...}]: the default one
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if not template:
            raise ValueError("this tokenizer has no chat_template")
        try:
            # jinja2 is optional: imported only here.
            # pylint: disable-next=import-outside-toplevel
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError as e:
            raise ImportError("apply_chat_template needs jinja2 (pip install jinja2)") from e
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                           extensions=["jinja2.ext.loopcontrols"])
        # What transformers offers templates (jinja2's own tojson escapes HTML).
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False,
                                                                        indent=indent)
        env.globals["raise_exception"] = _raise_template_error
        env.globals["strftime_now"] = time.strftime
        variables = {key: _token_content(self._config.get(key)) for key in SPECIAL_KEYS}
        variables.update(extra)  # may override the special tokens
        return env.from_string(template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **variables)

    # ---- files

    def files(self) -> dict[str, bytes]:
        """What `save` writes: {file name: contents}."""
        return {HF_TOKENIZER_FILENAME: self._json, HF_CONFIG_FILENAME: self._config_bytes}

    def digest(self) -> str:
        """sha256 over both files (what checkpoint records compare)."""
        h = hashlib.sha256()
        for name, data in sorted(self.files().items()):
            h.update(f"{name}\n{len(data)}\n".encode())
            h.update(data)
        return h.hexdigest()

    def save(self, directory: str) -> str:
        """Writes tokenizer_config.json, then tokenizer.json (each atomically)
        into directory; returns the tokenizer.json path."""
        os.makedirs(directory, exist_ok=True)
        _write_bytes(os.path.join(directory, HF_CONFIG_FILENAME), self._config_bytes)
        path = os.path.join(directory, HF_TOKENIZER_FILENAME)
        _write_bytes(path, self._json)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> HFTokenizer:
        """Loads a directory holding tokenizer.json, or a tokenizer.json file;
        special tokens (and a chat_template.jinja) come from its directory."""
        path = os.fspath(path)
        if os.path.isdir(path):
            directory, path = path, os.path.join(path, HF_TOKENIZER_FILENAME)
        else:
            directory = os.path.dirname(path)
        with open(path, "rb") as f:
            tokenizer_json = f.read()
        fast = _parse_tokenizer_json(tokenizer_json)  # parsed once (large for real models)
        tok = cls.__new__(cls)
        # pylint: disable-next=protected-access
        tok._setup(tokenizer_json, _hf_config(directory, fast), fast)
        return tok

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, HFTokenizer) and self._json == other._json
                and self._config_bytes == other._config_bytes)

    def __hash__(self) -> int:
        return hash((self._json, self._config_bytes))


def token_texts(tokenizer: Tokenizer | HFTokenizer) -> list[str]:
    """Every token id's text on its own; the newline token's is "\n" even where it
    decodes otherwise (e.g. a sentencepiece "▁"-prefixed byte piece). Seconds
    for a real vocabulary: compute it once."""
    texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    texts[tokenizer.newline_id] = STEP_DELIMITER
    return texts


def step_end_ids(tokenizer: Tokenizer | HFTokenizer,
                 texts: Sequence[str] | None = None) -> tuple[int, ...]:
    """Every token whose text holds the step delimiter "\n": where the policy's
    steps end. The built-in tokenizer has one; real ones fuse the newline into
    others (Llama-3's ".\n", "\n\n"), so a step can end without a lone "\n".
    texts: `token_texts(tokenizer)`, when already computed."""
    texts = token_texts(tokenizer) if texts is None else texts
    return tuple(i for i, text in enumerate(texts) if STEP_DELIMITER in text)


def tokenizer_from_files(files: Mapping[str, bytes]) -> Tokenizer | HFTokenizer:
    """The tokenizer whose `files()` these are (e.g. a checkpoint's embedded copy)."""
    if HF_TOKENIZER_FILENAME in files:
        config = json.loads(files.get(HF_CONFIG_FILENAME, b"{}"))
        return HFTokenizer(files[HF_TOKENIZER_FILENAME], config)
    if MODEL_FILENAME in files:
        return Tokenizer(files[MODEL_FILENAME])
    raise ValueError(f"no {HF_TOKENIZER_FILENAME} or {MODEL_FILENAME} among {sorted(files)}")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer | HFTokenizer:
    """The tokenizer at path: a directory holding tokenizer.json (an
    HFTokenizer; preferred, as in transformers, when tokenizer.model is there
    too) or tokenizer.model (a sentencepiece Tokenizer), a `.model` file, or
    a tokenizer.json (any `.json` file but tokenizer_config.json/config.json)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name, cls in ((HF_TOKENIZER_FILENAME, HFTokenizer), (MODEL_FILENAME, Tokenizer)):
            if os.path.isfile(os.path.join(path, name)):
                return cls.load(os.path.join(path, name))
    elif os.path.isfile(path):
        name = os.path.basename(path)
        if name.endswith(".model"):
            return Tokenizer.load(path)
        if name.endswith(".json") and name not in (HF_CONFIG_FILENAME, HF_MODEL_CONFIG_FILENAME,
                                                   HF_SPECIAL_TOKENS_FILENAME):
            return HFTokenizer.load(path)
    raise FileNotFoundError(f"no tokenizer at {path}: looked for a directory holding "
                            f"{HF_TOKENIZER_FILENAME} or {MODEL_FILENAME}, a .model file or a "
                            f"{HF_TOKENIZER_FILENAME} file")


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
    # Sentencepiece skips samples over max_sentence_length bytes (default 4192), e.g.
    # few-shot benchmark prompts; raised only when needed so that the built-in
    # task's tokenizer (its trainer settings are part of the model file) stays the same.
    longest = max((len(s.encode("utf-8")) for s in samples), default=0)
    extra = {"max_sentence_length": longest} if longest > _SPM_MAX_SENTENCE_BYTES else {}
    model = io.BytesIO()
    try:
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
            **extra,
        )
    except RuntimeError as e:  # sentencepiece's own message names neither flag nor cause
        if "smaller than required_chars" not in str(e):
            raise
        raise ValueError(
            f"vocab_size {vocab_size} is too small for the {len(chars)} distinct characters "
            "of the tokenizer corpus (each needs a piece, as do the special tokens): raise "
            "it (train_policy --tokenizer_vocab_size)") from None
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
