"""HF PRM import (ttc_jax.verifier.hf_prm): per-step scores equal torch on tiny random checkpoints.

Formats: "good_token" (Llama/Qwen2/MistralForCausalLM, Math-Shepherd style),
"class_softmax" (Llama/Qwen2/MistralForTokenClassification with a linear score
head, and a hand-made Qwen2.5-Math-PRM layout: Linear, ReLU, Linear) and
"chat_good_token" (RLHFlow: a Llama read inside a chat template written here).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests.hf_utils import (byte_level_bpe, hf_logits, make_hf_config,  # noqa: E402
                            make_tiny_hf_model, perturb_weights, random_tokens)
from ttc_jax import hf  # noqa: E402
from ttc_jax.model import forward  # noqa: E402
from ttc_jax.tokenizer import HFTokenizer, load_tokenizer  # noqa: E402
from ttc_jax.verifier import VerifierConfig, init_head  # noqa: E402
from ttc_jax.verifier.hf_prm import (TaggedRows, chat_rows, load_hf_prm,  # noqa: E402
                                     score_solutions, tag_rows)

VOCAB = 64
D = 32
TAG, GOOD, BAD = 5, 7, 9
TINY = dict(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
TOL = 1e-5
WINDOW = 24  # the tiny Mistral's sliding window: longer than every `_rows` row (<= 16 tokens)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """One torch thread for these tiny models (see tests/test_hf.py)."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


# ---------------------------------------------------------------- checkpoints

def _token_classifier(arch: str, path, seed: int, **config_kwargs):
  from transformers import (LlamaForTokenClassification, MistralForTokenClassification,
                            Qwen2ForTokenClassification)
  config = make_hf_config(arch, **TINY, **config_kwargs)
  torch.manual_seed(seed)
  cls = {"llama": LlamaForTokenClassification, "qwen2": Qwen2ForTokenClassification,
         "mistral": MistralForTokenClassification}[arch]
  model = cls(config).to(torch.float32).eval()
  perturb_weights(model, seed)
  model.save_pretrained(os.fspath(path))
  return model


class _QwenMathPRM(torch.nn.Module):
  """The Qwen2.5-Math-PRM layout: Qwen2Model + score = Linear(D, D), ReLU, Linear(D, 2)."""

  def __init__(self, config):
    super().__init__()
    from transformers import Qwen2Model
    self.model = Qwen2Model(config)
    d = config.hidden_size
    self.score = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(),
                                     torch.nn.Linear(d, 2))

  def forward(self, input_ids, attention_mask):
    hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return self.score(hidden)


