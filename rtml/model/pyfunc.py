"""The MLflow pyfunc face of the fee forecaster ("models from code": MLflow runs this file when
it loads the model, so nothing is unpickled). For anyone loading the model with plain MLflow;
rtml's own serving loads the LightGBM files directly (see `registry.load_champion`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from rtml.model.registry import load_forecaster

OUTPUT_COLUMNS = ["p10", "p50", "p90"]


class FeeForecasterPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """Feature rows in (the columns of the signature), P10/P50/P90 of fee_avg_sat out (a model or a
    calibrated baseline: the version's `kind` tag says which)."""

    def load_context(self, context: Any) -> None:
        self.model = load_forecaster(Path(context.artifacts["model_dir"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return pd.DataFrame(self.model.predict(model_input), columns=OUTPUT_COLUMNS)


mlflow.models.set_model(FeeForecasterPyfunc())
