"""The promotion gate: a candidate must earn `champion` on the backtest, against both the naive
baselines and the current champion, and the decision keeps its reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ChampionComparison:
    """The champion and the candidate judged on the same recent backtest rows."""

    version: str
    champion_wql: float
    candidate_wql: float
    folds: list[int]
    note: str = ""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]
    candidate_wql: float
    best_baseline: str
    best_baseline_wql: float
    gain_vs_baseline: float  # 1 - candidate / best baseline
    champion: ChampionComparison | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    candidate_wql: float,
    baseline_wqls: dict[str, float],
    min_gain: float,
    champion: ChampionComparison | None,
) -> GateDecision:
    """Promote only if wQL beats the best baseline by >= `min_gain` and is not worse than the champion."""
    if not baseline_wqls:
        raise ValueError("the gate needs at least one baseline")
    best = min(baseline_wqls, key=lambda k: baseline_wqls[k])
    best_wql = baseline_wqls[best]
    gain = 1.0 - candidate_wql / best_wql if best_wql > 0 else float("-inf")
    reasons = []
    ok_baseline = gain >= min_gain
    reasons.append(
        f"wQL {candidate_wql:.4f} vs best baseline {best} {best_wql:.4f}: gain {gain:+.1%} "
        f"{'>=' if ok_baseline else '<'} required {min_gain:.1%}"
    )
    ok_champion = True
    if champion is None:
        reasons.append("no current champion")
    else:
        ok_champion = champion.candidate_wql <= champion.champion_wql
        reasons.append(
            f"on folds {champion.folds}: wQL {champion.candidate_wql:.4f} "
            f"{'<=' if ok_champion else '>'} champion v{champion.version} {champion.champion_wql:.4f}"
            + (f" ({champion.note})" if champion.note else "")
        )
    return GateDecision(ok_baseline and ok_champion, reasons, candidate_wql, best, best_wql, gain, champion)
