r"""The project's main job: the paper's study end to end, from nothing to a report.

  python -m experiments.reproduce --preset=demo --out_dir=runs/reproduce_demo

Stages, each cached in --out_dir and resumable (kill the run at any point and
rerun the same command: finished stages are skipped, the interrupted one
resumes from its last checkpoint / last whole batch of lines, and every file
is written atomically or append-with-fsync):

  small         train the small policy (its tokenizer first)        OUT/small
  large         train the ~14x larger policy: same data and tokens  OUT/large
  verifier      train the PRM's backbone (presets that name one)    OUT/verifier_backbone
  prm           PRM data from the small policy's samples, PRM       OUT/prm
  difficulty    S separate samples per question (their own seed)    OUT/difficulty
  sweep         every strategy x budget x seed                      OUT/sweep
  revision_model  fine-tune the small policy into a revision model  OUT/revision_model
                (presets with revisions; experiments/train_revision.py)
  revisions     P chains x L revisions per sequential:parallel ratio,
                budget and seed                                     OUT/revisions
  large_greedy  the large policy's greedy answer per question       OUT/large_greedy.json
  report        bins, compute-optimal, router, FLOPs matching, findings:
                OUT/report.md, OUT/*.png, OUT/results.json

On a benchmark (--dataset=gsm8k|math500 with --shots_path=<its train split>)
the policies train on the train split's reference solutions (the project's
own tokenizer, `train_policy --dataset`), the PRM learns Monte-Carlo labels,
and everything after runs on the test split, e.g.

  python -m experiments.reproduce --preset=paper --dataset=gsm8k \
      --data_path=gsm8k/test.jsonl --shots_path=gsm8k/train.jsonl --num_shots=0 \
      --row_len=384 --max_step_tokens=64 --max_solution_tokens=256 --out_dir=runs/gsm8k

Presets: `smoke` (minutes on a 2-core CPU; the tests run it), `demo` (the
README's default; <= 40 minutes on a 2-core CPU from a fresh clone), `paper`
(the paper's budgets 2^0..2^8 and 2048 difficulty samples; for a GPU/TPU).
The flags below override a preset's sweep; OUT/preset.json records what ran,
and a rerun with different settings is refused (use a new --out_dir).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Sequence

from absl import app, flags, logging

from experiments import dataset_flags
from ttc_jax import distributed

DIFFICULTY_SEED = 1000  # the difficulty samples' seed: independent of every sweep seed


@dataclasses.dataclass(frozen=True)
class PrmSpec:
  """The PRM stage: labelled data from the small policy, then training."""
  num_questions: int
  samples: int
  contrastive_copies: int
  lr: float
  max_epochs: float
  eval_every: int
  batch_size: int = 128
  label: str = "exact"
  head: str = "token"
  token_targets: str = "step"


@dataclasses.dataclass(frozen=True)
class RevisionSpec:
  """The revision stages: data from the small policy's samples, fine-tuning
  (experiments/train_revision.py), then the sequential:parallel sweep at the
  preset's budgets. fine_tune=False uses the policy itself as the revision
  model (the smoke policy solves nothing, so it has no correct sample to
  train on; the stages then test plumbing only)."""
  ratios: tuple[str, ...]
  num_questions: int = 1000
  samples: int = 64
  temperature: float = 1.2
  lr: float = 1e-3
  epochs: float = 3.0
  batch_size: int = 128
  eval_every: int = 50
  patience: int = 3
  fine_tune: bool = True
  budgets: tuple[int, ...] | None = None  # the revision sweep's (None: the preset's)
  seeds: tuple[int, ...] | None = None  # the revision sweep's (None: the preset's)


@dataclasses.dataclass(frozen=True)
class Preset:
  """Everything a reproduction depends on (OUT/preset.json)."""
  name: str
  small: str  # training presets (ttc_jax.train.presets)
  large: str
  verifier_backbone: str | None  # a training preset for the PRM's backbone; None: the small policy
  prm: PrmSpec
  questions: int  # test questions swept (a fixed shuffle: every prefix spans the difficulties)
  difficulty_samples: int  # S
  budgets: tuple[int, ...]
  methods: tuple[str, ...]
  ms: tuple[str, ...]
  ks: tuple[int, ...]
  seeds: tuple[int, ...]
  probe: int  # the router's best-of-P probe (P must be a swept budget)
  bins: int = 5
  n_boot: int = 1000
  max_step_tokens: int = 16  # arithmetic steps take <= 14 tokens
  train_steps: int | None = None  # override both policies' steps (smoke)
  few_compiles: bool = False  # run_search --few_compiles: short sweeps are mostly compiling
  revisions: RevisionSpec | None = None  # sequential revisions (None: not run)
  # A benchmark instead of the built-in task (a DatasetSpec record; None: built-in) and
  # the lengths its text needs (None: the built-in task's defaults).
  dataset: dict | None = None
  row_len: int | None = None  # policy training rows and PRM rows
  max_solution_tokens: int | None = None  # samples, search, PRM and revision data
  max_attempt_tokens: int | None = None  # one revision attempt

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def spec(self):
    from ttc_jax.tasks.spec import DatasetSpec
    return DatasetSpec() if self.dataset is None else DatasetSpec.from_record(self.dataset)

  def on_dataset(self, spec) -> "Preset":
    """This preset on a benchmark (a non-built-in DatasetSpec): the policies train
    on its training problems; PRM labels are Monte-Carlo (no step checker), with
    the reference solutions as all-correct chains (`prm_stage`) instead of
    corrupted copies."""
    prm = dataclasses.replace(self.prm, label="mc", contrastive_copies=0)
    return dataclasses.replace(self, dataset=spec.record(), prm=prm)


_METHODS = ("best_of_n", "beam", "lookahead", "dvts")
PRESETS = {
    "smoke": Preset(
        name="smoke", small="smoke", large="smoke_large", verifier_backbone=None,
        prm=PrmSpec(num_questions=48, samples=2, contrastive_copies=1, lr=3e-4, max_epochs=1.0,
                    eval_every=0, batch_size=32),
        questions=20, difficulty_samples=16, budgets=(1, 2, 4), methods=_METHODS, ms=("2",),
        ks=(1,), seeds=(0, 1), probe=1, bins=5, n_boot=200, few_compiles=True,
        revisions=RevisionSpec(ratios=("par", "1:1", "seq"), fine_tune=False)),
    "demo": Preset(
        name="demo", small="small", large="large", verifier_backbone="small_verifier",
        prm=PrmSpec(num_questions=1000, samples=2, contrastive_copies=3, lr=3e-4, max_epochs=1.0,
                    eval_every=50),
        questions=150, difficulty_samples=64, budgets=(1, 2, 4, 8, 16), methods=_METHODS,
        # k = 3 and revisions at square budgets with one seed keep the demo within 40
        # minutes on 2 cores (BUILD_NOTES.md); the paper preset runs them all. Its
        # sweep calls run ~2 s and compile ~25 s each: few_compiles (same lines).
        ms=("4", "sqrt"), ks=(1,), seeds=(0, 1), probe=4, bins=5, n_boot=1000,
        few_compiles=True,
        revisions=RevisionSpec(ratios=("par", "1:1", "seq"), num_questions=1000, samples=16,
                               eval_every=20, budgets=(1, 4, 16), seeds=(0,))),
    "paper": Preset(
        name="paper", small="small", large="large", verifier_backbone="small_verifier",
        prm=PrmSpec(num_questions=6000, samples=2, contrastive_copies=3, lr=3e-4, max_epochs=1.0,
                    eval_every=50),
        questions=500, difficulty_samples=2048, budgets=tuple(2 ** i for i in range(9)),
        methods=_METHODS, ms=("4", "sqrt"), ks=(1, 3), seeds=(0, 1, 2), probe=4, bins=5,
        n_boot=1000, revisions=RevisionSpec(ratios=("par", "1:4", "1:1", "4:1", "seq"))),
}


def get_preset(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name]


def validate(preset: Preset) -> None:
  """Clear errors before any work starts."""
  if preset.questions < 2 * preset.bins:
    raise ValueError(f"{preset.questions} questions cannot fill {preset.bins} bins of >= 2 "
                     "(2-fold selection needs two per bin)")
  if not preset.budgets or any(b < 1 for b in preset.budgets):
    raise ValueError(f"budgets must be >= 1, got {preset.budgets}")
  if preset.probe not in preset.budgets:
    raise ValueError(f"the router's probe P={preset.probe} must be a swept budget "
                     f"{preset.budgets} (its best-of-P lines are the probe)")
  if preset.difficulty_samples < 1 or not preset.seeds:
    raise ValueError("need difficulty_samples >= 1 and at least one seed")
  if DIFFICULTY_SEED in preset.seeds:
    raise ValueError(f"seed {DIFFICULTY_SEED} is the difficulty samples' own")
  rev = preset.revisions
  if rev and rev.budgets and not set(rev.budgets) <= set(preset.budgets):
    raise ValueError(f"revision budgets {rev.budgets} must be swept budgets {preset.budgets} "
                     "(every comparison is against best-of-N at the same budget)")
  if rev and rev.seeds is not None and (not rev.seeds or DIFFICULTY_SEED in rev.seeds):
    raise ValueError(f"revision seeds {rev.seeds}: need at least one, not {DIFFICULTY_SEED}")


# ----------------------------------------------------------------------------- stage cache


class Stages:
  """OUT/stages/<name>.json marks a finished stage (written atomically, last)."""

  def __init__(self, out_dir: str, names: Sequence[str], log: Callable[[str], None]):
    self.dir = os.path.join(out_dir, "stages")
    os.makedirs(self.dir, exist_ok=True)
    self.names, self.log, self.start = list(names), log, time.perf_counter()

  def _path(self, name: str) -> str:
    return os.path.join(self.dir, f"{name}.json")

  def done(self, name: str) -> dict | None:
    path = self._path(name)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def run(self, name: str, fn: Callable[[], dict]) -> dict:
    """fn() -> the stage's JSON-ready summary; skipped when already done."""
    index = self.names.index(name) + 1
    cached = self.done(name)
    if cached is not None:
      self.log(f"[{index}/{len(self.names)}] {name}: done earlier ({cached['wall_s']:.0f} s)")
      return cached["summary"]
    self.log(f"[{index}/{len(self.names)}] {name} (pipeline time so far "
             f"{time.perf_counter() - self.start:.0f} s)")
    t0 = time.perf_counter()
    summary = fn()
    from ttc_jax.checkpoints import write_json_atomic
    write_json_atomic(self._path(name), dict(summary=summary, wall_s=time.perf_counter() - t0))
    return summary

  def wall(self) -> dict:
    return {n: (self.done(n) or {}).get("wall_s") for n in self.names}


