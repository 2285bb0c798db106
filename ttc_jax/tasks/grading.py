r"""Final-answer extraction and grading for MATH-style and GSM8K-style answers.

MATH: the answer is the content of the last `\boxed{...}` (or `\fbox{...}`,
`\boxed 5`), else what follows the last "The answer is". Two answers are equal
when their normalised strings match (the fast path) or, failing that, when
math-verify finds them equivalent (sympy; gold first). sympy can hang on a
pathological expression, so `Grader` runs math-verify in a persistent worker
process and kills it when one answer runs past `timeout_s` (that answer counts
as wrong).

GSM8K: the number after "####", else after "The answer is", else in the last
`\boxed{}`; compared numerically (exact for integer references).
"""

from __future__ import annotations

import concurrent.futures
import decimal
import math
import multiprocessing
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

# ---------------------------------------------------------------- extraction

# `\boxed` / `\fbox`, not a longer command such as `\boxedfoo`.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS_RE = re.compile(r"answer is\s*:?", re.IGNORECASE)


def _braced_group(text: str, start: int) -> int | None:
    r"""Index just past the group opened by text[start] == "{"; None if unclosed.

    Escaped braces (`\{`, `\}`) are literal and do not count.
    """
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` / `\fbox{...}` / `\boxed 5` in text.

    None when there is none, or when the last one is unclosed (a completion
    cut mid-answer has no final answer, even if an earlier box closed).
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        end = _braced_group(text, i)
        return None if end is None else text[i + 1:end - 1]
    token = re.match(r"[^\s$]+", text[i:])
    return token.group() if token else None


def _strip_answer_text(text: str) -> str:
    """Drops surrounding spaces and `$`, and one trailing period."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    text = text.strip().strip("$").strip()
    if text.endswith("."):  # "$5$."
        text = text[:-1].rstrip()
    return text


def answer_is_text(text: str) -> str | None:
    """The rest of the line after the last "The answer is" (or "answer is:")."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].split("\n", 1)[0]
    rest = _strip_answer_text(rest)
    return rest or None


def extract_math_answer(text: str) -> str | None:
    r"""The raw final answer of a MATH-style completion; None when there is none."""
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return answer_is_text(text)


# ---------------------------------------------------------------- MATH normalisation

_UNIT_RE = re.compile(
    r"\\(?:text|textrm|mbox|mathrm)\{\s*[A-Za-z][A-Za-z ]*\}(?:\s*\^\s*\{?\d\}?)?\s*$")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf)\{([^{}]*)\}")
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_THIN_SPACE_RE = re.compile(r"\\[,;:]|\\quad|\\qquad")
_ASSIGNMENT_RE = re.compile(r"^\s*(?:[A-Za-z]|\\[A-Za-z]+)\s*=\s*")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def clean_math_answer(answer: str) -> str:
    r"""Removes decoration that never changes a MATH answer's value; keeps spaces.

    `$`, `\!` and other thin spaces, `\left`/`\right`, `\dfrac`/`\tfrac`,
    degree signs, percent signs, a trailing unit in `\text{}`, `\text{}`-style
    wrappers, a single-variable assignment `x = ...` and a trailing period.
    """
    s = answer.replace("\n", " ").strip()
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\!", "")  # a negative space, as in 32,\!348
    s = _THIN_SPACE_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    unit = _UNIT_RE.search(s)
    # A unit only follows a value ("5\text{ cm}"); "\text{east}" alone is the answer.
    if unit is not None and s[:unit.start()].strip():
        s = s[:unit.start()]
    s = _TEXT_WRAPPER_RE.sub(r"\1", s)
    if s.count("=") == 1:
        s = _ASSIGNMENT_RE.sub("", s)
    s = s.strip()
    if s.endswith("."):
        s = s[:-1]
    return s.strip()


def _brace_single_args(s: str, command: str, n_args: int) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\sqrt2` -> `\sqrt{2}` (spaces already removed)."""
    out = []
    i = 0
    while True:
        j = s.find(command, i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j + len(command)
        if k < len(s) and s[k].isalpha():  # a longer command, e.g. \fracx is not ours
            out.append(s[i:k])
            i = k
            continue
        out.append(s[i:k])
        for _ in range(n_args):
            if k >= len(s):
                break
            if s[k] == "{":
                end = _braced_group(s, k)
                if end is None:
                    break
                out.append(s[k:end])
                k = end
            elif s[k] in "[\\":  # optional argument or a command: leave as is
                break
            else:
                out.append("{" + s[k] + "}")
                k += 1
        i = k


def normalize_math_answer(answer: str) -> str:
    """Canonical string of a MATH answer, for the exact-match fast path."""
    s = clean_math_answer(answer)
    s = re.sub(r"\s+", "", s)
    s = _brace_single_args(s, "\\frac", 2)
    s = _brace_single_args(s, "\\sqrt", 1)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)  # ".5" -> "0.5"
    s = re.sub(r"^(-?\d+)\.0+$", r"\1", s)  # "5.00" -> "5"
    choice = re.fullmatch(r"\(([A-Z])\)", s)  # "(C)" -> "C"
    return choice.group(1) if choice else s


def _is_word(s: str) -> bool:
    # Words ("Evelyn", "even") would parse as products of symbols, equal up
    # to anagrams; the string comparison decides for them.
    return len(s) > 1 and s.replace(" ", "").isalpha()


def math_equal(pred: str, ref: str) -> bool:
    """Whether a predicted MATH answer equals the reference answer.

    Normalised string equality first, else math-verify (gold = ref). Runs in
    the calling process: use `Grader` for a hard timeout. Never raises.
    """
    try:
        if normalize_math_answer(pred) == normalize_math_answer(ref):
            return True
        pred_clean, ref_clean = clean_math_answer(pred), clean_math_answer(ref)
        if not pred_clean or not ref_clean or _is_word(pred_clean) or _is_word(ref_clean):
            return False
        from math_verify import parse, verify  # sympy: slow to import, so only when needed

        # math-verify's own timeouts use SIGALRM, which only the main thread may set.
        limit = 5 if threading.current_thread() is threading.main_thread() else None
        gold = parse(f"${ref_clean}$", parsing_timeout=limit)
        target = parse(f"${pred_clean}$", parsing_timeout=limit)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=limit))
    except Exception:  # a parser error on odd input is a wrong answer, not a crash
        return False


# ---------------------------------------------------------------- GSM8K

_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_DIGIT_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_HASHES_RE = re.compile(r"####")


def canonical_number(text: str) -> str | None:
    """The first number in text as a canonical string ("1,250.50" -> "1250.5").

    Ignores `$`, thousands commas and what follows the number (units, a
    period); None when text holds no number.
    """
    s = text.replace("\\$", "").replace("$", "").replace("\u2212", "-")
    s = _DIGIT_COMMA_RE.sub("", s)
    match = _NUMBER_RE.search(s)
    if match is None:
        return None
    number = match.group()
    negative = number.startswith("-")
    digits = number.lstrip("-")
    whole, _, frac = digits.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    digits = whole + ("." + frac if frac else "")
    return ("-" if negative and digits != "0" else "") + digits


def extract_gsm8k_answer(text: str) -> str | None:
    """The canonical number of a GSM8K completion; None when there is none."""
    hashes = list(_HASHES_RE.finditer(text))
    candidates = []
    if hashes:
        candidates.append(text[hashes[-1].end():].split("\n", 1)[0])
    candidates.append(answer_is_text(text))
    candidates.append(last_boxed(text))
    for candidate in candidates:
        number = canonical_number(candidate) if candidate else None
        if number is not None:
            return number
    return None


def gsm8k_equal(pred: str | None, ref: str) -> bool:
    """Numeric equality: exact when the reference is an integer, else rel. tol. 1e-6."""
    try:
        a = canonical_number(pred) if pred is not None else None
        b = canonical_number(ref)
        if a is None or b is None:
            return False
        if "." not in b:
            return decimal.Decimal(a) == decimal.Decimal(b)
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)
    except Exception:  # e.g. an absurdly long number string
        return False


# ---------------------------------------------------------------- the timed worker

_READY = "ready"
_MAX_CACHE = 200_000


def _worker_main(conn: Any, compare: Callable[[str, str], bool], warm_up: bool) -> None:
    """Answers (pred, ref) requests with compare(pred, ref) until EOF or None."""
    if warm_up:  # imports and first-parse setup, so no answer pays for them
        compare("\\frac{1}{2}", "0.5")
    conn.send(_READY)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            result = bool(compare(*request))
        except Exception:
            result = False
        conn.send(result)


def _stop_worker(process: Any, conn: Any) -> None:
    try:
        conn.close()
    except OSError:
        pass
    if process.is_alive():
        process.kill()
    process.join(timeout=5)


class _TimedWorker:
    """One worker process answering compare(pred, ref), killed (and restarted on
    the next request) past the per-answer timeout. Counts its timeouts,
    crashes and restarts. One request at a time."""

    def __init__(self, timeout_s: float, compare: Callable[[str, str], bool],
                 start_method: str, startup_timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.compare = compare
        self.start_method = start_method
        self.startup_timeout_s = startup_timeout_s
        self.timed_out = 0
        self.crashed = 0
        self.restarts = 0
        self._process: Any = None
        self._conn: Any = None
        self._finalizer: Any = None

    # A copy (pickle, deepcopy) gets its own process, started when first needed.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_process": None, "_conn": None, "_finalizer": None}

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # sends nothing: a kill is as good as a goodbye here
        self._process = self._conn = self._finalizer = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context(self.start_method)
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, name="ttc-grader",
                              args=(child, self.compare, self.compare is math_equal), daemon=True)
        process.start()
        child.close()
        self._process, self._conn = process, parent
        self._finalizer = weakref.finalize(self, _stop_worker, process, parent)
        try:
            ready = parent.poll(self.startup_timeout_s) and parent.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.close()
            raise RuntimeError(f"the grading worker did not start within {self.startup_timeout_s} s")

    def ask(self, pred: str, ref: str) -> bool:
        if self._process is None:
            self._start()
        try:
            self._conn.send((pred, ref))
            if self._conn.poll(self.timeout_s):
                return bool(self._conn.recv())
            self.timed_out += 1
        except (EOFError, OSError):  # the worker died (e.g. sympy blew the C stack)
            self.crashed += 1
        self.close()
        self.restarts += 1
        return False


class Grader:
    """MATH answer grading with a hard per-answer timeout.

    The normalised-string fast path runs here; anything else goes to worker
    processes running `compare` (default `math_equal`). An answer that takes
    longer than `timeout_s` kills its worker (restarted on the next request)
    and counts as wrong; `timed_out` counts such answers and `crashed`
    answers whose worker died. Results are cached per (pred, ref).
    `grade_many` spreads its distinct uncached answers over `workers`
    processes at once (math-verify is single-threaded Python: ~13 ms per
    answer, BUILD_NOTES.md); `grade` uses one. Not thread-safe; use one
    Grader per thread.

    start_method: "spawn" (default; safe next to JAX's threads) or "fork" /
    "forkserver". compare must be picklable (a module-level function).
    """

    def __init__(self, timeout_s: float = 5.0, *,
                 compare: Callable[[str, str], bool] = math_equal, workers: int = 1,
                 start_method: str = "spawn", startup_timeout_s: float = 120.0) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"start_method {start_method!r} is not one of "
                             f"{multiprocessing.get_all_start_methods()}")
        self.timeout_s = float(timeout_s)
        self._cache: dict[tuple[str, str], bool] = {}
        # Started lazily: a run whose answers all match as strings starts none.
        self._workers = [_TimedWorker(self.timeout_s, compare, start_method, startup_timeout_s)
                         for _ in range(workers)]

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def timed_out(self) -> int:
        return sum(w.timed_out for w in self._workers)

    @property
    def crashed(self) -> int:
        return sum(w.crashed for w in self._workers)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self._workers)

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the workers (a later `grade` starts new ones)."""
        for worker in self._workers:
            worker.close()

    def _fast(self, pred: str | None, ref: str) -> bool | None:
        """The answer without a worker (None: ask one)."""
        if pred is None:
            return False
        cached = self._cache.get((pred, ref))
        if cached is not None:
            return cached
        try:
            if normalize_math_answer(pred) == normalize_math_answer(ref):
                return True
        except Exception:
            pass
        return None

    def _remember(self, key: tuple[str, str], result: bool) -> None:
        if len(self._cache) >= _MAX_CACHE:
            self._cache.clear()
        self._cache[key] = result

    def grade(self, pred: str | None, ref: str) -> bool:
        """Whether pred equals ref (None or an unparsable pred: False)."""
        result = self._fast(pred, ref)
        if result is None:
            result = self._workers[0].ask(pred, ref)
        if pred is not None:
            self._remember((pred, ref), result)
        return result

    def grade_many(self, pairs: Iterable[tuple[str | None, str]]) -> list[bool]:
        """`grade` over (pred, ref) pairs, in order; the distinct pairs that need
        math-verify are split over the workers, which run at the same time."""
        pairs = list(pairs)
        results = [self._fast(pred, ref) for pred, ref in pairs]
        asks = list(dict.fromkeys(pair for pair, r in zip(pairs, results) if r is None))
        answers: dict[tuple[str, str], bool] = {}
        if asks:
            used = self._workers[:min(len(self._workers), len(asks))]
            # One thread per worker process: each waits on its own pipe.
            with concurrent.futures.ThreadPoolExecutor(len(used)) as pool:
                shares = pool.map(lambda k: [(pair, used[k].ask(*pair))
                                             for pair in asks[k::len(used)]], range(len(used)))
                for share in shares:
                    answers.update(share)
        out = []
        for (pred, ref), result in zip(pairs, results):
            result = answers[(pred, ref)] if result is None else result
            if pred is not None:
                self._remember((pred, ref), result)
            out.append(result)
        return out
