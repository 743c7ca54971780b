"""The recipe: the typed, validated description of one curation run.

    sections.py    the section models (source, prompt, generator, critic, scorer, answer, score, select, ...) and `Recipe`
    endpoint.py    the endpoint fields and checks that generator, critic and scorer share
    traces.py      source.traces: reading traces made elsewhere, and the presets of known tools
    load.py        load_recipe: file or hf:// -> `extends:` -> --set -> validation, every problem at file:line:col
    yaml_marks.py  safe YAML parsing that keeps each node's line and column
    overrides.py   --set PATH=VALUE and the `extends:` merge
    env.py         ${VAR} references: where they are allowed, and resolving them at the moment of use
    remote.py      hf:// recipes and what a recipe from the Hub may not do
    dump.py        the recipe as written into a run folder, and its fingerprint
    base.py        the strict pydantic base every section model derives from
"""