# How the work is run, not what it computes (the same lines): may change between runs.
_UNPINNED = frozenset({"few_compiles"})


def check_preset(out_dir: str, preset: Preset) -> None:
  """Pins OUT to one preset: a rerun with other settings would mix results."""
  from ttc_jax.checkpoints import write_json_atomic
  path = os.path.join(out_dir, "preset.json")
  current = json.loads(json.dumps(preset.to_dict()))  # tuples as JSON lists
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    # a setting the saved preset predates (a stage added since) may be
    # added: the finished stages stand, the new ones run, the report is redone
    added = sorted(k for k in set(current) - set(saved) if current[k] is not None)
    differ = sorted(k for k in set(saved) | set(current)
                    if k not in added and saved.get(k) != current.get(k))
    if set(differ) - _UNPINNED:
      raise ValueError(f"{out_dir} holds a reproduction with other settings (differs in "
                       f"{differ}); use a new --out_dir")
    if added:
      marker = os.path.join(out_dir, "stages", "report.json")
      if os.path.exists(marker):
        os.remove(marker)
    if added or differ:
      write_json_atomic(path, current)
  else:
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(path, current)


# ----------------------------------------------------------------------------- stages


def train_stage(train_preset: str, out_dir: str, steps: int | None, progress: bool,
                log: Callable[[str], None], preset: "Preset | None" = None) -> dict:
  """Trains a policy preset; on the reproduction's benchmark when it has one."""
  from ttc_jax.train import get_preset as get_train_preset, train
  policy = get_train_preset(train_preset).with_train(steps=steps)
  if preset is not None:
    if preset.dataset is not None:
      policy = policy.on_dataset(preset.spec)
    policy = policy.with_data(row_len=preset.row_len)
  result = train(policy, out_dir, progress=progress, log=log)
  summary = result.summary()
  if result.step < result.total_steps:
    raise RuntimeError(f"{out_dir}: training stopped at {result.step}/{result.total_steps}")
  return {k: summary[k] for k in ("step", "total_steps", "train_loss", "eval_loss", "params",
                                  "non_embedding_params", "tokens_per_s")}