def _qwen_math_prm(path, seed: int):
  from safetensors.torch import save_file
  config = make_hf_config("qwen2", **TINY)
  torch.manual_seed(seed)
  model = _QwenMathPRM(config).to(torch.float32).eval()
  perturb_weights(model, seed)  # also the score head (biases N(0, 0.25))
  os.makedirs(path, exist_ok=True)
  tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
  assert {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"} <= set(tensors)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  config.architectures = ["Qwen2ForProcessRewardModel"]
  config.save_pretrained(os.fspath(path))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """kind -> (torch model, directory), built once per module."""
  built = {}

  def get(kind):
    if kind not in built:
      path = tmp_path_factory.mktemp(kind)
      seed = 10 + len(built)
      if kind in ("llama_lm", "qwen2_lm"):
        model = make_tiny_hf_model(kind.split("_")[0], path, seed=seed, **TINY)
      elif kind == "mistral_lm":
        model = make_tiny_hf_model("mistral", path, seed=seed, sliding_window=WINDOW, **TINY)
      elif kind == "llama_tokcls":
        model = _token_classifier("llama", path, seed, num_labels=3)
      elif kind == "qwen2_tokcls":  # no score bias
        model = _token_classifier("qwen2", path, seed, num_labels=2,
                                  token_classification_bias=False)
      elif kind == "mistral_tokcls":
        model = _token_classifier("mistral", path, seed, num_labels=2)
      else:
        assert kind == "qwen_math_prm"
        model = _qwen_math_prm(path, seed)
      built[kind] = model, str(path)
    return built[kind]

  return get


# ---------------------------------------------------------------- rows and torch references

def _rows(seed: int = 0, width: int | None = None) -> TaggedRows:
  """Four solutions of 0-4 steps with prompts of different lengths (one prompt holds the tag)."""
  rng = np.random.default_rng(seed)
  words = np.array([t for t in range(1, VOCAB) if t != TAG])
  prompts = [list(rng.choice(words, n)) for n in (3, 6, 2, 4)]
  prompts[1][2] = TAG  # a tag in the prompt is not a step
  steps = [[list(rng.choice(words, rng.integers(1, 6))) for _ in range(k)] for k in (3, 1, 4, 0)]
  return tag_rows(prompts, steps, TAG, width=width)


@torch.no_grad()
def _torch_out(model, rows: TaggedRows) -> np.ndarray:
  """Logits [B, T, X] of the padded batch (attention mask on the real tokens)."""
  ids = torch.as_tensor(rows.tokens, dtype=torch.long)
  mask = torch.as_tensor(np.arange(ids.shape[1])[None] < rows.lengths[:, None], dtype=torch.long)
  out = model(input_ids=ids, attention_mask=mask)
  return (out if isinstance(out, torch.Tensor) else out.logits).float().numpy()


def _at_tags(rows: TaggedRows, values: np.ndarray) -> list[np.ndarray]:
  out = []
  for i in range(len(rows.tokens)):
    pos = np.arange(rows.tokens.shape[1])
    where = (rows.tokens[i] == TAG) & (pos >= rows.prompt_lengths[i]) & (pos < rows.lengths[i])
    out.append(values[i][where])
  return out


def _torch_good_token(model, rows):
  """Math-Shepherd's recipe: softmax over the [good, bad] logits, probability of good."""
  logits = torch.as_tensor(_torch_out(model, rows)[..., [GOOD, BAD]])
  return _at_tags(rows, torch.softmax(logits, dim=-1)[..., 0].numpy())


def _torch_class_softmax(model, rows, positive):
  logits = torch.as_tensor(_torch_out(model, rows))
  return _at_tags(rows, torch.softmax(logits, dim=-1)[..., positive].numpy())


def _assert_steps_close(got, want, num_steps):
  assert [len(g) for g in got] == list(num_steps)
  for i, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, w, rtol=0, atol=TOL, err_msg=f"row {i}")


# ---------------------------------------------------------------- parity


