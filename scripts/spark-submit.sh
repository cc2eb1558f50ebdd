#!/usr/bin/env bash
# Submit the rtml aggregation (rtml/aggregate/spark_job.py, through its entry point
# rtml/aggregate/commands.py, which wires its sinks) to a Spark cluster.
#
#   scripts/spark-submit.sh --master spark://host:7077 [--dry-run] [-- JOB ARGS]
#   scripts/spark-submit.sh --master yarn -- --drain --checkpoint hdfs:///rtml/checkpoint
#
# What it does:
#  1. Packs the executors' Python environment with venv-pack: a fresh venv holding rtml
#     (no dependencies) and only what the stream source needs on executors (pydantic for the
#     settings, redis + hiredis, pyarrow, pandas). Spark ships its own pyspark.zip to the
#     workers, so pyspark is not packed. Built once per rtml version, cached in dist/spark/.
#  2. Runs spark-submit in client deploy mode: the driver runs here, with this project's
#     .venv, and reads its configuration like every rtml command (rtml.toml, RTML_...
#     variables: profile, redis_url, window.allowed_lateness_s, ...). The driver keeps the
#     small window state beside a local checkpoint, or under the data directory for a
#     remote one, so run it where the data directory persists.
#  3. Ships the packed environment with --archives (unpacked as ./environment on every
#     executor) and points spark.pyspark.python at it.
#
# The executors read the stream directly: use the services profile (Redis Streams, reachable
# from the cluster). The embedded SQLite log is a local file, fine for local masters only.
# Executors must run Linux x86_64 with the same Python minor version (3.11) as this machine.
#
# Environment: SPARK_HOME (optional; else the spark-submit of the venv's pyspark),
# PYTHON (default .venv/bin/python), RTML_SPARK_DIST (default dist/spark).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
DIST="${RTML_SPARK_DIST:-$REPO/dist/spark}"
MASTER=""
DRY_RUN=0
JOB_ARGS=()
SUBMIT_ARGS=()

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --master) MASTER="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; JOB_ARGS=("$@"); break ;;
    *) SUBMIT_ARGS+=("$1"); shift ;;   # any other spark-submit option, e.g. --conf k=v
  esac
done
[ -n "$MASTER" ] || { echo "error: --master is required (spark://..., yarn, k8s://..., local[2])" >&2; usage 2; }

VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("rtml"))')"
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
ARCHIVE="$DIST/rtml-executor-env-$VERSION-py$PYVER.tar.gz"
# What executors import: rtml.aggregate.spark_source -> rtml.config (pydantic-settings), redis, pyarrow.
EXECUTOR_REQUIREMENTS=("pydantic>=2.7,<3" "pydantic-settings>=2.3,<3" "redis>=5" "hiredis" "pyarrow>=16,<26" "pandas>=2.2,<3" "numpy>=1.26,<3")

pack() {
  local build
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' RETURN
  "$PYTHON" -m venv "$build/env"
  "$build/env/bin/pip" install -q --upgrade pip
  "$build/env/bin/pip" install -q "${EXECUTOR_REQUIREMENTS[@]}" venv-pack
  "$build/env/bin/pip" install -q --no-deps "$REPO"   # a real install: venv-pack refuses editable ones
  mkdir -p "$DIST"
  "$build/env/bin/venv-pack" -q -p "$build/env" -o "$ARCHIVE.part" --format tar.gz --force
  mv "$ARCHIVE.part" "$ARCHIVE"
}

ENV_ARGS=(--archives "$ARCHIVE#environment" --conf spark.pyspark.python=./environment/bin/python)
if [[ "$MASTER" == local || "$MASTER" == local\[* ]]; then
  # Local masters run the Python workers on this machine: no archive, this venv's Python.
  ENV_ARGS=(--conf spark.pyspark.python="$PYTHON")
elif [ ! -f "$ARCHIVE" ]; then
  if [ "$DRY_RUN" = 1 ]; then
    echo "# would pack the executor environment into $ARCHIVE"
  else
    echo "packing the executor environment into $ARCHIVE" >&2
    pack
  fi
fi

if [ -n "${SPARK_HOME:-}" ]; then
  SUBMIT="$SPARK_HOME/bin/spark-submit"
else
  SUBMIT="$(dirname "$PYTHON")/spark-submit"
fi
JOB="$("$PYTHON" -c 'import rtml.aggregate.commands as j; print(j.__file__)')"

CMD=(
  "$SUBMIT"
  --master "$MASTER"
  --deploy-mode client
  --name rtml-aggregate
  "${ENV_ARGS[@]}"
  --conf spark.pyspark.driver.python="$PYTHON"
  --conf spark.sql.session.timeZone=UTC
  --conf spark.ui.showConsoleProgress=false
  "${SUBMIT_ARGS[@]}"
  "$JOB"
  "${JOB_ARGS[@]}"
)

if [ "$DRY_RUN" = 1 ]; then
  printf '%q ' "${CMD[@]}"
  echo
  exit 0
fi
# The driver must not build its own local[2] session: spark-submit's master wins (spark_job.spark_session).
export PYSPARK_DRIVER_PYTHON="$PYTHON"
if [[ "$MASTER" != local && "$MASTER" != local\[* ]]; then
  # Spark plans a Python data source in Python workers on the driver, started with the same
  # spark.pyspark.python as the executors: give the driver a ./environment too (this venv).
  # Paths the job resolves from the working directory are made absolute first.
  export RTML_CONFIG="$(realpath -m "${RTML_CONFIG:-rtml.toml}")"
  export RTML_DATA_DIR="$("$PYTHON" -c 'from rtml.config import get_settings; print(get_settings().root)')"
  RUN_DIR="$DIST/driver"
  mkdir -p "$RUN_DIR"
  ln -sfn "$(cd "$(dirname "$PYTHON")/.." && pwd)" "$RUN_DIR/environment"
  cd "$RUN_DIR"
fi
exec "${CMD[@]}"