def prm_stage(preset: Preset, out: str, progress: bool, log: Callable[[str], None]) -> dict:
  from experiments import train_prm
  from ttc_jax.train import verifier_train as vt
  spec = preset.prm
  lengths = {k: v for k, v in (("row_len", preset.row_len),
                                ("max_new_tokens", preset.max_solution_tokens)) if v}
  dcfg = train_prm.PrmDataConfig(num_questions=spec.num_questions, samples=spec.samples,
                                 label=spec.label, contrastive_copies=spec.contrastive_copies,
                                 reference_chains=preset.dataset is not None, **lengths)
  tcfg = vt.VerifierTrainConfig(lr=spec.lr, batch_size=spec.batch_size,
                                max_epochs=spec.max_epochs, eval_every=spec.eval_every,
                                token_targets=spec.token_targets)
  backbone = os.path.join(out, "verifier_backbone" if preset.verifier_backbone else "small")
  summary = train_prm.run(os.path.join(out, "small"), os.path.join(out, "prm"), dcfg=dcfg,
                          tcfg=tcfg, spec=preset.spec, init_from=backbone, head=spec.head,
                          progress=progress, log=lambda s: None)
  if not summary["finished"]:
    raise RuntimeError("PRM training did not finish")
  log(train_prm.headline(summary))
  return {k: summary[k] for k in ("verifier_params", "rows", "step", "best_step", "held_out")}


