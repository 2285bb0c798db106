"""Tests for real-checkpoint tokenizers: Llama-2-style sentencepiece models
(byte fallback, dummy prefix, no pad piece) and Hugging Face tokenizer.json
files (byte-level BPE, Llama-3 / Qwen style). Nothing is downloaded: each
tokenizer is trained here on a small corpus."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc_jax.tokenizer import (HF_CONFIG_FILENAME, HF_TOKENIZER_FILENAME, MODEL_FILENAME,
                               HFTokenizer, Tokenizer, load_tokenizer, step_end_ids,
                               tokenizer_from_files)

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
TEXTS = [
    "Q: 12+34=\n12+34=46\nThe answer is 46",
    "Step 1: 7*8 = 56\nStep 2: 56 - 9 = 47\n\nThe answer is 47\n",
    " leading space and  two spaces",
    "\nstarts with a newline",
    "unicode: é, π ≈ 3.14, 😀\n",
    "",
]


def math_lines() -> list[str]:
    """Single lines (no newline: it must come from byte fallback, as in Llama-2)."""
    lines = [f"Q: {a}+{b}=" for a in range(40) for b in range(0, 90, 7)]
    lines += [f"Step {a}: {a} * {b} = {a * b}" for a in range(30) for b in range(12)]
    lines += [f"The answer is {a * 13 % 97}. So the total is {a}." for a in range(200)]
    return lines


# ---------------------------------------------------------------- sentencepiece


def train_llama_like(**overrides) -> bytes:
    """A small BPE model with Llama-2's settings (byte fallback, dummy prefix, no pad)."""
    settings_ = dict(
        model_type="bpe", vocab_size=400, hard_vocab_limit=False, byte_fallback=True,
        add_dummy_prefix=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        character_coverage=1.0, pad_id=-1, bos_id=1, eos_id=2, unk_id=0,
        num_threads=1, minloglevel=2)
    settings_.update(overrides)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(math_lines()), model_writer=model,
                                   **settings_)
    return model.getvalue()


@pytest.fixture(scope="module")
def sp_tok() -> Tokenizer:
    return Tokenizer(train_llama_like())