def test_tag_rows_layout():
  rows = tag_rows([[1, 2], []], [[[3], [4, 6]], [[8]]], TAG, pad_id=0, width=8)
  np.testing.assert_array_equal(rows.tokens, [[1, 2, 3, TAG, 4, 6, TAG, 0],
                                              [8, TAG, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(rows.prompt_lengths, [2, 0])
  np.testing.assert_array_equal(rows.lengths, [7, 2])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_good_token_matches_torch(checkpoints, arch):
  model, path = checkpoints(f"{arch}_lm")
  vcfg, params = load_hf_prm(path, "good_token", step_tag_id=TAG, good_token_id=GOOD,
                             bad_token_id=BAD)
  assert (vcfg.head, vcfg.step_token_id, vcfg.good_token_id, vcfg.bad_token_id) == (
      "good_token", TAG, GOOD, BAD)
  assert load_hf_prm(path, step_tag_id=TAG, good_token_id=GOOD, bad_token_id=BAD)[0] == vcfg
  rows = _rows(seed=1)
  want = _torch_good_token(model, rows)
  assert np.ptp(np.concatenate(want)) > 0.1  # informative scores
  got = score_solutions(vcfg, params, rows)
  _assert_steps_close(got, want, (3, 1, 4, 0))
  # Batches of 3 (the last one padded with empty rows) give the same scores.
  _assert_steps_close(score_solutions(vcfg, params, rows, batch_size=3), want, (3, 1, 4, 0))


def test_mistral_sliding_window_caps_the_context(checkpoints):
  """Up to WINDOW tokens Mistral's sliding window hides nothing, so the import caps
  max_seq_len there instead of implementing it: torch equals full attention before
  position WINDOW and not after, and score_solutions refuses longer rows."""
  model, path = checkpoints("mistral_lm")
  vcfg, params = load_hf_prm(path, "good_token", step_tag_id=TAG, good_token_id=GOOD,
                             bad_token_id=BAD)
  assert vcfg.model.max_seq_len == WINDOW and not vcfg.model.qkv_bias
  tokens = random_tokens(1, WINDOW + 8, VOCAB, seed=4)
  want = hf_logits(model, tokens)[0]
  got = np.asarray(jax.jit(forward, static_argnums=0)(vcfg.model, params["lm"], tokens)[0][0])
  np.testing.assert_allclose(got[:WINDOW], want[:WINDOW], rtol=0, atol=1e-4)
  assert np.abs(got[WINDOW:] - want[WINDOW:]).max() > 1e-2  # the window is real
  fits = tag_rows([[1] * (WINDOW - 2)], [[[2]]], TAG)  # WINDOW tokens
  assert [len(x) for x in score_solutions(vcfg, params, fits)] == [1]
  with pytest.raises(ValueError, match=f"row 0 has {WINDOW + 1} tokens, more than the "
                                       f"verifier's max_seq_len {WINDOW}"):
    score_solutions(vcfg, params, tag_rows([[1] * (WINDOW - 1)], [[[2]]], TAG))


@pytest.mark.parametrize("kind,classes,positive,hidden", [
    ("llama_tokcls", 3, 1, 0),
    ("llama_tokcls", 3, 2, 0),
    ("qwen2_tokcls", 2, 1, 0),
    ("mistral_tokcls", 2, 0, 0),
    ("qwen_math_prm", 2, 1, D),
])
def test_class_softmax_matches_torch(checkpoints, kind, classes, positive, hidden):
  model, path = checkpoints(kind)
  vcfg, params = load_hf_prm(path, "class_softmax", step_tag_id=TAG, positive_class=positive)
  assert (vcfg.head, vcfg.num_classes, vcfg.positive_class, vcfg.class_hidden) == (
      "class_softmax", classes, positive, hidden)
  assert vcfg.model.qkv_bias == kind.startswith("qwen")
  assert load_hf_prm(path, step_tag_id=TAG, positive_class=positive)[0] == vcfg  # auto
  rows = _rows(seed=2, width=40)
  want = _torch_class_softmax(model, rows, positive)
  assert np.ptp(np.concatenate(want)) > 0.05
  _assert_steps_close(score_solutions(vcfg, params, rows), want, (3, 1, 4, 0))


def test_qwen_math_prm_head_layout(checkpoints):
  """Head params are the torch weights transposed; the missing bias of a linear head is 0."""
  model, path = checkpoints("qwen_math_prm")
  _, params = load_hf_prm(path, "class_softmax", step_tag_id=TAG)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  np.testing.assert_array_equal(params["head"]["w_hidden"], sd["score.0.weight"].T)
  np.testing.assert_array_equal(params["head"]["b_hidden"], sd["score.0.bias"])
  np.testing.assert_array_equal(params["head"]["w"], sd["score.2.weight"].T)
  np.testing.assert_array_equal(params["head"]["b"], sd["score.2.bias"])
  _, qparams = load_hf_prm(checkpoints("qwen2_tokcls")[1], "class_softmax", step_tag_id=TAG)
  np.testing.assert_array_equal(qparams["head"]["b"], np.zeros(2, np.float32))


def test_bfloat16_backbone(checkpoints):
  model, path = checkpoints("qwen_math_prm")
  vcfg, params = load_hf_prm(path, "class_softmax", step_tag_id=TAG, dtype="bfloat16")
  assert vcfg.model.dtype == "bfloat16" and params["lm"]["embed"].dtype == jnp.bfloat16
  assert params["head"]["w"].dtype == jnp.float32
  rows = _rows(seed=3)
  got = np.concatenate(score_solutions(vcfg, params, rows))
  want = np.concatenate(_torch_class_softmax(model, rows, 1))
  assert np.abs(got - want).max() < 0.1


# ---------------------------------------------------------------- chat format (RLHFlow)

BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
HEADER = ("<|start_header_id|>", "<|end_header_id|>")
CHAT_TEMPLATE = (  # Llama-3's turns, without its system header
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
QUESTION = "What is 3 + 4 * 2?"
SOLUTIONS = [["First 4 * 2 = 8.", "Then 3 + 8 = 11.", "The answer is 11."],
             ["3 + 4 = 7.", "7 * 2 = 14.\n", "The answer is 14."],
             [],
             ["The answer is 11."]]


@pytest.fixture(scope="module")
def chat_prm(tmp_path_factory):
  """(torch Llama, transformers tokenizer, our HFTokenizer, directory): a tiny Llama
  whose folder holds a byte-level BPE tokenizer with a Llama-3-style chat template."""
  from transformers import PreTrainedTokenizerFast
  path = tmp_path_factory.mktemp("chat_prm")
  corpus = [QUESTION + " " + "\n".join(steps) for steps in SOLUTIONS] * 4
  fast = byte_level_bpe(corpus, [BOS, EOS, EOT, *HEADER])
  fast.save(str(path / "tokenizer.json"))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": BOS, "eos_token": EOS, "chat_template": CHAT_TEMPLATE,
       "tokenizer_class": "PreTrainedTokenizerFast"}))
  tok = load_tokenizer(path)
  model = make_tiny_hf_model("llama", path, seed=20, **{**TINY, "vocab_size": tok.vocab_size})
  return model, PreTrainedTokenizerFast.from_pretrained(str(path)), tok, str(path)


@torch.no_grad()
def _torch_chat_scores(model, reference, question, steps) -> np.ndarray:
  """RLHFlow's recipe: per step, one pass over the chat up to its "+" answer (earlier
  answers "+" too), softmax over the ["+", "-"] logits at position -3."""
  plus, minus = reference.encode("+")[-1], reference.encode("-")[-1]
  conversation, scores = [], []
  for k, step in enumerate(steps):
    conversation.append({"role": "user", "content": question + " " + step if k == 0 else step})
    conversation.append({"role": "assistant", "content": "+"})
    text = reference.apply_chat_template(conversation, tokenize=False)
    ids = torch.as_tensor([reference.encode(text, add_special_tokens=False)])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -3, [plus, minus]]
    scores.append(logits.softmax(dim=-1)[0, 0].item())
  return np.asarray(scores, np.float32)


