"""report.md and its plots from experiments/reproduce.py's results dict (no computation here)."""

from __future__ import annotations

import os

MAJORITY = "best_of_n:majority"


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


SQRT_BEAM = "beam[m=sqrt N]:weighted:last"


def plotted_curves(strategies: dict) -> list[str]:
  """The curves the accuracy plots and table show: every method with
  weighted best-of-N selection (`last` score) that ran at two budgets or
  more, majority voting, and M = sqrt(N) beam search as one curve
  (`with_sqrt_beam`; its per-M strategies have one budget each)."""
  def budgets_run(name):
    return sum(v is not None for v in strategies[name]["all"])
  names = [n for n in strategies
           if n.endswith(":weighted:last") and n != SQRT_BEAM and budgets_run(n) >= 2]
  names.sort(key=lambda n: (not n.startswith("best_of_n"), n))
  return names + [n for n in (MAJORITY, SQRT_BEAM) if n in strategies]


def with_sqrt_beam(strategies: dict, budgets: list[int]) -> dict:
  """`strategies` plus the paper's M = sqrt(N) beam search as one curve: the
  sweep holds it as one strategy per M (beam[m=2] at N=4, beam[m=4] at N=16, ...)."""
  def at(budget, key, b=None):
    root = int(round(budget ** 0.5))
    row = strategies.get(f"beam[m={root}]:weighted:last") if root * root == budget else None
    if row is None:
      return None
    j = budgets.index(budget)
    return row[key][j] if b is None else row[key][b][j]
  if not any(at(budget, "all") is not None for budget in budgets):
    return strategies
  n_bins = len(next(iter(strategies.values()))["bins"])
  curve = {"all": [at(budget, "all") for budget in budgets],
           "bins": [[at(budget, "bins", b) for budget in budgets] for b in range(n_bins)]}
  return {**strategies, SQRT_BEAM: curve}


def write_plots(results: dict, out_dir: str) -> list[str]:
  """The report's PNGs (file names in out_dir)."""
  from ttc_jax.analysis import plots
  analysis = results["analysis"]
  budgets = analysis["budgets"]
  strategies = with_sqrt_beam(analysis["strategies"], budgets)
  names = plotted_curves(strategies)
  files = []

  def path(name: str) -> str:
    files.append(name)
    return os.path.join(out_dir, name)

  plots.accuracy_vs_budget(budgets, {n: strategies[n]["all"] for n in names},
                           path("accuracy_vs_budget.png"),
                           title="Accuracy vs generation budget (all questions)")
  bins = analysis["bins"]["oracle"]
  labels = [f"bin {b + 1} (pass@1 {lo:.2f}-{hi:.2f})"
            for b, (lo, hi) in enumerate(bins["value_ranges"])]
  plots.per_bin_panels(budgets, {n: strategies[n]["bins"] for n in names},
                       path("accuracy_by_difficulty_bin.png"),
                       title="Accuracy vs budget per oracle difficulty bin (1 = easiest)",
                       bin_labels=labels)
  co = analysis["compute_optimal"]
  curves = {f"compute-optimal ({k} bins)": co[k]["accuracy"] for k in ("oracle", "predicted")}
  if analysis.get("router"):
    router = analysis["router"]
    curves[f"router (best-of-{router['probe_generations']} probe counted)"] = (
        router["cost"], router["accuracy"])
  plots.compute_optimal_vs_baseline(budgets, strategies[analysis["baseline"]]["all"], curves,
                                    path("compute_optimal_vs_best_of_n.png"),
                                    title="Compute-optimal vs best-of-N weighted",
                                    efficiency=co["oracle"]["efficiency"])
  plots.flops_matched_bars(results["flops_matched"]["rows"], path("flops_matched.png"),
                           title="Small model + test-time compute vs ~14x larger model "
                                 "(matched FLOPs)")
  revisions = results.get("revisions")
  if revisions:
    sel = revisions["selection"]
    curves = {f"revisions {r} ({sel})": revisions["ratios"][r][sel]
              for r in revisions["ratio_order"] if sel in revisions["ratios"][r]}
    co = revisions["compute_optimal"]
    if co:
      curves["compute-optimal revisions (oracle bins)"] = _on_budgets(
          co["oracle"]["accuracy"], co["budgets"], revisions["budgets"])
    curves["best-of-N weighted (policy)"] = _on_budgets(
        strategies[analysis["baseline"]]["all"], budgets, revisions["budgets"])
    plots.accuracy_vs_budget(
        revisions["budgets"], curves, path("revisions_vs_budget.png"),
        title="Sequential revisions: accuracy vs budget per sequential:parallel ratio (L:P)")
  return files


def _on_budgets(values: list, have: list[int], want: list[int]) -> list:
  """`values` over budgets `have`, placed on `want` (None where missing)."""
  at = dict(zip(have, values))
  return [at.get(b) for b in want]


