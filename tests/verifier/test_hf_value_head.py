"""HF value-head PRMs (ttc_jax.verifier.hf_prm format "value_head"): step scores equal torch.

Checkpoints are tiny random `transformers` Llama / Qwen2 causal LMs saved with
a value head added to their safetensors, as TRL's AutoModelForCausalLMWithValueHead
writes them (`v_head.summary.weight` [1, D], `.bias` [1] beside the LM's
tensors, config.json the causal LM's), under either name prefix, and in
Skywork-o1-Open-PRM's layout (config architecture "Qwen2ForPrmModel", no
lm_head). The reference is TRL's forward: the LM's last hidden state (after
the final norm), the linear, sigmoid at the step tags.
"""

from __future__ import annotations

import json
import os
import shutil
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests.hf_utils import make_tiny_hf_model  # noqa: E402
from ttc_jax.verifier import step_scores  # noqa: E402
from ttc_jax.verifier.hf_prm import (TaggedRows, load_hf_prm, resolve_format,  # noqa: E402
                                     score_solutions, tag_rows)
from ttc_jax.verifier.model import extend, start  # noqa: E402

VOCAB = 64
D = 32
TAG, NEWLINE = 5, 11
TINY = dict(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64)
TOL = 1e-5
NUM_STEPS = (3, 1, 4, 0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """One torch thread for these tiny models (see tests/test_hf.py)."""
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


# ---------------------------------------------------------------- checkpoints

def _edit_safetensors(path, edit) -> None:
  """Rewrites path/model.safetensors with edit(tensors dict) applied in place."""
  from safetensors.numpy import load_file, save_file
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  edit(tensors)
  save_file(tensors, file, metadata={"format": "pt"})


def _set_architecture(path, arch: str) -> None:
  file = os.path.join(path, "config.json")
  with open(file) as fh:
    config = json.load(fh)
  config["architectures"] = [arch]
  with open(file, "w") as fh:
    json.dump(config, fh)


def _value_head_checkpoint(arch: str, path, seed: int, prefix: str, skywork: bool):
  """(torch causal LM, value head weight [1, D], bias [1]) saved to `path`.

  The head is random with logits of O(1) (w ~ N(0, 4/D), b ~ N(0, 0.25)), so
  the sigmoids spread and a wrong read cannot hide."""
  model = make_tiny_hf_model(arch, path, seed=seed, **TINY)
  rng = np.random.default_rng(seed)
  weight = (2.0 * rng.standard_normal((1, D)) / np.sqrt(D)).astype(np.float32)
  bias = (0.5 * rng.standard_normal(1)).astype(np.float32)

  def add_head(tensors):
    tensors[prefix + "summary.weight"] = weight
    tensors[prefix + "summary.bias"] = bias
    if skywork:  # Skywork's 1.5B ties its embeddings: no lm_head in the folder
      tensors.pop("lm_head.weight", None)

  _edit_safetensors(path, add_head)
  if skywork:
    _set_architecture(path, "Qwen2ForPrmModel")
  return model, weight, bias


KINDS = {  # kind -> (arch, prefix, Skywork layout)
    "llama_v_head": ("llama", "v_head.", False),
    "llama_value_head": ("llama", "value_head.", False),
    "qwen2_v_head": ("qwen2", "v_head.", False),
    "qwen2_value_head": ("qwen2", "value_head.", False),
    "skywork": ("qwen2", "v_head.", True),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """kind -> (torch model, head weight, head bias, directory), built once per module."""
  built = {}

  def get(kind):
    if kind not in built:
      path = tmp_path_factory.mktemp(kind)
      if kind == "plain_llama":  # a causal LM without a value head
        built[kind] = make_tiny_hf_model("llama", path, seed=30, **TINY), None, None, str(path)
      else:
        arch, prefix, skywork = KINDS[kind]
        built[kind] = (*_value_head_checkpoint(arch, path, 20 + len(built), prefix, skywork),
                       str(path))
    return built[kind]

  return get


def _copy(src, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


# ---------------------------------------------------------------- rows and the torch reference

def _rows(seed: int = 0, width: int | None = None) -> TaggedRows:
  """Four solutions of 0-4 steps with prompts of different lengths (one prompt holds the tag)."""
  rng = np.random.default_rng(seed)
  words = np.array([t for t in range(1, VOCAB) if t != TAG])
  prompts = [list(rng.choice(words, n)) for n in (3, 6, 2, 4)]
  prompts[1][2] = TAG  # a tag in the prompt is not a step
  steps = [[list(rng.choice(words, rng.integers(1, 6))) for _ in range(k)] for k in NUM_STEPS]
  return tag_rows(prompts, steps, TAG, width=width)


def _solution_tags(rows: TaggedRows) -> np.ndarray:
  """bool [B, T]: the step tags inside each row's solution."""
  pos = np.arange(rows.tokens.shape[1])[None, :]
  solution = (pos >= rows.prompt_lengths[:, None]) & (pos < rows.lengths[:, None])
  return solution & (rows.tokens == TAG)


@torch.no_grad()
def _torch_step_scores(model, weight, bias, rows: TaggedRows) -> list[np.ndarray]:
  """TRL's value head: summary(hidden_states[-1]) (the LM's final-normed hidden
  state), then sigmoid at the step tags (Skywork's step rewards)."""
  ids = torch.as_tensor(rows.tokens, dtype=torch.long)
  mask = torch.as_tensor(np.arange(ids.shape[1])[None] < rows.lengths[:, None], dtype=torch.long)
  hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
  value = torch.nn.functional.linear(hidden.float(), torch.as_tensor(weight),
                                     torch.as_tensor(bias))[..., 0]
  probs = torch.sigmoid(value).numpy()
  tags = _solution_tags(rows)
  return [probs[i][tags[i]] for i in range(len(probs))]


def _assert_steps_close(got, want):
  assert [len(g) for g in got] == list(NUM_STEPS)
  for i, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0, atol=TOL,
                               err_msg=f"row {i}")


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("kind", list(KINDS))
def test_value_head_matches_torch(checkpoints, kind):
  model, weight, bias, path = checkpoints(kind)
  vcfg, params = load_hf_prm(path, "value_head", step_tag_id=TAG)
  assert (vcfg.head, vcfg.step_token_id) == ("value", TAG)
  assert vcfg.model.qkv_bias == (KINDS[kind][0] == "qwen2")
  np.testing.assert_array_equal(params["head"]["w"], weight[0])
  np.testing.assert_array_equal(params["head"]["b"], bias[0])
  assert "lm_head" not in params["lm"]  # the value head never reads the LM head
  rows = _rows(seed=1, width=40)
  want = _torch_step_scores(model, weight, bias, rows)
  assert np.ptp(np.concatenate(want)) > 0.05
  _assert_steps_close(score_solutions(vcfg, params, rows), want)
  _assert_steps_close(score_solutions(vcfg, params, rows, batch_size=3), want)


def test_search_scoring_paths_match_torch(checkpoints):
  """`step_scores` (one pass, as search's final scoring) and `start` + `extend`
  (search's incremental verifier cache) give torch's step scores."""
  model, weight, bias, path = checkpoints("qwen2_v_head")
  vcfg, params = load_hf_prm(path, "value_head", step_tag_id=TAG)
  rows = _rows(seed=2, width=40)
  want = _torch_step_scores(model, weight, bias, rows)

  scores, mask = jax.jit(step_scores, static_argnums=(0, 5))(
      vcfg, params, jnp.asarray(rows.tokens), jnp.asarray(rows.prompt_lengths),
      jnp.asarray(rows.lengths), 8)
  scores, mask = np.asarray(scores), np.asarray(mask)
  for i, w in enumerate(want):
    # step_scores also reads a solution's last token when it is not a tag (an
    # unterminated step): every solution here ends in a tag, so the reads agree.
    assert mask[i].sum() == len(w)
    np.testing.assert_allclose(scores[i, :len(w)], w, rtol=0, atol=TOL, err_msg=f"row {i}")

  width = 16
  plens, lens = rows.prompt_lengths, rows.lengths
  prompts = np.zeros((len(plens), width), np.int32)
  chunk = np.zeros((len(plens), 2 * width), np.int32)
  for i, (p, n) in enumerate(zip(plens, lens)):
    prompts[i, :p] = rows.tokens[i, :p]
    chunk[i, :n - p] = rows.tokens[i, p:n]
  state = start(vcfg, params, jnp.asarray(prompts), jnp.asarray(plens), 3 * width)
  _, prefix = jax.jit(extend, static_argnums=0)(vcfg, params, state, jnp.asarray(chunk),
                                                jnp.asarray(lens - plens))
  prefix = np.asarray(prefix)
  for i, w in enumerate(want):
    at = np.flatnonzero(chunk[i, :lens[i] - plens[i]] == TAG)
    np.testing.assert_allclose(prefix[i, at], w, rtol=0, atol=TOL, err_msg=f"row {i}")


def test_bfloat16_backbone(checkpoints):
  model, weight, bias, path = checkpoints("llama_v_head")
  vcfg, params = load_hf_prm(path, "value_head", step_tag_id=TAG, dtype="bfloat16")
  assert vcfg.model.dtype == "bfloat16" and params["lm"]["embed"].dtype == jnp.bfloat16
  assert params["head"]["w"].dtype == jnp.float32
  rows = _rows(seed=3)
  got = np.concatenate(score_solutions(vcfg, params, rows))
  want = np.concatenate(_torch_step_scores(model, weight, bias, rows))
  assert np.abs(got - want).max() < 0.05


# ---------------------------------------------------------------- "auto" and run_search


def test_auto_format(checkpoints):
  """Skywork's architecture names its value head; a TRL export's config names the
  causal LM, so "auto" reads it as good_token and the format must be given."""
  _, _, _, skywork = checkpoints("skywork")
  assert resolve_format(skywork) == "value_head"
  assert load_hf_prm(skywork, step_tag_id=TAG)[0] == load_hf_prm(
      skywork, "value_head", step_tag_id=TAG)[0]
  _, _, _, trl = checkpoints("llama_v_head")
  assert resolve_format(trl) == "good_token"


def test_run_search_reads_the_value_head_format(checkpoints):
  from experiments import run_search
  _, _, _, path = checkpoints("qwen2_value_head")
  want_cfg, want = load_hf_prm(path, "value_head", step_tag_id=TAG)
  # No tokenizer in the folder: the PRM is taken to share the policy's.
  tokenizer = types.SimpleNamespace(newline_id=NEWLINE, vocab_size=VOCAB,
                                    encode=lambda text: {"<tag>": [TAG]}[text])
  spec = run_search.HfPrm(path, "value_head", "<tag>")
  vcfg, params = run_search.load_hf_prm_spec(spec, want_cfg.model, tokenizer)
  assert vcfg == want_cfg.replace(delimiter_ids=(NEWLINE,))  # the tag read in the newline's place
  np.testing.assert_array_equal(params["head"]["w"], want["head"]["w"])
  # The policy's newline as the tag (no --prm_step_tag), Skywork's own convention.
  vcfg, _ = run_search.load_hf_prm_spec(run_search.HfPrm(path, "value_head"), want_cfg.model,
                                        tokenizer)
  assert (vcfg.head, vcfg.step_token_id, vcfg.delimiter_ids) == ("value", NEWLINE, ())


def test_prm_format_flag_lists_every_format():
  """--prm_format's choices are hf_prm's formats (flags defined in a fresh process:
  run_search's flags are global)."""
  import subprocess
  import sys
  from ttc_jax.verifier.hf_prm import FORMATS
  code = ("from experiments import run_search; f = run_search._define_flags(); "
          "f(['run_search', '--policy=p', '--prm_format=value_head', '--out_dir=x']); "
          "print(f.prm_format, *f['prm_format'].parser.enum_values)")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr
  chosen, *choices = out.stdout.split()
  assert chosen == "value_head" and sorted(choices) == sorted(FORMATS)


# ---------------------------------------------------------------- errors


def test_causal_lm_without_value_head(checkpoints):
  _, _, _, path = checkpoints("plain_llama")
  with pytest.raises(ValueError, match=r"has no value head tensors: format 'value_head' expects "
                                       r"'v_head\.summary\.weight' \[1, 32\] \(\+ "
                                       r"'v_head\.summary\.bias' \[1\]\) or "
                                       r"'value_head\.summary\.weight'"):
    load_hf_prm(path, "value_head", step_tag_id=TAG)


@pytest.mark.parametrize("edit,match", [
    (lambda t: t.update({"value_head.summary.weight": t["v_head.summary.weight"]}),
     r"tensors under both \['v_head\.', 'value_head\.'\]"),
    (lambda t: t.update({"v_head.summary.weight": np.zeros((2, D), np.float32),
                         "v_head.summary.bias": np.zeros(2, np.float32)}),
     r"shapes v_head\.summary\.weight \(2, 32\), v_head\.summary\.bias \(2,\); expected "
     r"\(1, 32\) and \(1,\): one output"),
    (lambda t: t.update({"v_head.extra.weight": np.zeros((1, D), np.float32)}),
     r"value head tensor\(s\) \['v_head\.extra\.weight', 'v_head\.summary\.bias', "
     r"'v_head\.summary\.weight'\]"),
    (lambda t: t.pop("v_head.summary.weight"),
     r"value head tensor\(s\) \['v_head\.summary\.bias'\]; expected"),
])
def test_malformed_value_head(checkpoints, tmp_path, edit, match):
  _, _, _, src = checkpoints("llama_v_head")
  path = _copy(src, tmp_path / "ckpt")
  _edit_safetensors(path, edit)
  with pytest.raises(ValueError, match=match):
    load_hf_prm(path, "value_head", step_tag_id=TAG)


def test_missing_bias_is_zero(checkpoints, tmp_path):
  _, weight, _, src = checkpoints("llama_v_head")
  path = _copy(src, tmp_path / "ckpt")
  _edit_safetensors(path, lambda t: t.pop("v_head.summary.bias"))
  _, params = load_hf_prm(path, "value_head", step_tag_id=TAG)
  np.testing.assert_array_equal(params["head"]["w"], weight[0])
  assert params["head"]["b"].shape == () and float(params["head"]["b"]) == 0.0


def test_wrong_format_or_arguments(checkpoints, tmp_path):
  _, _, _, skywork = checkpoints("skywork")
  with pytest.raises(ValueError, match="'good_token' reads LM logits.*Qwen2ForPrmModel.*"
                                       "use fmt='value_head'"):
    load_hf_prm(skywork, "good_token", step_tag_id=TAG, good_token_id=1, bad_token_id=2)
  with pytest.raises(ValueError, match="'class_softmax' does not read a Qwen2ForPrmModel's "
                                       "head: use fmt='value_head'"):
    load_hf_prm(skywork, "class_softmax", step_tag_id=TAG)
  with pytest.raises(ValueError, match="good_token_id / bad_token_id apply to format "
                                       "'good_token' only.*read as 'value_head'"):
    load_hf_prm(skywork, "value_head", step_tag_id=TAG, good_token_id=1, bad_token_id=2)
  with pytest.raises(ValueError, match="format 'value_head' needs step_tag_id"):
    load_hf_prm(skywork, "value_head")
  with pytest.raises(ValueError, match=f"step_tag_id {VOCAB} is outside"):
    load_hf_prm(skywork, "value_head", step_tag_id=VOCAB)
  # A token classifier's folder (only its config is read before the refusal).
  classifier = _copy(skywork, tmp_path / "classifier")
  _set_architecture(classifier, "Qwen2ForTokenClassification")
  with pytest.raises(ValueError, match="'value_head' does not read a "
                                       "Qwen2ForTokenClassification's head: use "
                                       "fmt='class_softmax'"):
    load_hf_prm(classifier, "value_head", step_tag_id=TAG)
  _, _, _, trl = checkpoints("llama_v_head")
  with pytest.raises(ValueError, match="'class_softmax' needs a classification head.*"
                                       "fmt='value_head' for a TRL value-head export"):
    load_hf_prm(trl, "class_softmax", step_tag_id=TAG)