def test_chat_good_token_matches_torch(chat_prm):
  model, reference, tok, path = chat_prm
  plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
  assert (plus, minus) == (reference.encode("+")[-1], reference.encode("-")[-1])
  vcfg, params = load_hf_prm(path, "chat_good_token", good_token_id=plus, bad_token_id=minus)
  assert (vcfg.head, vcfg.good_token_id, vcfg.bad_token_id) == ("good_token", plus, minus)
  rows = chat_rows(tok, [QUESTION] * len(SOLUTIONS), SOLUTIONS, plus)
  assert not rows.prompt_lengths.any() and rows.lengths[2] == 0  # no steps: an empty row
  # Each read is followed by the "+" answer, which the row holds after every step.
  for i, steps in enumerate(SOLUTIONS):
    at = np.flatnonzero(rows.reads[i])
    assert len(at) == len(steps) and np.all(rows.tokens[i, at + 1] == plus)
  want = [_torch_chat_scores(model, reference, QUESTION, steps) for steps in SOLUTIONS]
  assert np.ptp(np.concatenate(want)) > 0.05
  _assert_steps_close(score_solutions(vcfg, params, rows), want, (3, 3, 0, 1))
  _assert_steps_close(score_solutions(vcfg, params, rows, batch_size=3), want, (3, 3, 0, 1))


