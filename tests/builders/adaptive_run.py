"""Whole runs of an adaptive recipe through the TGI protocol test server, and their run folders read back.

`recipe_text()` fills the adaptive test recipe (the server URL, metric, selection and an `adaptive:`
block); `run()` writes and runs it; the readers give a split or the traces as one table, with NaN
made comparable. Used by the adaptive sampling tests and the deepconf tests.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import pipeline
from curation.recipe.load import load_recipe

RECIPE = """
name: adaptive-test
source:
  path: SAMPLE_CSV
  shuffle_seed: 0
  limit: LIMIT
  id_template: "{{ cell_line }}__{{ pert }}__{{ gene }}"
  label_column: label
prompt:
  system: Think, then answer inside <answer></answer> tags.
  user: "In {{ cell_line }} cells, {{ pert }} was knocked down. What happens to {{ gene }}?"
generator:
  backend: tgi
  url: URL
  chat_template: chatml
  samples: 8
  temperature: 1.0
  max_new_tokens: 48
  stop: ["</answer>"]
  top_logprobs: 5
  retry_backoff: 0.01
ADAPTIVE
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
score:
  metric: METRIC
select:
  strategy: STRATEGY
  fraction: FRACTION
"""


def recipe_text(url, *, metric="cocoa_ppl", fraction=0.1, strategy="per_class", adaptive_block="", limit=60):
    return (
        RECIPE.replace("URL", url).replace("METRIC", metric).replace("FRACTION", str(fraction)).replace("STRATEGY", strategy)
        .replace("ADAPTIVE", adaptive_block).replace("LIMIT", str(limit))
    )


def read_split(run_dir: Path, name: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((run_dir / "data").glob(f"{name}-*.parquet"))])


def read_traces(run_dir: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((run_dir / "traces").glob("*.parquet"))])


def nan_as_null(table: pa.Table) -> pa.Table:
    """NaN never equals NaN in Table.equals; a question with no samples has NaN consistency."""
    columns = [pc.if_else(pc.is_nan(c), None, c) if pa.types.is_floating(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


def kept_rows(table: pa.Table) -> pa.Table:
    return table.filter(table["kept"]).sort_by("id")


def run(write_recipe, text, run_dir, name):
    return pipeline.run(load_recipe(str(write_recipe(text, name=name))), run_dir, show_progress=False)