def revision_model_stage(preset: Preset, out: str, progress: bool,
                         log: Callable[[str], None]) -> dict:
  """The revision model: the small policy fine-tuned on revision data (or the
  policy itself when the spec says so)."""
  spec = preset.revisions
  small = os.path.join(out, "small")
  if not spec.fine_tune:
    log("revision model: the small policy itself (this preset does not fine-tune one)")
    return {"model_dir": small, "fine_tuned": False}
  from experiments import train_revision as tr
  lengths = {"max_new_tokens": preset.max_solution_tokens} if preset.max_solution_tokens else {}
  dcfg = tr.RevisionDataConfig(num_questions=spec.num_questions, samples=spec.samples,
                               temperature=spec.temperature, **lengths)
  tcfg = tr.RevisionTrainConfig(lr=spec.lr, batch_size=spec.batch_size, epochs=spec.epochs,
                                eval_every=spec.eval_every, patience=spec.patience)
  model_dir = os.path.join(out, "revision_model")
  summary = tr.run(small, model_dir, dcfg=dcfg, tcfg=tcfg, progress=progress,
                   log=lambda s: None, spec=preset.spec)
  if not summary["finished"]:
    raise RuntimeError("revision model training did not finish")
  log(f"revision model: step {summary['chosen_step']} of {summary['steps_trained']} (held-out "
      f"loss {summary['chosen_eval_loss']:.4f}; the policy's {summary['base_eval_loss']:.4f})")
  keep = ("chosen_step", "min_step", "steps_trained", "chosen_eval_loss", "base_eval_loss",
          "train_rows", "held_out_rows", "data", "rule")
  return {"model_dir": model_dir, "fine_tuned": True, **{k: summary[k] for k in keep}}


def revision_grid(preset: Preset, model_dir: str) -> dict:
  return dict(methods=("revisions",), ns=preset.revisions.budgets or preset.budgets,
              ratios=preset.revisions.ratios, revision_model=model_dir)


def search_options(preset: Preset, out: str, name: str, **grid):
  from experiments.run_search import Options
  spec = preset.spec
  task = {} if spec.built_in else dict(dataset=spec.dataset, data_path=spec.data_path,
                                       shots_path=spec.shots_path, num_shots=spec.num_shots)
  lengths = {k: v for k, v in (("max_solution_tokens", preset.max_solution_tokens),
                                ("max_attempt_tokens", preset.max_attempt_tokens)) if v}
  return Options(policy=os.path.join(out, "small"), prm=os.path.join(out, "prm"),
                 out_dir=os.path.join(out, name), num_questions=preset.questions,
                 max_step_tokens=preset.max_step_tokens, few_compiles=preset.few_compiles,
                 **task, **lengths, **grid)


