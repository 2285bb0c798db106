"""experiments/reproduce.py: the smoke preset end to end, killed mid-stage and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import reproduce
from ttc_jax.analysis.flops import PAPER_R_VALUES
from ttc_jax.analysis.outcomes import read_lines
from ttc_jax.analysis.sweep import analyze_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERDICTS = {"reproduced", "partly", "not reproduced", "not measured"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _command(out_dir, *extra):
  return [sys.executable, "-m", "experiments.reproduce", "--preset=smoke", f"--out_dir={out_dir}",
          "--noprogress", *extra]


def _env(base=None):
  env = dict(os.environ if base is None else base, PYTHONUNBUFFERED="1")
  env.pop("JAX_NUM_CPU_DEVICES", None)  # the script picks two CPU devices itself
  return env


def _complete_lines(path):
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if line.endswith("\n"))


def _kill_once_lines_appear(out_dir, env, timeout_s=600):
  """Starts the smoke run and SIGKILLs it once the sweep has written a batch."""
  proc = subprocess.Popen(_command(out_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  sweep = os.path.join(out_dir, "sweep", "results.jsonl")
  deadline = time.time() + timeout_s
  while _complete_lines(sweep) == 0:
    if proc.poll() is not None:
      raise AssertionError("the run ended before it could be killed:\n" +
                           proc.stdout.read().decode())
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("no sweep line within the timeout")
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return _complete_lines(sweep)


def _smoke_run(job):
  """A background job (tests/conftest.py): the smoke reproduction, killed
  mid-sweep, then resumed to the end. Its tests run last (`late`), so the
  ~3-minute run overlaps the rest of the suite."""
  out = str(job.dir)
  env = _env(job.env)
  lines_at_kill = _kill_once_lines_appear(out, env)
  stages_at_kill = sorted(os.listdir(os.path.join(out, "stages")))
  done = job.run(_command(out), env=env, timeout=900, cwd=ROOT)
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  return dict(out=out, lines_at_kill=lines_at_kill, stages_at_kill=stages_at_kill,
              log=done.stderr, results=results)


@pytest.fixture(scope="module")
def smoke_run(background):
  return background.result(_smoke_run)


_SMOKE = [pytest.mark.slow, pytest.mark.late, pytest.mark.background("_smoke_run")]


def _smoke_test(fn):
  for mark in _SMOKE:
    fn = mark(fn)
  return fn


@_smoke_test
def test_killed_mid_sweep_resumes_without_redoing_finished_stages(smoke_run):
  out, log = smoke_run["out"], smoke_run["log"]
  # Killed inside the sweep: the stages before it were finished, and the rerun skipped them.
  assert smoke_run["stages_at_kill"] == sorted(
      f"{s}.json" for s in ("small", "large", "prm", "difficulty"))
  for stage in ("small", "large", "prm", "difficulty"):
    assert f"{stage}: done earlier" in log
  # The sweep resumed: every (question, config, seed) line exactly once.
  preset = reproduce.get_preset("smoke")
  lines = read_lines(os.path.join(out, "sweep", "results.jsonl"))
  keys = [(l["uid"], json.dumps(l["config"], sort_keys=True)) for l in lines]
  assert len(keys) == len(set(keys))
  assert 0 < smoke_run["lines_at_kill"] < len(lines)
  per_config = {}
  for l in lines:
    per_config.setdefault(json.dumps(l["config"], sort_keys=True), set()).add(l["uid"])
  assert all(len(uids) == preset.questions for uids in per_config.values())
  seeds = {json.loads(c)["seed"] for c in per_config}
  assert seeds == set(preset.seeds)
  # A finished run reruns in seconds and changes nothing.
  before = open(os.path.join(out, "results.json")).read()
  again = subprocess.run(_command(out), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr
  assert again.stderr.count("done earlier") == 9
  assert open(os.path.join(out, "results.json")).read() == before
  # Other settings in the same directory are refused, naming what differs.
  other = subprocess.run(_command(out, "--questions=30"), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
  assert other.returncode != 0 and "questions" in other.stderr and "new --out_dir" in other.stderr


@_smoke_test
def test_report_structure_and_consistency(smoke_run):
  out, results = smoke_run["out"], smoke_run["results"]
  preset = reproduce.get_preset("smoke")
  # Findings: the acceptance interface's fields, known verdicts.
  ids = [f["id"] for f in results["findings"]]
  assert len(ids) == len(set(ids)) >= 10
  for f in results["findings"]:
    assert set(f) >= {"id", "claim", "paper", "measured", "interval", "verdict"}
    assert f["verdict"] in VERDICTS
    if f["verdict"] == "not measured":
      assert f["measured"] is None and f["detail"]
    elif f["interval"] is not None:
      low, high = f["interval"]
      assert low <= f["measured"] + 1e-9 or f["id"].startswith("compute_optimal_efficiency")
      assert low <= high
  # FLOPs matching: per accounting and R, the matched budget and per-bin accuracies.
  rows = results["flops_matched"]["rows"]
  for accounting in ("v1", "iclr"):
    mine = [r for r in rows if r["accounting"] == accounting]
    assert [r["r"] for r in mine] == list(PAPER_R_VALUES[accounting])
    for r in mine:
      assert r["matched_budget"] in (None, *preset.budgets)
      assert len(r["bins"]) == preset.bins
      for cell in r["bins"]:
        assert 0.0 <= cell["large"] <= 1.0
  ratio = results["flops_matched"]["size_ratio"]
  assert 10 <= ratio <= 18 and ratio == pytest.approx(
      results["models"]["large"]["params"] / results["models"]["small"]["params"])
  # The analysis is exactly what the cached lines give (no generation in the report stage).
  sweep = read_lines(os.path.join(out, "sweep", "results.jsonl"))
  difficulty = read_lines(os.path.join(out, "difficulty", "results.jsonl"))
  again = analyze_sweep(sweep, samples=preset.difficulty_samples, n_bins=preset.bins,
                        n_boot=preset.n_boot, probe=preset.probe, difficulty_lines=difficulty)
  assert json.loads(json.dumps(again)) == results["analysis"]
  # Bins: equal counts over the swept questions; per-bin quality adds up.
  quality = results["quality"]
  sizes = results["analysis"]["bins"]["oracle"]["sizes"]
  assert sum(sizes) == preset.questions and max(sizes) - min(sizes) <= 1
  assert [b["questions"] for b in quality["per_bin"]] == sizes
  pass1 = np.array([b["pass_at_1"] for b in quality["per_bin"]])
  assert np.all(np.diff(pass1) <= 1e-12)  # oracle bins: easiest first
  assert quality["policy"]["pass_at_1"] == pytest.approx(
      float(np.dot(pass1, sizes) / sum(sizes)))
  large_by_bin = [b["large_greedy"] for b in quality["per_bin"]]
  assert [c["large"] for c in rows[0]["bins"]] == pytest.approx(large_by_bin)
  # Compute-optimal: per-bin accuracies average to the overall one.
  co = results["analysis"]["compute_optimal"]["oracle"]
  by_bin = np.array(co["accuracy_by_bin"])  # [bins, budgets]
  np.testing.assert_allclose(np.dot(sizes, by_bin) / sum(sizes), co["accuracy"], atol=1e-12)
  # Report and plots: every finding's claim and verdict, every plot linked and a real PNG.
  report = open(os.path.join(out, "report.md")).read()
  for f in results["findings"]:
    assert f["claim"] in report and f"**{f['verdict']}**" in report
  assert len(results["plots"]) == 5
  for name in results["plots"]:
    assert f"]({name})" in report
    with open(os.path.join(out, name), "rb") as fh:
      assert fh.read(8) == PNG_MAGIC
  assert "within-question AUC" in report and "## FLOPs-matched comparison" in report


@_smoke_test
def test_revisions_section(smoke_run):
  """The revision stages ran (the smoke policy as its own revision model) and
  results.json's `revisions` section is what their lines give."""
  out, results = smoke_run["out"], smoke_run["results"]
  preset = reproduce.get_preset("smoke")
  lines = read_lines(os.path.join(out, "revisions", "results.jsonl"))
  # every (question, budget, ratio that fits it, seed) once: 1:1 fits 1 and 4, not 2
  want = {("par", n) for n in preset.budgets} | {("seq", n) for n in preset.budgets} | {
      ("1:1", 1), ("1:1", 4)}
  got = {(l["config"]["ratio"], l["config"]["n"]) for l in lines}
  assert got == want
  assert len(lines) == len(want) * preset.questions * len(preset.seeds)
  for l in lines:
    assert l["config"]["parallel"] * l["config"]["length"] == l["config"]["n"]
    assert len(l["revision"]["pass_at_step"]) == l["config"]["length"]
  rev = results["revisions"]
  assert set(rev["ratios"]) == {"par", "1:1", "seq"}
  assert rev["ratio_order"] == ["par", "1:1", "seq"]  # most parallel first
  acc = rev["ratios"]["seq"][rev["selection"]]
  seq4 = [l for l in lines if l["config"]["ratio"] == "seq" and l["config"]["n"] == 4]
  mean = np.mean([l["selected"][rev["selection"]]["correct"] for l in seq4])
  assert acc[rev["budgets"].index(4)] == pytest.approx(mean)
  assert rev["ratios"]["1:1"][rev["selection"]][rev["budgets"].index(2)] is None
  assert len(rev["best_ratio_by_bin"]) == preset.bins
  assert rev["chains"]["chain_length"] == max(preset.budgets)
  ids = {f["id"] for f in results["findings"]}
  assert {"compute_optimal_revisions_efficiency", "sequential_beats_parallel",
          "best_ratio_by_difficulty", "correct_revised_to_incorrect",
          "revisions_improve_past_window"} <= ids
  report = open(os.path.join(out, "report.md")).read()
  assert "## Revisions" in report and "revisions_vs_budget.png" in results["plots"]
  assert results["stage_wall_s"]["revision_model"] is not None


