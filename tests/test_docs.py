"""The docs site: the generated reference pages are fresh, deterministic and complete; every `hsrl ...` command in
the docs parses with its verb's parser; the ```` ```{.python .run} ```` snippets run; `mkdocs build --strict` passes
(where mkdocs is installed: the docs extra). The benchmarks' result files (benchmarks/record.py) and the page made
from them."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsrl.cli import VERBS, main
from hsrl.docs import (BENCHMARK_RESULTS_PAGE, MARKER, benchmark_results_page, code_blocks, generated_pages,
                       hsrl_commands, stale_pages, verb_parser)
from hsrl.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_the_generated_pages_are_fresh():
    stale = stale_pages(DOCS)
    assert not stale, f"stale generated docs pages {stale}: run `python -m hsrl.docs build --pages-only`"


def test_generation_is_deterministic_and_names_no_machine_path(tmp_path, monkeypatch):
    first = generated_pages()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "37")  # argparse wraps usage at the terminal's width unless told otherwise
    assert generated_pages() == first
    text = "\n".join(first.values())
    for path in {str(ROOT), str(Path.home()), str(tmp_path), sys.prefix}:
        assert path not in text


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_verb_page_lists_every_argument_with_its_default(verb):
    page = generated_pages()[f"reference/cli/{verb}.md"]
    assert page.startswith(MARKER) and f"# hsrl {verb}\n" in page
    rows = {line.split(" | ")[0].strip("| `").split(" ")[0].rstrip(","): line
            for line in page.splitlines() if line.startswith("| `")}
    for action in verb_parser(verb)._actions:
        if action.dest == "help":
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert name in rows, f"hsrl {verb}: {name} is missing from its page"
        if isinstance(action.default, (int, float, str)) and not isinstance(action.default, bool):
            assert f"| `{action.default}` |" in rows[name], rows[name]


def test_the_verb_table_links_every_verb_and_the_api_page_names_the_entry_points():
    pages = generated_pages()
    for verb in VERBS:
        assert f"[`{verb}`](cli/{verb}.md)" in pages["reference/verbs.md"]
    for name in ("hsrl.rl.checkpoint.load_policy", "hsrl.serve.client.HiddenStateClient",
                 "hsrl.llm.spec.ExtractionSpec"):
        assert f"::: {name}\n" in pages["reference/api.md"]
    from hsrl.rl.metrics import METRICS

    for name in METRICS:
        assert f"| `{name}` |" in pages["reference/metrics.md"]


def test_docs_check_names_stale_pages_and_build_repairs_them(tmp_path, capsys):
    (tmp_path / "mkdocs.yml").write_text("site_name: x\n")
    assert main(["docs", "build", "--pages-only", "--root", str(tmp_path)]) == 0
    assert main(["docs", "check", "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    edited = tmp_path / "docs" / "reference" / "cli" / "eval.md"
    edited.write_text(edited.read_text() + "hand edit\n")
    gone = tmp_path / "docs" / "reference" / "cli" / "removed-verb.md"
    gone.write_text(MARKER + "\n# hsrl removed-verb\n")
    mine = tmp_path / "docs" / "reference" / "cli" / "notes.md"
    mine.write_text("# my notes, not generated\n")
    assert main(["docs", "check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "docs/reference/cli/eval.md" in out and "removed-verb.md" in out and "notes.md" not in out
    assert main(["docs", "build", "--pages-only", "--root", str(tmp_path)]) == 0
    assert main(["docs", "check", "--root", str(tmp_path)]) == 0
    assert not gone.exists() and mine.read_text() == "# my notes, not generated\n"
    # a new result file makes the benchmark page stale; build writes its figures
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "bench_new.json").write_text(json.dumps({"benchmark": "bench_new", "figures": {"ratio": 1.25}}))
    capsys.readouterr()
    assert main(["docs", "check", "--root", str(tmp_path)]) == 1
    assert f"docs/{BENCHMARK_RESULTS_PAGE}" in capsys.readouterr().out
    assert main(["docs", "build", "--pages-only", "--root", str(tmp_path)]) == 0
    assert main(["docs", "check", "--root", str(tmp_path)]) == 0
    assert "| `ratio` | 1.25 |" in (tmp_path / "docs" / BENCHMARK_RESULTS_PAGE).read_text()
    # a page a person wrote where a generated one goes is not overwritten
    edited.write_text("# written by hand\n")
    assert main(["docs", "build", "--pages-only", "--root", str(tmp_path)]) == 2
    assert edited.read_text() == "# written by hand\n"


def test_code_blocks_reads_indented_fences_and_info_strings():
    text = "x\n```bash\nhsrl envs \\\n  --env A  # a comment\nhsrl plot r &\n```\n!!! note\n    ```{.python .run}\n" \
           "    print(1)\n      y = 2\n    ```\n"
    blocks = code_blocks(text)
    assert [(b.info, b.language, b.classes, b.line) for b in blocks] == [
        ("bash", "bash", (), 2), ("{.python .run}", "python", ("run",), 8)]
    assert blocks[1].text == "print(1)\n  y = 2"
    assert hsrl_commands(text) == ["hsrl envs    --env A", "hsrl plot r"]


def _docs_commands() -> list[tuple[str, str]]:
    return [(page.relative_to(DOCS).as_posix(), command) for page in _pages()
            for command in hsrl_commands(page.read_text(encoding="utf-8"))]


def test_every_hsrl_command_in_the_docs_parses_with_its_verbs_parser():
    """`...` stands for flags left out and is dropped."""
    commands = _docs_commands()
    if not commands:
        pytest.skip("the docs hold no hsrl commands yet")
    bad = []
    for page, command in commands:
        argv = [a for a in shlex.split(command)[1:] if a != "..."]
        if not argv or argv[0] not in VERBS:
            bad.append(f"{page}: {command} (no such verb)")
            continue
        try:
            verb_parser(argv[0]).parse_args(argv[1:])
        except SystemExit:
            bad.append(f"{page}: {command}")
    assert not bad, "docs commands that do not parse:\n" + "\n".join(bad)


def _runnable_snippets() -> list[tuple[str, int, str]]:
    return [(page.relative_to(DOCS).as_posix(), block.line, block.text) for page in _pages()
            for block in code_blocks(page.read_text(encoding="utf-8"))
            if block.language == "python" and "run" in block.classes]


def test_every_fence_in_the_docs_is_one_mkdocs_renders_as_code():
    """A fence whose info string has bare words after the language (```` ```python run ````) is shown by
    pymdownx.superfences as a paragraph of text; options are key="value" (title, hl_lines) or the attribute form
    ```` ```{.python .run} ````."""
    bad = [f"docs/{page.relative_to(DOCS).as_posix()}:{block.line}: ```{block.info}" for page in _pages()
           for block in code_blocks(page.read_text(encoding="utf-8"))
           if not re.fullmatch(r'[\w+#-]*(\s+[\w-]+="[^"]*")*|\{[^}]*\}', block.info)]
    assert not bad, "fences mkdocs does not render as code:\n" + "\n".join(bad)


@pytest.mark.parametrize("page, line, code", [
    pytest.param(*snippet, id=f"{snippet[0]}:{snippet[1]}") for snippet in _runnable_snippets()] or [
    pytest.param(None, 0, "", marks=pytest.mark.skip(reason="no ```{.python .run} snippets in the docs yet"))])
def test_python_run_snippets_run(page, line, code, tmp_path, monkeypatch):
    """Snippets fenced ```` ```{.python .run} ```` run as written, each in a fresh namespace in an empty folder, in
    under 60 s each (other ```python blocks are shown only: they need a GPU, a model or a trained run)."""
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    exec(compile(code, f"docs/{page}:{line}", "exec"), {"__name__": "__docs__"})
    assert time.perf_counter() - start < 60, f"docs/{page}:{line} is too slow for a docs snippet"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason='mkdocs and mkdocstrings are not installed (pip install -e ".[docs]")')
def test_mkdocs_build_strict_passes(tmp_path):
    """Broken links, stale anchors, pages left out of the nav and API names that do not resolve fail the build."""
    if not (ROOT / "mkdocs.yml").is_file() or not DOCS.is_dir():
        pytest.skip("no mkdocs.yml or docs/ in this checkout")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "cli" / "eval" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert 'id="hsrl.rl.checkpoint.load_policy"' in api
    # every section of the README before the docs site (tests/readme_sections.txt) has a page and anchor that exist
    moved = [line.split(" -> ", 1)[1].split(";")[0].strip() for line in
             (ROOT / "tests" / "readme_sections.txt").read_text().splitlines() if " -> " in line and not line.startswith("#")]
    assert len(moved) > 50
    for target in moved:
        page, _, anchor = target.partition("#")
        html = tmp_path / "site" / (page[:-3].removesuffix("index")) / "index.html"
        assert html.is_file(), target
        assert not anchor or f'id="{anchor}"' in html.read_text(), target



def test_the_nav_names_every_generated_page():
    """A new verb's page goes into mkdocs.yml's nav (the strict build also fails on a page left out of it; this
    says so where mkdocs is not installed)."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [page for page in generated_pages() if f": {page}\n" not in nav]
    assert not missing, f"add to mkdocs.yml's nav: {missing}"