def sweep_grids(preset: Preset) -> list[dict]:
  """run_search grids of the sweep. Lookahead costs N (k + 1) generations, so
  each k runs only the N whose cost stays within the largest budget (the
  analysis compares strategies at equal generations) and that some width M
  fits."""
  others = tuple(m for m in preset.methods if m != "lookahead")
  grids = [dict(methods=others, ns=preset.budgets, ms=preset.ms, ks=(0,))] if others else []
  if "lookahead" in preset.methods:
    some_m_fits = lambda n: any(m == "sqrt" or int(m) <= n for m in preset.ms)
    for k in preset.ks:
      ns = tuple(n for n in preset.budgets
                 if n * (k + 1) <= max(preset.budgets) and some_m_fits(n))
      if ns:
        grids.append(dict(methods=("lookahead",), ns=ns, ms=preset.ms, ks=(k,)))
  return grids


def search_stage(preset: Preset, out: str, name: str, grids: list[dict], seeds: tuple[int, ...],
                 progress: bool, log: Callable[[str], None]) -> dict:
  """run_search over each grid into OUT/name (one results file: lines are keyed
  by config, so the grids share it and a restart resumes any of them)."""
  import jax
  from experiments import run_search
  from ttc_jax import sharding
  mesh = sharding.make_mesh() if jax.device_count() > 1 else None
  lines, skipped = 0, []
  for grid in grids:
    opts = search_options(preset, out, name, seeds=seeds, **grid)
    summary = run_search.run(opts, print_fn=lambda s: None, progress=progress, mesh=mesh)
    lines, skipped = lines + summary["lines"], skipped + summary["skipped"]
  log(f"{lines} lines in {os.path.join(out, name)}")
  return {"lines": lines, "skipped": skipped}


def large_greedy_stage(preset: Preset, out: str) -> dict:
  """The large policy's greedy correctness on the swept questions."""
  from experiments.flops_matched import large_greedy_correct
  from experiments.run_search import load_task, select_questions
  opts = search_options(preset, out, "sweep")
  task = load_task(opts)
  questions = select_questions(task, opts)
  correct, params = large_greedy_correct(os.path.join(out, "large"), task,
                                         [p for _, p in questions],
                                         max_new_tokens=opts.max_solution_tokens)
  return {"params": params, "correct": {str(i): bool(c) for (i, _), c in zip(questions, correct)}}


# ----------------------------------------------------------------------------- the report