def _models_section(results: dict) -> list[str]:
  models, quality = results["models"], results["quality"]
  small, large = models["small"], models["large"]
  verifier = models["verifier"]
  q = quality["policy"]
  v = quality["verifier"]
  out = ["## Models", "",
         f"- Small policy: {small['params']:,} params ({small['non_embedding_params']:,} "
         f"non-embedding), eval loss {_fmt(small.get('eval_loss'))}.",
         f"- Large policy: {large['params']:,} params ({large['non_embedding_params']:,} "
         f"non-embedding), eval loss {_fmt(large.get('eval_loss'))}; size ratio "
         f"{models['size_ratio']:.2f}x (total params, as the FLOPs model counts them).",
         f"- Verifier: {verifier['verifier_params']:,} params, trained on {verifier['rows']:,} "
         f"rows to step {verifier['step']}.",
         f"- On {quality['questions']} questions x {quality['samples_per_question']} separate "
         f"samples of the small policy: pass@1 {q['pass_at_1']:.3f}, coverage "
         f"{q['coverage']:.3f}; large policy greedy {_fmt(quality.get('large_greedy'))}.",
         f"- Verifier on those samples (`{v['aggregation']}` score): within-question AUC "
         f"{_fmt(v['within_question_auc'])} ({v['within_question_pairs']:,} pairs), pooled AUC "
         f"{_fmt(v['pooled_auc'])}. Every search result below depends on it.", ""]
  rows = [[r["bin"], r["questions"], r["pass_at_1"], r["coverage"], r.get("large_greedy")]
          for r in quality["per_bin"]]
  out += [_table(["oracle bin", "questions", "small pass@1", f"small coverage@"
                  f"{quality['samples_per_question']}", "large greedy"], rows), ""]
  return out


def _findings_section(results: dict) -> list[str]:
  rows = []
  for f in results["findings"]:
    interval = "-" if f["interval"] is None else f"[{f['interval'][0]:.3f}, {f['interval'][1]:.3f}]"
    rows.append([f["claim"], f["paper"], f["measured"], interval, f"**{f['verdict']}**",
                 f"{f['rule']}{'; ' if f['rule'] and f['detail'] else ''}{f['detail']}"])
  return ["## Findings", "",
          "Each measured value is a mean per-question difference (or a budget ratio) with a 95% "
          "bootstrap interval over questions resampled within difficulty bins. Verdict: "
          "reproduced = the interval is on the paper's side; partly = only the point estimate "
          "is; not reproduced = the point estimate is not.", "",
          _table(["claim", "paper", "measured", "interval", "verdict", "rule; detail"], rows), ""]


def _strategies_section(results: dict) -> list[str]:
  analysis = results["analysis"]
  budgets = analysis["budgets"]
  strategies = with_sqrt_beam(analysis["strategies"], budgets)
  rows = [[n] + strategies[n]["all"] for n in plotted_curves(strategies)]
  co = analysis["compute_optimal"]
  rows += [[f"compute-optimal ({k} bins)"] + co[k]["accuracy"] for k in ("oracle", "predicted")]
  out = ["## Accuracy vs budget", "",
         f"{analysis['questions']} questions, seeds {results['preset']['seeds']} averaged; "
         "budget = generations (lookahead counts N (k + 1)).", "",
         _table(["strategy"] + [f"N={b}" for b in budgets], rows), "",
         "![accuracy vs budget](accuracy_vs_budget.png)", "",
         "![per bin](accuracy_by_difficulty_bin.png)", ""]
  return out


def _efficiency_section(results: dict) -> list[str]:
  analysis = results["analysis"]
  co = analysis["compute_optimal"]
  rows = []
  for k in ("oracle", "predicted"):
    for point, band in zip(co[k]["efficiency"], co[k]["efficiency_interval"]):
      rows.append([f"{k} bins", point["budget"], point["baseline_accuracy"],
                   point["matched_budget"], point["ratio"],
                   f"[{band['ratio_low']:.2f}, {band['ratio_high']:.2f}]"])
  router = analysis.get("router")
  if router:
    for point, band in zip(router["efficiency"], router["efficiency_interval"]):
      rows.append([f"router (probe {router['probe_generations']})", point["budget"],
                   point["baseline_accuracy"], point["matched_budget"], point["ratio"],
                   f"[{band['ratio_low']:.2f}, {band['ratio_high']:.2f}]"])
  return ["## Compute-optimal efficiency", "",
          f"For each budget B, the smallest budget at which compute-optimal selection (2-fold "
          f"cross-validated inside each bin) reaches best-of-N weighted's accuracy at B, and the "
          f"ratio (paper: ~4x). The router bins each prompt online by the mean verifier score of "
          f"its best-of-P probe, and its cost counts the P probe generations. Bin agreement "
          f"oracle vs predicted: {analysis['bins']['agreement']:.2f}.", "",
          _table(["selection", "B", "best-of-N acc", "matched at", "ratio", "95% interval"],
                 rows), "", "![compute-optimal](compute_optimal_vs_best_of_n.png)", ""]


