"""The house rules the README promises, read from source: layers that hold (lazy imports counted), no module
cycle, small modules and functions. A new import against the layers fails here, naming the edge."""

from __future__ import annotations

from tests.helpers.import_graph import (
    MAX_FUNCTION_LINES,
    MAX_MODULE_LINES,
    allowed,
    cycles,
    import_graph,
    layer,
    layer_violations,
    long_functions,
    long_modules,
    modules,
)

KNOWN = modules()
GRAPH = import_graph(KNOWN)


def test_the_graph_sees_every_package_and_lazy_imports():
    assert {"engineforge.build.pipeline", "engineforge.serve.server", "engineforge.loadtest.runner",
            "engineforge.engines.registry", "engineforge.commands.build_engine"} <= set(KNOWN)
    # build-engine's command imports the entry inside its function: a lazy import is an edge all the same
    assert "engineforge.commands.build_engine" in GRAPH["engineforge.build.cli"]


def test_layers_are_ranked_as_the_readme_says():
    assert [layer(m) for m in ("engineforge.errors", "engineforge.engines.registry", "engineforge.build.pipeline",
                               "engineforge.serve.server", "engineforge.loadtest.runner", "engineforge.serve.cli",
                               "engineforge.demo.flow", "engineforge.commands.tune")] == [
        "core", "engines", "build", "serve", "loadtest", "top", "top", "top"]
    assert allowed("engineforge.serve.server", "engineforge.build.pipeline")
    assert not allowed("engineforge.build.pipeline", "engineforge.serve.server")
    assert not allowed("engineforge.engines.text", "engineforge.serve.server")
    assert not allowed("engineforge.loadtest.runner", "engineforge.build.data")
    assert not allowed("engineforge.serve.supervisor", "engineforge.loadtest.runner")
    assert not allowed("engineforge.errors", "engineforge.commands.tune")


def test_no_import_goes_against_the_layers():
    assert layer_violations(GRAPH) == []


def test_no_module_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_modules_and_functions_stay_small():
    assert long_modules(KNOWN) == [], f"modules over {MAX_MODULE_LINES} lines"
    assert long_functions(KNOWN) == [], f"functions over {MAX_FUNCTION_LINES} lines"


def test_no_two_test_modules_share_a_name():
    # tests/ folders are not packages: pytest refuses a whole run (`make test`) when two files share a basename,
    # while running tests/unit and tests/integration apart hides it.
    from collections import Counter

    from tests.helpers.import_graph import ROOT

    names = Counter(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