def test_bad_presets_get_clear_errors():
  smoke = reproduce.get_preset("smoke")
  import dataclasses
  with pytest.raises(ValueError, match="probe"):
    reproduce.validate(dataclasses.replace(smoke, probe=3))
  with pytest.raises(ValueError, match="bins"):
    reproduce.validate(dataclasses.replace(smoke, questions=9))
  with pytest.raises(ValueError, match="difficulty samples' own"):
    reproduce.validate(dataclasses.replace(smoke, seeds=(0, reproduce.DIFFICULTY_SEED)))
  revisions = dataclasses.replace(smoke.revisions, budgets=(1, 3))
  with pytest.raises(ValueError, match="revision budgets"):
    reproduce.validate(dataclasses.replace(smoke, revisions=revisions))
  with pytest.raises(ValueError, match="unknown preset"):
    reproduce.get_preset("huge")
  for name in reproduce.PRESETS:
    reproduce.validate(reproduce.get_preset(name))


def test_stage_cache_runs_each_stage_once(tmp_path):
  calls = []
  stages = reproduce.Stages(str(tmp_path), ["a", "b"], log=lambda s: None)
  assert stages.run("a", lambda: calls.append("a") or {"x": 1}) == {"x": 1}
  again = reproduce.Stages(str(tmp_path), ["a", "b"], log=lambda s: None)
  assert again.run("a", lambda: calls.append("a2") or {"x": 2}) == {"x": 1}
  assert calls == ["a"]
  with pytest.raises(RuntimeError):  # a failing stage leaves no marker
    again.run("b", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
  assert again.done("b") is None and again.wall()["a"] is not None


def test_a_preset_gaining_a_stage_keeps_finished_stages(tmp_path):
  """An out dir made before a preset setting existed (e.g. revisions) accepts it:
  nothing finished is redone except the report."""
  smoke = reproduce.get_preset("smoke")
  saved = json.loads(json.dumps(smoke.to_dict()))
  del saved["revisions"]
  (tmp_path / "preset.json").write_text(json.dumps(saved))
  (tmp_path / "stages").mkdir()
  for stage in ("sweep", "report"):
    (tmp_path / "stages" / f"{stage}.json").write_text("{}")
  reproduce.check_preset(str(tmp_path), smoke)
  assert sorted(os.listdir(tmp_path / "stages")) == ["sweep.json"]
  assert json.loads((tmp_path / "preset.json").read_text())["revisions"] is not None
  import dataclasses
  with pytest.raises(ValueError, match="questions"):
    reproduce.check_preset(str(tmp_path), dataclasses.replace(smoke, questions=30))
  # few_compiles changes how the sweep compiles, not its lines: not pinned.
  reproduce.check_preset(str(tmp_path), dataclasses.replace(smoke, few_compiles=False))
  assert json.loads((tmp_path / "preset.json").read_text())["few_compiles"] is False
  assert sorted(os.listdir(tmp_path / "stages")) == ["sweep.json"]
