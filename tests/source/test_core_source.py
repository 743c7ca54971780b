"""Source formats, ids, limits, shuffling and sandboxed rendering."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.recipe.load import load_recipe
from curation.source import check_source, load_questions

ROWS = [{"pert": f"P{i}", "gene": f"G{i}", "label": i % 2} for i in range(10)]

RECIPE = """\
name: t
source:
{source}
prompt:
  system: "You study {{{{ pert }}}}."
  user: "What happens to {{{{ gene }}}}?"
answer:
  labels: [a, b]
select:
  fraction: 0.5
"""


def write_sources(tmp_path):
    (tmp_path / "rows.csv").write_text("pert,gene,label\n" + "".join(f"{r['pert']},{r['gene']},{r['label']}\n" for r in ROWS))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "rows.parquet")
    (tmp_path / "hubstyle" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "hubstyle" / "data" / "train-00000-of-00001.parquet")


def load(tmp_path, source_yaml):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(source=source_yaml))
    loaded = load_recipe(str(path))
    assert check_source(loaded) == []
    return load_questions(loaded)


@pytest.mark.parametrize("source", ["  path: rows.csv", "  path: rows.jsonl", "  path: rows.parquet", "  dataset: {hub}\n  split: train"])
def test_formats_give_the_same_questions(tmp_path, source):
    write_sources(tmp_path)
    rows = load(tmp_path, source.format(hub=tmp_path / "hubstyle") + "\n  label_column: label\n  id_template: '{{ pert }}-{{ gene }}'")
    assert [q.id for q in rows.questions] == [f"P{i}-G{i}" for i in range(10)]
    q = rows.questions[3]
    assert q.messages == [{"role": "system", "content": "You study P3."}, {"role": "user", "content": "What happens to G3?"}]
    assert q.label == "1" and "label" not in q.columns


def test_limit_shuffle_filter_and_stable_ids(tmp_path):
    write_sources(tmp_path)
    a = load(tmp_path, "  path: rows.csv\n  label_column: label\n  shuffle_seed: 1\n  limit: 4\n  filter: {label: 0}")
    b = load(tmp_path, "  path: rows.csv\n  label_column: label\n  shuffle_seed: 1\n  limit: 4\n  filter: {label: 0}")
    assert [q.id for q in a.questions] == [q.id for q in b.questions]
    assert len(a.questions) == 4 and all(q.columns["pert"] in {"P0", "P2", "P4", "P6", "P8"} for q in a.questions)
    c = load(tmp_path, "  path: rows.csv\n  label_column: label\n  shuffle_seed: 2\n  limit: 4\n  filter: {label: 0}")
    assert [q.columns["pert"] for q in a.questions] != [q.columns["pert"] for q in c.questions]


def test_id_column_and_label_map(tmp_path):
    write_sources(tmp_path)
    rows = load(tmp_path, "  path: rows.csv\n  id_column: pert\n  label_column: label\n  label_map: {0: 'no', 1: 'yes'}")
    assert rows.questions[1].id == "P1" and rows.questions[1].label == "yes"


def test_duplicate_ids_are_an_error(tmp_path):
    write_sources(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(source="  path: rows.csv\n  id_column: label"))
    with pytest.raises(ValueError, match="duplicate row id"):
        load_questions(load_recipe(str(path)))


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ gene.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_templates_cannot_reach_python(tmp_path, template):
    write_sources(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(source="  path: rows.csv").replace("What happens to {{ gene }}?", template.replace('"', "'")))
    import jinja2

    with pytest.raises((jinja2.exceptions.SecurityError, jinja2.exceptions.UndefinedError)):
        load_questions(load_recipe(str(path)))


@pytest.mark.parametrize("template", ["{{ 9**999999 }}", "{{ 'x' * 10**11 }}", "{{ [gene] * 10**9 }}"])
def test_templates_cannot_exhaust_the_machine(template):
    import jinja2

    from curation.templating import template_environment

    with pytest.raises(jinja2.exceptions.SecurityError):
        template_environment().from_string(template).render(gene="G")