def _flops_section(results: dict) -> list[str]:
  fm = results["flops_matched"]
  n_bins = len(fm["rows"][0]["bins"]) if fm["rows"] else 0
  rows = [[row["accounting"], row["r"], row["multiplier"], row["matched_budget"]] +
          [f"{_fmt(c['small'], 2)} / {_fmt(c['large'], 2)}" for c in row["bins"]]
          for row in fm["rows"]]
  return ["## FLOPs-matched comparison", "",
          f"Large/small params {fm['size_ratio']:.2f}x. The large model's pretraining + "
          "inference FLOPs (X = 6 N D_pretrain; Y = 2 N D_inference (v1) or 4 N D_inference "
          "(ICLR)) buy the small model a test-time multiplier K; it runs compute-optimal search "
          "at the largest swept budget <= K (\"-\": none fits), against the large model's "
          "greedy answer. Cells: small / large accuracy per oracle bin.", "",
          _table(["accounting", "R", "K", "budget"] + [f"bin {b + 1}" for b in range(n_bins)],
                 rows), "", "![FLOPs matched](flops_matched.png)", ""]


def render_report(results: dict) -> str:
  preset = results["preset"]
  walls = results.get("stage_wall_s", {})
  timing = ", ".join(f"{k} {v:.0f} s" for k, v in walls.items() if v is not None)
  lines = [f"# Reproduction: Snell et al. (2024) on the built-in task, preset `{preset['name']}`",
           "", f"Stage times: {timing}." if timing else "", ""]
  lines += _models_section(results)
  lines += _findings_section(results)
  lines += _strategies_section(results)
  lines += _efficiency_section(results)
  lines += _flops_section(results)
  lines += _revisions_section(results)
  return "\n".join(lines)


def _revisions_section(results: dict) -> list[str]:
  rev = results.get("revisions")
  if not rev:
    return ["## Revisions", "", "Not run in this reproduction (no revision lines).", ""]
  budgets, sel = rev["budgets"], rev["selection"]
  rows = [[r] + rev["ratios"][r][sel] for r in rev["ratio_order"] if sel in rev["ratios"][r]]
  out = ["## Revisions", "",
         "P parallel chains of L sequential revisions (N = L x P generations; ratio L:P, "
         "`seq` = one chain, `par` = N chains of one, i.e. best-of-N from the revision model). "
         f"Selection: {sel}, hierarchical (within each chain, then across chain winners). "
         "The PRM scores each attempt after the question alone.", ""]
  out += _revision_model_lines(results.get("models", {}).get("revision"))
  out += [_table(["ratio L:P"] + [f"N={b}" for b in budgets], rows), "",
          "![Revisions](revisions_vs_budget.png)", ""]
  co = rev["compute_optimal"]
  if co:
    eff = co["oracle"]["efficiency"][-1]
    reached = (f"is reached at {eff['matched_budget']} generations"
               if eff["matched_budget"] is not None else "is never reached within the budgets")
    out += [f"Compute-optimal revisions (oracle bins, 2-fold) vs {co['baseline']}: at N="
            f"{eff['budget']} the baseline's {eff['baseline_accuracy']:.3f} {reached}.", ""]
  by_bin = rev["best_ratio_by_bin"]
  out += ["Best ratio per oracle bin (1 = easiest) and budget:", "",
          _table(["bin"] + [f"N={b}" for b in budgets],
                 [[b] + [per.get(str(n)) for n in budgets] for b, per in by_bin.items()]), ""]
  chains = rev["chains"]
  if chains:
    steps = chains["pass_at_step"]
    out += [f"Longest chains ({chains['chain_length']} steps, {chains['lines']} lines): pass@1 "
            "per revision step:", "",
            _table([f"step {t + 1}" for t in range(len(steps))], [steps]), "",
            f"Correct answers revised into incorrect ones by the next step: "
            f"{chains['revised_to_incorrect']} of {chains['correct_with_next']} "
            f"({_fmt(chains['revised_to_incorrect_share'])}; the paper saw about 38%).", ""]
  return out


def _revision_model_lines(model: dict | None) -> list[str]:
  """How the revision model was made: fine-tuned (its held-out loss against the
  policy's, the chosen step) or the policy itself."""
  if not model:
    return []
  if not model.get("fine_tuned"):
    return ["Revision model: the policy itself (this preset does not fine-tune one).", ""]
  return [f"Revision model: the small policy fine-tuned on {model['train_rows']} revision "
          f"examples; held-out loss on revision targets {model['chosen_eval_loss']:.3f} at the "
          f"chosen step {model['chosen_step']} of {model['steps_trained']} (the policy's "
          f"{model['base_eval_loss']:.3f}); rule: {model['rule']}.", ""]
