"""Where the drift check reads its inputs; the only place that knows the other parts' readers.

Minutes come from the feature store's offline store (falling back to the aggregation engine's
sink when there is no feature store), transactions from the raw archive, the reference
window from the model registry. Any reader that is absent or fails yields None: the check
then reports "skipped: no data" for what depends on it instead of crashing the hourly job.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rtml.config import Settings
from rtml.quality.results import TimeRange

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("rtml.quality")

# Wide enough to hold all data when asking for the span of what exists.
_EPOCH = datetime(2009, 1, 3, tzinfo=UTC)
_FAR = datetime(2100, 1, 1, tzinfo=UTC)


def _call(readers: tuple[Callable[..., Any], ...], *args: Any) -> Any:
    """The first non-empty answer of the readers, in order; None when none has data."""
    for func in readers:
        try:
            found = func(*args)
        except Exception as exc:  # a missing store or empty lake is "no data", not a crash
            log.warning("%s.%s failed: %s", func.__module__, func.__qualname__, exc)
            continue
        if found is not None and len(found):
            return found
    return None


def _utc(frame: pd.DataFrame, column: str) -> None:
    import pandas as pd

    frame[column] = pd.to_datetime(frame[column], utc=True)


def read_minutes(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame | None:
    """Minutes whose start lies in [start, end), latest revision each, or None when nothing is there."""
    import pandas as pd

    from rtml.aggregate.sinks import read_minutes as engine_minutes
    from rtml.features.offline import read_minutes_df

    # In order of preference: the feature store's offline minutes, then the aggregation engine's table.
    frame = _call((read_minutes_df, engine_minutes), settings, start, end)
    if frame is None:
        return None
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame([_as_dict(row) for row in frame])
    if frame.empty:
        return None
    frame = frame.copy()
    _utc(frame, "minute")
    frame = frame[(frame["minute"] >= pd.Timestamp(start)) & (frame["minute"] < pd.Timestamp(end))]
    if "revision" in frame.columns:
        frame = frame.sort_values(["minute", "revision"]).drop_duplicates("minute", keep="last")
    return frame.reset_index(drop=True) if len(frame) else None


def _as_dict(row: Any) -> dict[str, Any]:
    """A row from a reader that yields records (dataclasses, mappings) rather than a frame."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    return dict(row)


def read_tx(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame | None:
    """Archived transactions in [start, end) with at least `fee_sat` and `size`, or None."""
    import pandas as pd

    from rtml.archive.parquet_lake import read_events

    events = _call((read_events,), settings, start, end)
    if events is None:
        return None
    if not isinstance(events, pd.DataFrame):
        events = pd.DataFrame([_as_dict(e) for e in events])
    if events.empty or not {"fee_sat", "size"} <= set(events.columns):
        return None
    return events


def data_span(settings: Settings) -> tuple[datetime, datetime] | None:
    """(start of the first minute, end of the newest minute) of the data there is, or None."""
    frame = read_minutes(settings, _EPOCH, _FAR)
    if frame is None:
        return None
    first = frame["minute"].min().to_pydatetime()
    last = frame["minute"].max().to_pydatetime() + timedelta(minutes=1)
    return first, last


def champion_training_window(settings: Settings) -> TimeRange | None:
    """The training window the model registry recorded for the champion, or None without one."""
    from rtml.model.registry import champion_training_window as registry_window

    if not _registry_exists(settings):
        return None
    found = _call((registry_window,), settings)
    if not found:
        return None
    start, end = found
    return TimeRange(_as_utc(start), _as_utc(end))


def _registry_exists(settings: Settings) -> bool:
    from rtml.model.registry import registry_exists

    try:
        return registry_exists(settings)
    except Exception as exc:  # PostgreSQL down: no reference from the registry this time
        log.warning("model registry unavailable: %s", exc)
        return False


def _as_utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
