"""The alarm policy (CloudWatch alarm of the AWS original): breaches of the hourly wQL threshold,
an alarm after N consecutive breaches.

A breach is a judged hour whose wQL exceeds `settings.monitoring.wql_threshold`. Breaches are
consecutive when they are adjacent judged hours served by the same model version: a new champion
starts with a clean slate, and so does the count after each alarm (one alarm per streak of N).
Every breach and alarm is an event in the shared event log, keyed by its hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rtml.config import Settings
from rtml.contracts import datetime_to_ms
from rtml.monitoring.evaluate import HourVerdict, QualityBackend
from rtml.monitoring.events import EventBackend


@dataclass(frozen=True)
class Judgement:
    """What judging new hours found: the verdicts, in hour order, and whether an alarm went off."""

    verdicts: list[HourVerdict]
    alarm: bool


def streak(history: list[HourVerdict], after_ms: int) -> int:
    """Trailing consecutive breaches of the last hour's model version, counting only hours after `after_ms`."""
    if not history:
        return 0
    version = history[-1].model_version
    count = 0
    for verdict in reversed(history):
        if not verdict.breach or verdict.model_version != version or datetime_to_ms(verdict.hour) <= after_ms:
            break
        count += 1
    return count


def judge_hours(settings: Settings, hourly: pd.DataFrame, store: QualityBackend, events: EventBackend) -> Judgement:
    """Judge each hour of `hourly` (from `hourly_quality`, closed hours only) not judged before.

    Records `monitor.breach` for each breach and `monitor.alarm` when the streak reaches
    `settings.monitoring.breaches_for_alarm`.
    """
    policy = settings.monitoring
    last = store.last_hour()
    verdicts: list[HourVerdict] = []
    alarm = False
    for row in hourly.sort_values("hour").itertuples(index=False):
        hour = pd.Timestamp(row.hour).to_pydatetime()
        if last is not None and hour <= last:
            continue
        verdict = HourVerdict(
            hour=hour,
            n=int(row.n),
            wql=float(row.wql),
            mae=float(row.mae),
            coverage=float(row.coverage),
            model_version=str(row.model_version),
            breach=bool(row.wql > policy.wql_threshold),
        )
        verdicts.append(verdict)
        if not verdict.breach:
            store.put(verdict)
            continue
        # The last alarm before this hour (a re-run after a crash finds this hour's own alarm too).
        alarms = [
            a for a in events.recent(limit=2, prefix="monitor.alarm") if a.details["hour_ms"] < datetime_to_ms(hour)
        ]
        after_ms = int(alarms[-1].details["hour_ms"]) if alarms else -1
        count = streak([*store.hours(limit=policy.breaches_for_alarm), verdict], after_ms)
        details = {
            "hour": hour.isoformat(),
            "hour_ms": datetime_to_ms(hour),
            "wql": round(verdict.wql, 5),
            "threshold": policy.wql_threshold,
            "mae": round(verdict.mae, 3),
            "coverage": round(verdict.coverage, 4),
            "n": verdict.n,
            "model_version": verdict.model_version,
            "consecutive": count,
        }
        # Events before the verdict is stored: a crash in between judges the hour again, and the
        # keyed events are then recorded once.
        events.record("monitor.breach", key=f"monitor.breach@{details['hour_ms']}", **details)
        if count >= policy.breaches_for_alarm:
            events.record("monitor.alarm", key=f"monitor.alarm@{details['hour_ms']}", **details)
            alarm = True
        store.put(verdict)
    return Judgement(verdicts, alarm)