def build_results(preset: Preset, out: str, stage_summaries: dict, walls: dict) -> dict:
  """Every analysis over the cached lines (no generation)."""
  import numpy as np
  from ttc_jax.analysis import findings as F
  from ttc_jax.analysis.compute_optimal import compute_optimal
  from ttc_jax.analysis.flops import flops_matched_table
  from ttc_jax.analysis.outcomes import read_lines
  from ttc_jax.analysis.quality import model_quality
  from ttc_jax.analysis.revisions import revisions_section
  from ttc_jax.analysis.sweep import analyze_sweep, prepare
  sweep = read_lines(os.path.join(out, "sweep", "results.jsonl"))
  difficulty = read_lines(os.path.join(out, "difficulty", "results.jsonl"))
  S = preset.difficulty_samples
  analysis = analyze_sweep(sweep, samples=S, n_bins=preset.bins, n_boot=preset.n_boot,
                           probe=preset.probe, difficulty_lines=difficulty)
  p = prepare(sweep, samples=S, n_bins=preset.bins, difficulty_lines=difficulty)
  questions = p.outcomes.questions
  greedy = stage_summaries["large_greedy"]
  large_correct = np.array([greedy["correct"][str(q)] for q in questions.tolist()])
  small_params = stage_summaries["small"]["params"]
  ratio = greedy["params"] / small_params
  co = compute_optimal(p.outcomes, p.oracle)
  # revisions are one more strategy family in the same table (their own analysis:
  # the search findings above stay over search strategies only)
  revision_path = os.path.join(out, "revisions", "results.jsonl")
  revision_lines = read_lines(revision_path) if os.path.exists(revision_path) else []
  p_all = prepare(sweep + revision_lines, samples=S, n_bins=preset.bins,
                  difficulty_lines=difficulty) if revision_lines else p
  table = [row for accounting in ("v1", "iclr") for row in flops_matched_table(
      p.outcomes.budgets, co.per_question, p.oracle.bin_of, p.oracle.n_bins, large_correct,
      size_ratio=ratio, accounting=accounting)]
  fixed = [int(m) for m in preset.ms if m != "sqrt"]  # the findings' fixed beam width
  findings = (F.search_findings(p, m=fixed[0] if fixed else F.FIXED_M, n_boot=preset.n_boot)
              + [F.efficiency_finding(p, name, n_boot=preset.n_boot)
                 for name in ("oracle", "predicted")]
              + [F.flops_matched_finding(table)]
              + F.revision_findings(p_all, revision_lines, n_boot=preset.n_boot))
  return {
      "preset": preset.to_dict(), "out_dir": os.path.abspath(out), "stage_wall_s": walls,
      "models": {"small": stage_summaries["small"], "large": stage_summaries["large"],
                 "size_ratio": ratio, "verifier": stage_summaries["prm"],
                 "revision": stage_summaries.get("revision_model")},
      "quality": model_quality(difficulty, S, p.oracle, questions, large_correct),
      "analysis": analysis,
      "findings": [f.to_dict() for f in findings],
      "flops_matched": {"size_ratio": ratio, "small_params": small_params,
                        "large_params": greedy["params"], "rows": table},
      "revisions": revisions_section(p_all, revision_lines, n_boot=preset.n_boot),
  }


def report_stage(preset: Preset, out: str, stage_summaries: dict, walls: dict,
                 log: Callable[[str], None]) -> dict:
  from ttc_jax.analysis.report import render_report, write_plots
  from ttc_jax.atomic import atomic_open
  from ttc_jax.checkpoints import write_json_atomic
  results = build_results(preset, out, stage_summaries, walls)
  results["plots"] = write_plots(results, out)
  write_json_atomic(os.path.join(out, "results.json"), results)
  text = render_report(results)
  with atomic_open(os.path.join(out, "report.md")) as f:
    f.write(text)
  log(f"wrote {os.path.join(out, 'report.md')}, results.json and {len(results['plots'])} plots")
  return {"findings": {f["id"]: f["verdict"] for f in results["findings"]}}