def test_sp_special_ids_and_pad_fallback(sp_tok):
    assert spm.SentencePieceProcessor(model_proto=sp_tok.files()[MODEL_FILENAME]).pad_id() == -1
    assert (sp_tok.unk_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 1, 2)
    assert sp_tok.pad_id == sp_tok.eos_id  # no pad piece: pad with eos
    ids = sp_tok.encode("1+2", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    # Right-padding with the fallback id decodes to the text.
    assert sp_tok.decode(ids + [sp_tok.pad_id] * 5) == "1+2"
    assert sp_tok.decode(np.array(ids + [sp_tok.pad_id] * 3)) == "1+2"


def test_sp_newline_is_the_byte_piece(sp_tok):
    nl = sp_tok.newline_id
    assert sp_tok.id_to_piece(nl) == "<0x0A>"
    # encode("\n") is the dummy-prefix piece plus the newline byte.
    assert [sp_tok.id_to_piece(i) for i in sp_tok.encode("\n")] == ["\u2581", "<0x0A>"]
    for text in TEXTS:
        assert sp_tok.encode(text).count(nl) == text.count("\n")


@pytest.mark.parametrize("text", TEXTS)
def test_sp_round_trip(sp_tok, text):
    assert sp_tok.decode(sp_tok.encode(text)) == text
    assert sp_tok.decode(sp_tok.encode(text, bos=True, eos=True) + [sp_tok.pad_id]) == text


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789+-*/=().: abcQSTepx\n\t", max_size=60))
def test_sp_round_trip_property(sp_tok, text):
    assert sp_tok.decode(sp_tok.encode(text)) == text


def test_sp_dummy_prefix_between_separate_encodes(sp_tok):
    # Documented: each encode call starts with a dummy space that decode drops
    # only at the start of the decoded ids.
    assert sp_tok.decode(sp_tok.encode("Q: 1+1=") + sp_tok.encode("2")) == "Q: 1+1= 2"
    assert sp_tok.decode(sp_tok.encode("2")) == "2"


def test_sp_newline_not_a_token_raises():
    no_bytes = Tokenizer(train_llama_like(byte_fallback=False))  # "\n" -> <unk>
    with pytest.raises(ValueError, match="newline is not a single piece"):
        no_bytes.newline_id
    nfkc = Tokenizer(train_llama_like(normalization_rule_name="nmt_nfkc",
                                      remove_extra_whitespaces=True))  # "\n" dropped
    with pytest.raises(ValueError, match="newline is not a single piece"):
        nfkc.newline_id


def test_sp_check_matches_stays_exact(sp_tok):
    sp_tok.check_matches(sp_tok.vocab_size)
    for wrong in (sp_tok.vocab_size - 1, sp_tok.vocab_size + 1):
        with pytest.raises(ValueError, match="does not match"):
            sp_tok.check_matches(wrong)


def test_sp_load_from_file_and_dir(sp_tok, tmp_path):
    path = sp_tok.save(str(tmp_path / "run"))
    assert os.path.basename(path) == MODEL_FILENAME
    renamed = tmp_path / "llama.model"
    renamed.write_bytes(sp_tok.files()[MODEL_FILENAME])
    for loaded in (load_tokenizer(tmp_path / "run"), load_tokenizer(path),
                   load_tokenizer(str(renamed)), Tokenizer.load(path)):
        assert isinstance(loaded, Tokenizer)
        assert loaded == sp_tok and hash(loaded) == hash(sp_tok)
        assert loaded.newline_id == sp_tok.newline_id


# ---------------------------------------------------------------- Hugging Face


def train_byte_level_bpe():
    """A byte-level BPE tokenizer.json like Llama-3's (BOS added by its post-processor)."""
    from tokenizers import Tokenizer as Fast
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers
    fast = Fast(models.BPE())
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, show_progress=False, special_tokens=[BOS, EOS, EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["\n".join(math_lines()[i:i + 4]) for i in range(0, len(math_lines()), 4)]
    fast.train_from_iterator(corpus, trainer)
    # What encode(..., add_special_tokens=True) would do; HFTokenizer must not.
    fast.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, fast.token_to_id(BOS))])
    return fast


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("hf_tok")
    train_byte_level_bpe().save(str(directory / HF_TOKENIZER_FILENAME))
    # eos as transformers 4 writes it (an AddedToken dict), bos as a plain string.
    eos = {"__type": "AddedToken", "content": EOS, "lstrip": False, "normalized": False,
           "rstrip": False, "single_word": False, "special": True}
    config = {"bos_token": BOS, "eos_token": eos,
              "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE}
    (directory / HF_CONFIG_FILENAME).write_text(json.dumps(config))
    return str(directory)


@pytest.fixture(scope="module")
def hf_tok(hf_dir) -> HFTokenizer:
    tok = load_tokenizer(hf_dir)
    assert isinstance(tok, HFTokenizer)
    return tok


def fast_of(hf_dir):
    from tokenizers import Tokenizer as Fast
    return Fast.from_file(os.path.join(hf_dir, HF_TOKENIZER_FILENAME))


def test_hf_special_ids(hf_tok, hf_dir):
    fast = fast_of(hf_dir)
    assert hf_tok.bos_id == fast.token_to_id(BOS)
    assert hf_tok.eos_id == fast.token_to_id(EOS)
    assert hf_tok.pad_id == hf_tok.eos_id  # no pad token: pad with eos
    assert hf_tok.unk_id == -1  # byte-level BPE has no unk
    assert hf_tok.vocab_size == fast.get_vocab_size(with_added_tokens=True)
    assert hf_tok.id_to_piece(hf_tok.bos_id) == BOS
    with pytest.raises(IndexError):
        hf_tok.id_to_piece(hf_tok.vocab_size)


def test_hf_encode_adds_no_special_tokens(hf_tok, hf_dir):
    assert fast_of(hf_dir).encode("12+34").ids[0] == hf_tok.bos_id  # the file's post-processor
    ids = hf_tok.encode("12+34")
    assert hf_tok.bos_id not in ids and hf_tok.eos_id not in ids
    with_specials = hf_tok.encode("12+34", bos=True, eos=True)
    assert with_specials == [hf_tok.bos_id] + ids + [hf_tok.eos_id]


def test_hf_newline_id(hf_tok):
    nl = hf_tok.newline_id
    assert hf_tok.id_to_piece(nl) == "\u010a"  # "Ċ"
    assert hf_tok.encode("\n") == [nl]
    assert hf_tok.encode("7\n8").count(nl) == 1


@pytest.mark.parametrize("text", TEXTS)
def test_hf_round_trip(hf_tok, text):
    assert hf_tok.decode(hf_tok.encode(text)) == text
    ids = hf_tok.encode(text, bos=True, eos=True) + [hf_tok.pad_id] * 2
    assert hf_tok.decode(np.array(ids)) == text


def test_hf_decode_stops_at_eos_keeps_other_specials(hf_tok, hf_dir):
    eot = fast_of(hf_dir).token_to_id(EOT)
    ids = [hf_tok.bos_id] + hf_tok.encode("a=1") + [eot] + hf_tok.encode("b") + [hf_tok.eos_id]
    assert hf_tok.decode(ids + hf_tok.encode("never")) == f"a=1{EOT}b"


def test_hf_check_matches_accepts_padded_embeddings(hf_tok):
    hf_tok.check_matches(hf_tok.vocab_size)
    hf_tok.check_matches(hf_tok.vocab_size + 271)  # Qwen2.5: 151,665 ids, 151,936 rows
    with pytest.raises(ValueError, match=rf"{hf_tok.vocab_size}.*{hf_tok.vocab_size - 1}"):
        hf_tok.check_matches(hf_tok.vocab_size - 1)


def test_hf_equality_hash_and_save_round_trip(hf_tok, hf_dir, tmp_path):
    again = load_tokenizer(os.path.join(hf_dir, HF_TOKENIZER_FILENAME))
    assert again == hf_tok and hash(again) == hash(hf_tok)
    path = hf_tok.save(str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / HF_TOKENIZER_FILENAME)
    assert os.path.isfile(tmp_path / "run" / HF_CONFIG_FILENAME)
    for loaded in (load_tokenizer(tmp_path / "run"), load_tokenizer(path), HFTokenizer.load(path),
                   tokenizer_from_files(hf_tok.files())):
        assert loaded == hf_tok and hash(loaded) == hash(hf_tok)
        assert loaded.digest() == hf_tok.digest()
        assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (hf_tok.bos_id, hf_tok.eos_id,
                                                                 hf_tok.pad_id)
    config = json.loads(hf_tok.files()[HF_CONFIG_FILENAME])
    padded = HFTokenizer(hf_tok.files()[HF_TOKENIZER_FILENAME], {**config, "pad_token": EOT})
    assert padded != hf_tok and padded.digest() != hf_tok.digest()
    assert padded.pad_id == fast_of(hf_dir).token_to_id(EOT)
    assert hf_tok != Tokenizer(train_llama_like())


def test_hf_specials_from_special_tokens_map_and_model_config(hf_dir, tmp_path):
    fast = fast_of(hf_dir)
    only_json = tmp_path / "bare"
    only_json.mkdir()
    fast.save(str(only_json / HF_TOKENIZER_FILENAME))
    with pytest.raises(ValueError, match="no eos token"):
        load_tokenizer(only_json)
    # config.json ids (eos may be a list: the first one counts); no bos -> eos.
    (only_json / "config.json").write_text(json.dumps(
        {"eos_token_id": [fast.token_to_id(EOT), fast.token_to_id(EOS)], "bos_token_id": None}))
    tok = load_tokenizer(only_json)
    assert tok.eos_id == tok.bos_id == tok.pad_id == fast.token_to_id(EOT)
    # special_tokens_map.json comes before config.json.
    (only_json / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": BOS}, "eos_token": EOS, "pad_token": EOT}))
    tok = load_tokenizer(only_json)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (fast.token_to_id(BOS), fast.token_to_id(EOS),
                                                    fast.token_to_id(EOT))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(tok.files()[HF_TOKENIZER_FILENAME], {"eos_token": "<missing>"})


def test_hf_newline_not_a_token_raises():
    from tokenizers import Tokenizer as Fast
    from tokenizers import models, pre_tokenizers
    fast = Fast(models.WordLevel({"a": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    fast.pre_tokenizer = pre_tokenizers.Whitespace()  # drops "\n"
    tok = HFTokenizer(fast.to_str(), {"eos_token": "</s>", "unk_token": "<unk>"})
    assert tok.unk_id == 2
    with pytest.raises(ValueError, match="newline is not a single piece"):
        tok.newline_id


def test_hf_converted_sentencepiece_tokenizer(sp_tok, tmp_path):
    """A Llama-2 style tokenizer.json (Metaspace, byte fallback) as transformers
    writes it: "\n" is the dummy-prefix piece plus "<0x0A>"."""
    from transformers import LlamaTokenizer
    sp_tok.save(str(tmp_path / "sp"))
    reference = LlamaTokenizer.from_pretrained(str(tmp_path / "sp"))
    reference.save_pretrained(str(tmp_path / "hf"))
    tok = load_tokenizer(tmp_path / "hf")
    assert isinstance(tok, HFTokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 2)
    assert tok.id_to_piece(tok.newline_id) == "<0x0A>"
    assert [tok.id_to_piece(i) for i in tok.encode("\n")] == ["\u2581", "<0x0A>"]
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == reference.decode(ids)
        assert ids.count(tok.newline_id) == text.count("\n")
        # Metaspace(prepend_scheme="first") adds no dummy space before a
        # leading space, yet its decoder strips one: as in transformers.
        assert tok.decode(ids) == (text[1:] if text.startswith(" ") else text)


def test_load_tokenizer_dispatch_and_errors(sp_tok, hf_tok, tmp_path):
    both = tmp_path / "both"
    sp_tok.save(str(both))
    assert isinstance(load_tokenizer(both), Tokenizer)
    hf_tok.save(str(both))
    assert load_tokenizer(both) == hf_tok  # tokenizer.json wins, as in transformers
    assert load_tokenizer(both / MODEL_FILENAME) == sp_tok
    empty = tmp_path / "empty"
    empty.mkdir()
    for missing in (empty, empty / "nothing.model", both / HF_CONFIG_FILENAME):
        with pytest.raises(FileNotFoundError, match="tokenizer.json or tokenizer.model"):
            load_tokenizer(missing)


def test_hf_encode_matches_transformers(hf_tok, hf_dir):
    from transformers import PreTrainedTokenizerFast
    reference = PreTrainedTokenizerFast(tokenizer_file=os.path.join(hf_dir, HF_TOKENIZER_FILENAME))
    for text in TEXTS + ["  Q:  5 -  3 =\t2\n\n\n", "x" * 50, EOT + "after special"]:
        ids = hf_tok.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False)
        assert hf_tok.decode(ids) == reference.decode(ids)


def test_chat_prompts_tokenize_as_transformers_does(hf_tok, hf_dir, sp_tok, tmp_path):
    """MathTask(chat=True): the few-shot prompt as chat turns, ids as transformers
    makes them; the plain prompt is BOS + its text; sentencepiece has no template."""
    from transformers import PreTrainedTokenizerFast
    from ttc_jax.tasks import MathTask
    rows = [{"problem": f"What is {i}+{i}?", "solution": f"Add.\n$\\boxed{{{2 * i}}}$",
             "answer": str(2 * i), "subject": "Algebra", "level": 1,
             "unique_id": f"test/a/{i}.json"} for i in range(4)]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat = MathTask(data_path=str(path), num_shots=2, chat=True)
    problem = chat.test_problems()[0]
    messages = chat.chat_messages(problem)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant",
                                             "user"]
    assert messages[-1]["content"] == f"Problem: {problem.question}"
    assert problem.solution not in [m["content"] for m in messages]
    reference = PreTrainedTokenizerFast.from_pretrained(hf_dir).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert chat.prompt_ids(hf_tok, problem) == list(reference)
    plain = MathTask(data_path=str(path), num_shots=2)
    assert plain.prompt_ids(hf_tok, problem) == [hf_tok.bos_id] + hf_tok.encode(
        plain.prompt(problem))
    with pytest.raises(ValueError, match="chat_template"):
        chat.prompt_ids(sp_tok, problem)


def test_hf_chat_template_matches_transformers(hf_tok, hf_dir):
    from transformers import PreTrainedTokenizerFast
    reference = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    messages = [{"role": "system", "content": "Solve it. "},
                {"role": "user", "content": "Q: 12+34="}]
    for add in (False, True):
        ours = hf_tok.apply_chat_template(messages, add_generation_prompt=add)
        assert ours == reference.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=add)
    assert ours.startswith(BOS) and ours.endswith("assistant<|end_header_id|>\n\n")
    no_template = HFTokenizer(hf_tok.files()[HF_TOKENIZER_FILENAME], {"eos_token": EOS})
    with pytest.raises(ValueError, match="no chat_template"):
        no_template.apply_chat_template(messages)


def test_run_dir_records_embed_and_reload_both_kinds(sp_tok, hf_tok, tmp_path):
    from ttc_jax import checkpoints as ckpt_lib
    from ttc_jax.verifier.checkpoint import _tokenizer as verifier_run_tokenizer
    sp_rec = ckpt_lib.tokenizer_record(sp_tok)
    assert sp_rec["file"] == MODEL_FILENAME and "model_b64" in sp_rec  # unchanged format
    hf_rec = ckpt_lib.tokenizer_record(hf_tok)
    assert hf_rec["file"] == HF_TOKENIZER_FILENAME and set(hf_rec["files_b64"]) == {
        HF_TOKENIZER_FILENAME, HF_CONFIG_FILENAME}
    json.dumps(hf_rec)  # goes into a JSON sidecar
    for tok, rec in ((sp_tok, sp_rec), (hf_tok, hf_rec)):
        assert ckpt_lib.tokenizer_from_record(rec) == tok
        run = tmp_path / rec["file"]
        tok.save(str(run))
        assert verifier_run_tokenizer(str(run), rec) == tok  # from the run dir's file
        assert verifier_run_tokenizer(str(tmp_path / "nowhere"), rec) == tok  # embedded copy


def test_training_run_dir_keeps_a_given_hf_tokenizer(hf_tok, tmp_path):
    from ttc_jax import checkpoints as ckpt_lib
    from ttc_jax.train.loop import _load_or_build_tokenizer
    out = str(tmp_path / "policy_run")
    # A fine-tuning run given the tokenizer writes it; a resume reads it back
    # from the file its record names (no preset needed: nothing is rebuilt).
    assert _load_or_build_tokenizer(None, out, None, None, given=hf_tok) == hf_tok
    rec = ckpt_lib.tokenizer_record(hf_tok)
    del rec["files_b64"]  # as for a real tokenizer.json (too large to embed)
    assert _load_or_build_tokenizer(None, out, rec, None) == hf_tok
    assert sorted(os.listdir(out)) == [HF_TOKENIZER_FILENAME, HF_CONFIG_FILENAME]


def test_step_end_ids_are_every_token_holding_a_newline(hf_tok, sp_tok):
    for tok in (hf_tok, sp_tok):
        ends = step_end_ids(tok)
        assert tok.newline_id in ends
        want = [i for i in range(tok.vocab_size) if "\n" in tok.decode([i])]
        assert set(want) <= set(ends) and len(ends) <= len(want) + 1



def test_step_end_ids_include_fused_newlines(tmp_path):
    """Like Llama-3's ".\n" and "\n\n": tokens that end a step without a lone newline."""
    from tests.hf_utils import llama3_style_bpe
    fast = llama3_style_bpe(["Add 2.\n\nThen 3.\n\nSo 5.\n"] * 50, [BOS, EOS])
    fast.save(str(tmp_path / HF_TOKENIZER_FILENAME))
    (tmp_path / HF_CONFIG_FILENAME).write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    tok = load_tokenizer(str(tmp_path))
    fused = {tok.decode([i]) for i in step_end_ids(tok)} - {"\n"}
    assert {".\n\n", ".\n"} <= fused
    ids = tok.encode("Add 2.\n\nThen 3.\n")
    assert tok.newline_id not in ids  # no lone newline anywhere: fused tokens end the steps
    assert sum(i in step_end_ids(tok) for i in ids) == 2