def test_chat_rows_checks(chat_prm):
  _, _, tok, _ = chat_prm
  plus, minus = tok.encode("+")[-1], tok.encode("-")[-1]
  with pytest.raises(ValueError, match="assistant answer '\\+' after step 0 of solution 0 does "
                                       f"not start with good_token_id {minus}"):
    chat_rows(tok, [QUESTION], [["a step"]], minus)
  with pytest.raises(ValueError, match="step 1 of solution 0 is empty"):
    chat_rows(tok, [QUESTION], [["a step", " \n"]], plus)
  with pytest.raises(ValueError, match="1 questions but 2 solutions"):
    chat_rows(tok, [QUESTION], [["a"], ["b"]], plus)
  # A template that numbers the turns renders a prefix differently inside the whole chat.
  counting = HFTokenizer(tok.files()["tokenizer.json"], {
      "bos_token": BOS, "eos_token": EOS,
      "chat_template": "{{ messages | length }}" + CHAT_TEMPLATE})
  with pytest.raises(ValueError, match="renders solution 0 up to step 0's user turn differently"):
    chat_rows(counting, [QUESTION], [["a step"]], plus)
  rows = chat_rows(tok, [QUESTION], [["a step"]], plus, width=64)
  reads = rows.reads.copy()
  reads[0, -1] = True  # a padding position
  with pytest.raises(ValueError, match="reads must be bool"):
    score_solutions(load_hf_prm(chat_prm[3], "chat_good_token", good_token_id=plus,
                                bad_token_id=minus)[0], {}, rows._replace(reads=reads))


def test_chat_format_is_refused_in_search():
  from experiments import run_search
  opts = run_search.Options(policy="policy", out_dir="out", policy_hf=True, dataset="math500",
                            prm_hf=run_search.HfPrm("prm", "chat_good_token"))
  with pytest.raises(ValueError, match="chat_good_token cannot run in search"):
    run_search.check_sources(opts)


# ---------------------------------------------------------------- errors


def test_wrong_format_for_checkpoint(checkpoints):
  _, lm_path = checkpoints("llama_lm")
  with pytest.raises(ValueError, match="'class_softmax' needs a classification head.*causal LM"):
    load_hf_prm(lm_path, "class_softmax", step_tag_id=TAG)
  _, cls_path = checkpoints("qwen_math_prm")
  with pytest.raises(ValueError, match="'good_token' reads LM logits.*Qwen2ForProcessRewardModel"):
    load_hf_prm(cls_path, "good_token", step_tag_id=TAG, good_token_id=GOOD, bad_token_id=BAD)
  with pytest.raises(ValueError, match="good_token_id / bad_token_id apply to format"):
    load_hf_prm(cls_path, step_tag_id=TAG, good_token_id=GOOD, bad_token_id=BAD)
  with pytest.raises(ValueError, match="needs good_token_id and bad_token_id"):
    load_hf_prm(lm_path, "good_token", step_tag_id=TAG, good_token_id=GOOD)
  with pytest.raises(ValueError, match="PRM format must be one of"):
    load_hf_prm(lm_path, "value", step_tag_id=TAG)
  with pytest.raises(ValueError, match="'chat_good_token' reads LM logits"):
    load_hf_prm(cls_path, "chat_good_token", good_token_id=GOOD, bad_token_id=BAD)
  with pytest.raises(ValueError, match="leave step_tag_id out"):
    load_hf_prm(lm_path, "chat_good_token", step_tag_id=TAG, good_token_id=GOOD,
                bad_token_id=BAD)
  with pytest.raises(ValueError, match="format 'good_token' needs step_tag_id"):
    load_hf_prm(lm_path, "good_token", good_token_id=GOOD, bad_token_id=BAD)
  # The plain loaders point at each other.
  with pytest.raises(ValueError, match="supported: LlamaForCausalLM.*load_backbone"):
    hf.load_checkpoint(cls_path)
  with pytest.raises(ValueError, match="causal LM.*load_checkpoint"):
    hf.load_backbone(lm_path)


@pytest.mark.parametrize("ids,match", [
    (dict(step_tag_id=VOCAB), rf"step_tag_id {VOCAB} is outside the checkpoint's vocabulary "
                              rf"\[0, {VOCAB}\)"),
    (dict(step_tag_id=-1), "step_tag_id -1 is outside"),
    (dict(step_tag_id=TAG, good_token_id=VOCAB + 3), f"good_token_id {VOCAB + 3} is outside"),
    (dict(step_tag_id=TAG, good_token_id=GOOD, bad_token_id=GOOD), "must differ"),
])
def test_token_ids_checked(checkpoints, ids, match):
  _, path = checkpoints("qwen2_lm")
  kwargs = {"good_token_id": GOOD, "bad_token_id": BAD, **ids}
  with pytest.raises(ValueError, match=match):
    load_hf_prm(path, "good_token", **kwargs)