def reproduce(preset: Preset, out: str, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) every stage; returns the stage summaries."""
  validate(preset)
  os.makedirs(out, exist_ok=True)
  check_preset(out, preset)
  names = (["small", "large"] + (["verifier"] if preset.verifier_backbone else [])
           + ["prm", "difficulty", "sweep"]
           + (["revision_model", "revisions"] if preset.revisions else [])
           + ["large_greedy", "report"])
  stages = Stages(out, names, log)
  done = {}
  done["small"] = stages.run("small", lambda: train_stage(
      preset.small, os.path.join(out, "small"), preset.train_steps, progress, log, preset))
  done["large"] = stages.run("large", lambda: train_stage(
      preset.large, os.path.join(out, "large"), preset.train_steps, progress, log, preset))
  if preset.verifier_backbone:
    done["verifier"] = stages.run("verifier", lambda: train_stage(
        preset.verifier_backbone, os.path.join(out, "verifier_backbone"), preset.train_steps,
        progress, log, preset))
  done["prm"] = stages.run("prm", lambda: prm_stage(preset, out, progress, log))
  done["difficulty"] = stages.run("difficulty", lambda: search_stage(
      preset, out, "difficulty", [dict(methods=("best_of_n",), ns=(preset.difficulty_samples,))],
      (DIFFICULTY_SEED,), progress, log))
  done["sweep"] = stages.run("sweep", lambda: search_stage(
      preset, out, "sweep", sweep_grids(preset), preset.seeds, progress, log))
  if preset.revisions:
    done["revision_model"] = stages.run("revision_model", lambda: revision_model_stage(
        preset, out, progress, log))
    done["revisions"] = stages.run("revisions", lambda: search_stage(
        preset, out, "revisions", [revision_grid(preset, done["revision_model"]["model_dir"])],
        preset.revisions.seeds or preset.seeds, progress, log))
  done["large_greedy"] = stages.run("large_greedy", lambda: large_greedy_stage(preset, out))
  done["report"] = stages.run("report", lambda: report_stage(preset, out, done, stages.wall(),
                                                             log))
  return done


# ----------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI flags (defined only when run as a script: tests import this module)."""
  flags.DEFINE_enum("preset", "demo", sorted(PRESETS), "What to run (see the module docstring).")
  flags.DEFINE_string("out_dir", None, "Output directory (every stage's files, report.md, "
                      "results.json, plots).")
  flags.DEFINE_integer("questions", None, "Override: test questions swept.")
  flags.DEFINE_integer("difficulty_samples", None, "Override: S, samples per question for the "
                       "difficulty bins (paper: 2048).")
  flags.DEFINE_list("budgets", None, "Override: generation budgets N (paper: 1,2,4,...,256).")
  flags.DEFINE_list("seeds", None, "Override: sweep seeds.")
  flags.DEFINE_integer("n_boot", None, "Override: bootstrap resamples for the intervals.")
  flags.DEFINE_integer("revision_samples", None, "Override: policy samples per training question "
                       "for the revision model's data (paper: 64; the demo's 16 give a model "
                       "that copies its last attempt, BUILD_NOTES.md).", lower_bound=1)
  flags.DEFINE_integer("max_step_tokens", None, "Override: tokens one step may take (the "
                       "built-in task's steps take <= 14).")
  flags.DEFINE_integer("max_solution_tokens", None, "Override: tokens a solution may take "
                       "(default 112, the built-in task's).")
  flags.DEFINE_integer("max_attempt_tokens", None, "Override: tokens one revision attempt may "
                       "take (default 88; 4 previous ones + 1 fit the policy's max_seq_len).")
  flags.DEFINE_integer("row_len", None, "Override: the policies' training rows and PRM rows "
                       "(a benchmark's text needs more than the built-in task's 128).")
  flags.DEFINE_bool("progress", True, "Progress bars with ETA per stage.")
  flags.mark_flag_as_required("out_dir")
  dataset_flags.define(FLAGS, policy_flag=None)
  distributed.define_flags(default_local_devices=-1)  # two XLA:CPU devices on a CPU backend


def preset_from_flags() -> Preset:
  ints = lambda xs: None if xs is None else tuple(int(x) for x in xs)
  overrides = dict(questions=FLAGS.questions, difficulty_samples=FLAGS.difficulty_samples,
                   budgets=ints(FLAGS.budgets), seeds=ints(FLAGS.seeds), n_boot=FLAGS.n_boot,
                   max_step_tokens=FLAGS.max_step_tokens, row_len=FLAGS.row_len,
                   max_solution_tokens=FLAGS.max_solution_tokens,
                   max_attempt_tokens=FLAGS.max_attempt_tokens)
  preset = dataclasses.replace(get_preset(FLAGS.preset),
                               **{k: v for k, v in overrides.items() if v is not None})
  spec = dataset_flags.spec(FLAGS)
  spec.check()
  if not spec.built_in:
    preset = preset.on_dataset(spec)
  if FLAGS.revision_samples is not None:
    if preset.revisions is None:
      raise ValueError(f"--revision_samples: preset {preset.name} runs no revisions")
    preset = dataclasses.replace(preset, revisions=dataclasses.replace(
        preset.revisions, samples=FLAGS.revision_samples))
  return preset


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    preset = preset_from_flags()
    validate(preset)
    check_preset(FLAGS.out_dir, preset)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  distributed.initialize_from_flags()
  start = time.perf_counter()
  reproduce(preset, FLAGS.out_dir, progress=FLAGS.progress,
            log=lambda s: print(s, file=sys.stderr, flush=True))
  print(f"reproduction {preset.name} finished in {time.perf_counter() - start:.0f} s: "
        f"{os.path.join(FLAGS.out_dir, 'report.md')}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
