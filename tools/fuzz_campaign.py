#!/usr/bin/env python
"""A long fuzzing campaign with the generator of tests/test_fuzz.py.

Every example is a random graph (see ``graph_cases`` there) pruned at a random ratio, criterion
and round-to, and checked against the zeroed-channel oracle. Failures do not stop the campaign:
each is counted by kind and its reproducing builder snippet is printed (and written to
``--save-dir`` if given). At the end the counts are printed as a table.

Usage::

    python tools/fuzz_campaign.py [--examples 2000] [--seed 0] [--max-blocks 6] [--save-dir DIR] [--external-data]

``--external-data`` also saves every example with its tensors in an external data file, prunes
it on the large-model path (weights read on demand, streamed out) and checks the result equals
the in-memory one bit for bit.

A float32 mismatch that the float64 re-check confirms as rounding is counted, not failed (see
``check_case``). The exit status is 1 if any example failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz  # noqa: E402
from conftest import random_feeds, session  # noqa: E402
from large_model import check_lazy_path  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


class GeneratorError(Exception):
    """The generated model itself does not run."""


class LazyPathError(Exception):
    """Pruning the example from external data gave another model than pruning it in memory."""


def failure_kind(exc: BaseException) -> str:
    """Which check an example failed."""
    from onnxprune.errors import RewriteError

    text = str(exc)
    if isinstance(exc, GeneratorError):
        return "generator: the original model does not run"
    if isinstance(exc, RewriteError):
        return "rewrite: pruned model failed validation"
    if isinstance(exc, LazyPathError):
        return "external data: large-model path differs from in-memory"
    if isinstance(exc, AssertionError):
        if "Not equal to tolerance" in text or "Mismatched elements" in text:
            return "oracle mismatch"
        if "shape" in text:
            return "output shape changed"
        return "assertion: " + (text.strip().splitlines() or ["?"])[0][:60]
    module = type(exc).__module__ or ""
    if "onnxruntime" in module:
        return "onnxruntime refused a model"
    if "checker" in module or type(exc).__name__ == "ValidationError":
        return "onnx checker failure"
    return f"exception: {type(exc).__name__}"


class Tally:
    def __init__(self):
        self.graphs = 0
        self.graphs_pruned = 0
        self.graphs_nothing_prunable = 0
        self.groups = 0
        self.prunable = 0
        self.refused_total = 0
        self.rounding = 0
        self.groups_pruned = 0
        self.channels_removed = 0
        self.refused: Counter = Counter()
        self.failures: Counter = Counter()
        self.failed_examples: list[tuple[str, str, str]] = []
        self.opsets: Counter = Counter()
        self.criteria: Counter = Counter()
        self.external_checked = 0

    def table(self, elapsed: float) -> str:
        rows = [
            ("graphs generated", self.graphs),
            ("graphs where something was pruned", self.graphs_pruned),
            ("graphs with no prunable group", self.graphs_nothing_prunable),
            ("groups found", self.groups),
            ("groups prunable", self.prunable),
            ("groups pruned", self.groups_pruned),
            ("channels removed", self.channels_removed),
            ("groups refused (total)", self.refused_total),
        ]
        rows += [(f"  refused: {cat}", n) for cat, n in self.refused.most_common()]
        rows.append(("float32 misses that float64 confirmed as rounding", self.rounding))
        if self.external_checked:
            rows.append(("equal when pruned from external data", self.external_checked))
        rows.append(("failures (total)", sum(self.failures.values())))
        rows += [(f"  failed: {kind}", n) for kind, n in self.failures.most_common()]
        rows.append(("opsets", ", ".join(f"{k}: {v}" for k, v in sorted(self.opsets.items()))))
        rows.append(("criteria", ", ".join(f"{k}: {v}" for k, v in sorted(self.criteria.items()))))
        rows.append(("elapsed", f"{elapsed:.1f} s"))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value:>8}" if isinstance(value, int) else f"{name:<{width}}  {value}"
                         for name, value in rows)

    def add(self, outcome) -> None:
        self.groups += outcome.groups
        self.prunable += outcome.prunable
        self.groups_pruned += outcome.pruned_groups
        self.channels_removed += outcome.removed
        self.graphs_pruned += outcome.removed > 0
        self.graphs_nothing_prunable += outcome.prunable == 0
        self.refused.update(outcome.refused)
        self.refused_total += outcome.groups - outcome.prunable
        self.rounding += outcome.float32_rounding


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="graphs to generate (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    ap.add_argument("--max-blocks", type=int, default=6, help="most blocks per graph (default 6)")
    ap.add_argument("--save-dir", type=Path, help="write a reproducing snippet per failure here")
    ap.add_argument("--progress", type=int, default=100, help="print a line every N examples (0: never)")
    ap.add_argument("--external-data", action="store_true",
                    help="also prune each example from external data on the large-model path and compare")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    tally = Tally()
    start = time.perf_counter()
    examples = test_fuzz.fuzz_examples(args.max_blocks)

    def record_failure(kind: str, snippet: str, exc: BaseException) -> None:
        tally.failures[kind] += 1
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]
        tally.failed_examples.append((kind, snippet, detail))
        comment = "\n".join(f"# {line}" for line in [kind, *detail.splitlines()])
        print(f"\n--- failure #{len(tally.failed_examples)}\n{comment}\n{snippet}\n", flush=True)
        if args.save_dir:
            args.save_dir.mkdir(parents=True, exist_ok=True)
            (args.save_dir / f"failure_{len(tally.failed_examples):04d}.py").write_text(f"{comment}\n{snippet}\n")

    @settings(max_examples=args.examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(args.seed)
    @given(st.data())
    def campaign(data):
        try:  # drawn here, so that an error in the generator is counted like any other
            case, ratio, criterion, round_to = data.draw(examples)
        except Exception as exc:  # noqa: BLE001 - Hypothesis's own control flow is not an Exception
            tally.graphs += 1
            record_failure("generator: could not build a valid model", "# (no snippet)", exc)
            return
        tally.graphs += 1
        tally.opsets[case.opset] += 1
        tally.criteria[criterion] += 1
        snippet = f"{case.code}\n# ratio={ratio!r}, criterion={criterion!r}, round_to={round_to!r}"
        try:
            try:  # a model the generator got wrong is not the pruner's failure
                sess = session(case.model)
                sess.run(None, random_feeds(sess))
            except Exception as exc:  # noqa: BLE001
                raise GeneratorError(str(exc)) from exc
            outcome = test_fuzz.check_case(case, ratio, criterion, round_to)
            if args.external_data:
                with tempfile.TemporaryDirectory(prefix="onnxprune-fuzz-") as tmp:
                    try:
                        check_lazy_path(case.model, tmp, ratio=ratio, criterion=criterion, round_to=round_to)
                    except Exception as exc:  # noqa: BLE001
                        raise LazyPathError(f"{type(exc).__name__}: {exc}") from exc
                tally.external_checked += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the campaign
            record_failure(failure_kind(exc), snippet, exc)
        else:
            tally.add(outcome)
        if args.progress and tally.graphs % args.progress == 0:
            print(f"[{tally.graphs}/{args.examples}] {time.perf_counter() - start:.0f} s, "
                  f"{sum(tally.failures.values())} failures", flush=True)

    campaign()
    print()
    print(tally.table(time.perf_counter() - start))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