def test_class_head_checks(checkpoints):
  _, path = checkpoints("qwen_math_prm")
  with pytest.raises(ValueError, match=rf"step_tag_id {VOCAB} is outside"):
    load_hf_prm(path, "class_softmax", step_tag_id=VOCAB)
  with pytest.raises(ValueError, match=r"positive_class 2 outside the head's classes \[0, 2\)"):
    load_hf_prm(path, "class_softmax", step_tag_id=TAG, positive_class=2)
  with pytest.raises(TypeError, match="int token id"):
    load_hf_prm(path, "class_softmax", step_tag_id="<extra_0>")


def test_unknown_score_head(checkpoints, tmp_path):
  from safetensors.numpy import load_file, save_file
  import shutil
  _, src = checkpoints("qwen_math_prm")
  shutil.copytree(src, tmp_path / "ckpt")
  file = tmp_path / "ckpt" / "model.safetensors"
  tensors = load_file(str(file))
  tensors["score.4.weight"] = np.zeros((2, 2), np.float32)
  save_file(tensors, str(file), metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"score head tensor\(s\).*score\.4\.weight"):
    load_hf_prm(tmp_path / "ckpt", "class_softmax", step_tag_id=TAG)


def test_row_checks(checkpoints):
  with pytest.raises(ValueError, match="already contains the step tag"):
    tag_rows([[1]], [[[2, TAG]]], TAG)
  with pytest.raises(ValueError, match="step 1 of solution 0 is empty"):
    tag_rows([[1]], [[[2], []]], TAG)
  with pytest.raises(ValueError, match="width 3 is shorter"):
    tag_rows([[1, 2]], [[[2, 3]]], TAG, width=3)
  vcfg, params = load_hf_prm(checkpoints("llama_lm")[1], step_tag_id=TAG, good_token_id=GOOD,
                             bad_token_id=BAD)
  rows = tag_rows([[1, VOCAB + 1]], [[[2]]], TAG)
  with pytest.raises(ValueError, match=f"token id {VOCAB + 1} is outside the verifier's"):
    score_solutions(vcfg, params, rows)
  assert score_solutions(vcfg, params, tag_rows([], [], TAG)) == []


# ---------------------------------------------------------------- VerifierConfig.class_hidden


def test_class_hidden_config():
  from tests.conftest import tiny_config
  cfg = tiny_config()
  vcfg = VerifierConfig(model=cfg, head="class_softmax", class_hidden=16, num_classes=3)
  assert VerifierConfig.from_dict(json.loads(json.dumps(vcfg.to_dict()))) == vcfg
  old = VerifierConfig(model=cfg, head="class_softmax").to_dict()
  del old["class_hidden"]  # a config written before the field existed
  assert VerifierConfig.from_dict(old).class_hidden == 0
  head = init_head(vcfg, jax.random.key(0))
  assert {k: v.shape for k, v in head.items()} == {
      "w": (16, 3), "b": (3,), "w_hidden": (cfg.d_model, 16), "b_hidden": (16,)}
  assert vcfg.num_params() == cfg.num_params() + cfg.d_model * 16 + 16 + 16 * 3 + 3
  # A linear head draws as before the field existed: w ~ N(0, 1/D), b = 0.
  linear = init_head(VerifierConfig(model=cfg, head="class_softmax", num_classes=3),
                     jax.random.key(0))
  _, sub = jax.random.split(jax.random.key(0))
  np.testing.assert_array_equal(
      linear["w"], jax.random.normal(sub, (cfg.d_model, 3), jnp.float32) / np.sqrt(cfg.d_model))
  np.testing.assert_array_equal(linear["b"], np.zeros(3, np.float32))
  with pytest.raises(ValueError, match="class_hidden applies to head 'class_softmax' only"):
    VerifierConfig(model=cfg, head="value", class_hidden=4)
  with pytest.raises(ValueError, match="class_hidden must be >= 0"):
    VerifierConfig(model=cfg, head="class_softmax", class_hidden=-1)