@pytest.fixture
def record(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from record import record

    return record


def test_record_prints_the_figures_last_and_writes_the_result_file(record, tmp_path, monkeypatch, capsys):
    figures = {"ratio": 1.5, "rows": [{"clients": 1, "p50_ms": 3.25}], "nested": {"a": {"b": True}}, "note": "x"}
    monkeypatch.setenv("HSRL_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("HSRL_BENCH_RECORD", raising=False)
    path = record("bench_fake", figures, argv=[str(ROOT / "benchmarks" / "bench_fake.py"), "--quick", "--n", "3"])
    assert capsys.readouterr().out.splitlines()[-1] == json.dumps(figures)
    assert path == tmp_path / "results" / "bench_fake.json"
    result = json.loads(path.read_text())
    assert result["benchmark"] == "bench_fake" and result["figures"] == figures
    assert result["command"] == "python3 benchmarks/bench_fake.py --quick --n 3"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["date"])
    machine = result["machine"]
    assert machine["cores"] == os.cpu_count() and machine["memory_gb"] > 0 and machine["python"] == \
        ".".join(map(str, sys.version_info[:3]))
    assert {"cpu", "gpu", "jax", "jaxlib"} <= set(machine)
    # sorted keys as the scripts that printed them so; HSRL_BENCH_RECORD=0 prints only
    monkeypatch.setenv("HSRL_BENCH_RECORD", "0")
    assert record("bench_other", figures, sort_keys=True) is None
    assert capsys.readouterr().out.splitlines()[-1] == json.dumps(figures, sort_keys=True)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["bench_fake.json"]


def test_a_benchmark_script_ends_with_its_figures_and_records_them(tmp_path):
    """bench_data.py at a small size, run as a user runs it: its last stdout line is its figures, and the same
    figures are in its result file."""
    env = {**os.environ, "HSRL_BENCH_RESULTS": str(tmp_path)}
    env.pop("HSRL_BENCH_RECORD", None)
    proc = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--files", "1", "--steps", "4", "--envs", "2",
                           "--hidden", "4", "--naive-samples", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    result = json.loads((tmp_path / "bench_data.json").read_text())
    assert result["figures"] == figures and figures["samples"] == 8
    assert result["command"] == "python3 benchmarks/bench_data.py --files 1 --steps 4 --envs 2 --hidden 4 " \
        "--naive-samples 2"


def test_the_benchmark_results_page_renders_every_result_file(record, tmp_path, monkeypatch, capsys):
    assert "No result files yet" in benchmark_results_page(tmp_path / "none")
    monkeypatch.setenv("HSRL_BENCH_RESULTS", str(tmp_path))
    monkeypatch.delenv("HSRL_BENCH_RECORD", raising=False)
    record("bench_b", {"ratio": 0.5, "rows": [{"clients": 8, "p50_ms": 3.25}], "nested": {"a": {"b": True}},
                       "widths": [1, 2]}, argv=[str(ROOT / "benchmarks" / "bench_b.py"), "--small"])
    record("bench_a", {"sps": 12}, argv=[str(ROOT / "benchmarks" / "bench_a.py")])
    page = benchmark_results_page(tmp_path)
    assert page.startswith(MARKER) and "No result files" not in page
    assert page.index("## bench_a") < page.index("## bench_b")  # file-name order
    for row in ("| `sps` | 12 |", "| `ratio` | 0.5 |", "| `rows.0.clients` | 8 |", "| `rows.0.p50_ms` | 3.25 |",
                "| `nested.a.b` | true |", "| `widths` | [1, 2] |"):
        assert row in page
    result = json.loads((tmp_path / "bench_b.json").read_text())
    assert f"- **Date**: {result['date']}" in page and "- **Command**: `python3 benchmarks/bench_b.py --small`" in page
    assert f"{os.cpu_count()} cores" in page and f"python {result['machine']['python']}" in page
    assert benchmark_results_page(tmp_path) == page  # deterministic
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UserError, match="broken.json"):
        benchmark_results_page(tmp_path)


def test_the_committed_benchmark_page_is_made_from_the_committed_result_files():
    page = generated_pages(ROOT)[BENCHMARK_RESULTS_PAGE]
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        assert f"## {json.loads(path.read_text())['benchmark']}\n" in page
    assert "reference/benchmark-results.md" in (DOCS / "benchmarks.md").read_text()
