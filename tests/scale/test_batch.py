"""attribute-batch without Ray: prompt files, graphs equal to one-by-one attribution, resuming,
circuit-tracer's graph index, the session; and what a missing Ray says."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from circuit_studio import cli
from circuit_studio.core.attribution.attribute import attribute
from circuit_studio.core.graph.attribution_graph import AttributionParams, load_graph
from circuit_studio.core.session.store import load_session
from circuit_studio.scale import ClusterError
from circuit_studio.scale import batch
from circuit_studio.scale import import_ray
from circuit_studio.scale.batch import BatchError, BatchOptions, read_prompts, run_batch
from scale_helpers import PROMPTS


def _prompt_file(tmp_path, lines, name="prompts.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- prompt files ----
def test_plain_and_jsonl_prompt_files(tmp_path):
    jobs = read_prompts(_prompt_file(tmp_path, ["the capital of Texas is ", "", "  ", "Paris is in"]))
    assert [j.prompt for j in jobs] == ["the capital of Texas is ", "Paris is in"]  # as written, blanks skipped
    assert [j.line for j in jobs] == [1, 4]
    assert jobs[0].slug.startswith("the-capital-of-texas-is-") and jobs[0].slug != jobs[1].slug
    assert read_prompts(_prompt_file(tmp_path, ["Paris is in"], "again.txt"))[0].slug == jobs[1].slug  # stable
    jl = _prompt_file(tmp_path, [json.dumps({"prompt": "Paris is in", "slug": "paris"}),
                                 json.dumps({"prompt": "the capital of Texas is"})], "p.jsonl")
    jobs = read_prompts(jl)
    assert [(j.slug, j.prompt, j.targets) for j in jobs][0] == ("paris", "Paris is in", None)


@pytest.mark.parametrize("lines,match", [
    (['{"prompt": "a"}', "not json"], r"p\.jsonl:2: not a JSON object"),
    (['{"prompt": ""}'], r":1: \"prompt\" must be a non-empty string"),
    (['{"prompt": "a", "promt": "b"}'], "unknown key 'promt'"),
    (['{"prompt": "a", "slug": "../x"}'], "cannot name a file"),
    (['{"prompt": "a", "slug": "x"}', '{"prompt": "b", "slug": "x"}'], "used again .first on line 1"),
    (['{"prompt": "a", "targets": []}'], "non-empty list"),
])
def test_bad_prompt_lines_are_one_line_errors(tmp_path, lines, match):
    with pytest.raises(BatchError, match=match):
        read_prompts(_prompt_file(tmp_path, lines, "p.jsonl"))


def test_targets_are_refused_while_attribute_cannot_take_them(tmp_path, monkeypatch):
    path = _prompt_file(tmp_path, [json.dumps({"prompt": "Paris is in", "targets": ["France"]})], "t.jsonl")
    assert read_prompts(path)[0].targets == ["France"]  # this version's attribute() takes targets
    monkeypatch.setattr(batch, "targets_keyword", lambda: None)
    with pytest.raises(BatchError, match=r"t\.jsonl:1: custom targets are not supported yet"):
        read_prompts(path)


# ---- graphs ----
def test_batch_graphs_equal_one_by_one_and_a_rerun_skips_them(tiny, tmp_path):
    out, session = tmp_path / "graphs", tmp_path / "b.cs-session"
    jl = _prompt_file(tmp_path, [json.dumps({"prompt": PROMPTS[0], "slug": "texas"}),
                                 json.dumps({"prompt": PROMPTS[2], "targets": ["France", "Texas"]}),
                                 json.dumps({"prompt": PROMPTS[1], "targets": ["Texas", "Texas", "France"],
                                             "slug": "twice"})], "p.jsonl")
    jobs = read_prompts(jl)
    options = BatchOptions(max_feature_nodes=None)
    first = run_batch(jobs, out, model=tiny.model, transcoders=tiny.transcoders, options=options, session=session)
    assert first.computed == [j.slug for j in jobs] and not first.skipped and not first.failed
    params = AttributionParams(max_feature_nodes=None)
    for job in jobs:
        ref = attribute(job.prompt, tiny.bundle, tiny.tc, params, targets=job.targets)
        got = load_graph(out / f"{job.slug}.npz")
        assert np.array_equal(got.adjacency_matrix, ref.adjacency_matrix)
        assert np.array_equal(got.active_features, ref.active_features)
        assert got.logit_token_ids.tolist() == ref.logit_token_ids.tolist()
        doc = json.loads((out / f"{job.slug}.json").read_text())
        assert doc["metadata"]["slug"] == job.slug and doc["metadata"]["prompt"].endswith(job.prompt)
    assert load_graph(out / "twice.npz").logit_tokens == ("Texas", "Texas", "France")
    # circuit-tracer's index: one entry per graph, in prompt order
    index = json.loads((out / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == [j.slug for j in jobs]
    assert set(index["graphs"][0]) >= {"slug", "scan", "prompt_tokens", "prompt"}
    summary = json.loads((out / "batch-summary.json").read_text())
    row = summary["graphs"][0]
    assert row["slug"] == "texas" and row["status"] == "done" and 0 < row["completeness"] <= 1
    assert row["top_logits"][0]["token"] == load_graph(out / "texas.npz").logit_tokens[0]
    # the session holds every graph, titled with its prompt, top logit and scores
    s = load_session(session)
    assert [g.graph.prompt for g in s.graphs] == [j.prompt for j in jobs]
    assert s.graphs[0].title.startswith(PROMPTS[0]) and "rep " in s.graphs[0].title
    assert s.current_graph == s.graphs[0].id and s.model is not None and s.transcoders is not None
    assert np.array_equal(s.graphs[0].graph.adjacency_matrix, load_graph(out / "texas.npz").adjacency_matrix)
    analysis = s.analysis(s.graphs[1].id)  # what the window builds when it shows a graph of the session
    assert analysis.graph.prompt == PROMPTS[2] and analysis.node_threshold == options.node_threshold

    # again, with one prompt more and one graph file lost: only those two are computed
    (out / "twice.json").unlink()
    mtime = (out / "texas.npz").stat().st_mtime_ns
    jl2 = _prompt_file(tmp_path, jl.read_text().splitlines() + [json.dumps({"prompt": PROMPTS[3]})], "p2.jsonl")
    jobs2 = read_prompts(jl2)
    second = run_batch(jobs2, out, model=tiny.model, transcoders=tiny.transcoders, options=options, session=session)
    assert sorted(second.skipped) == sorted([jobs[0].slug, jobs[1].slug])
    assert second.computed == ["twice", jobs2[3].slug]
    assert (out / "texas.npz").stat().st_mtime_ns == mtime
    assert [g["slug"] for g in json.loads((out / "graph-metadata.json").read_text())["graphs"]] == \
        [j.slug for j in jobs2]
    s2 = load_session(session)
    assert [g.id for g in s2.graphs[:3]] == [g.id for g in s.graphs] and len(s2.graphs) == 4
    # another run's settings are not mixed into this folder
    with pytest.raises(BatchError, match="other settings .options differ"):
        run_batch(jobs2, out, model=tiny.model, transcoders=tiny.transcoders, options=BatchOptions(max_n_logits=3))


def test_a_bad_prompt_fails_alone(tiny, tmp_path):
    jl = _prompt_file(tmp_path, [json.dumps({"prompt": PROMPTS[0], "targets": ["Texas Paris"]}),
                                 json.dumps({"prompt": PROMPTS[2], "slug": "ok"})], "p.jsonl")
    r = run_batch(read_prompts(jl), tmp_path / "g", model=tiny.model, transcoders=tiny.transcoders)
    assert r.failed == [read_prompts(jl)[0].slug] and "ok" in r.computed
    assert (tmp_path / "g" / "ok.json").exists() and not (tmp_path / "g" / f"{r.failed[0]}.json").exists()
    assert [g["slug"] for g in json.loads((tmp_path / "g" / "graph-metadata.json").read_text())["graphs"]] == ["ok"]


def test_command_writes_a_session_and_its_graph_folder(tiny, tmp_path, capsys):
    prompts = _prompt_file(tmp_path, PROMPTS[:2])
    out = tmp_path / "run.cs-session"
    argv = ["attribute-batch", "--model", str(tiny.model), "--transcoders", str(tiny.transcoders),
            "--prompts", str(prompts), "--out", str(out), "--max-feature-nodes", "50"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 prompts: 2 computed, 0 already done, 0 failed" in text and "repl" in text
    assert len(load_session(out).graphs) == 2
    assert len(json.loads((tmp_path / "run.graphs" / "graph-metadata.json").read_text())["graphs"]) == 2
    assert cli.main(argv) == 0
    assert "0 computed, 2 already done" in capsys.readouterr().out
    assert cli.main(argv[:-2] + ["--workers", "2"]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err


# ---- without Ray ----
def test_a_missing_ray_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ClusterError, match=r"circuit-studio\[scale\]"):
        import_ray()
    for argv in (["index-features", "--model", str(tiny.model), "--transcoders", str(tiny.transcoders),
                  "--corpus", str(tiny.corpus), "--out", str(tmp_path / "f.idx"), "--ray"],
                 ["attribute-batch", "--model", str(tiny.model), "--transcoders", str(tiny.transcoders),
                  "--prompts", str(_prompt_file(tmp_path, PROMPTS[:1])), "--out", str(tmp_path / "g"), "--ray"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Ray is not installed" in err[0] and 'pip install "circuit-studio[scale]"' in err[0]
    assert not (tmp_path / "f.idx").exists()


def test_nothing_imports_ray_unless_asked():
    """The single-process paths need no Ray: importing the command line, every command and the scale
    package's non-Ray parts leaves `ray` out of sys.modules."""
    import subprocess
    import sys

    probe = ("import sys, importlib\n"
             "import circuit_studio.cli as cli\n"
             "for name in cli.COMMANDS: importlib.import_module('circuit_studio.commands.' + name.replace('-', '_'))\n"
             "import circuit_studio.scale, circuit_studio.scale.batch, circuit_studio.scale.workers\n"
             "import circuit_studio.scale.cluster, circuit_studio.scale.ray_index\n"
             "import circuit_studio.core.features.index_build\n"
             "print('RAY' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'NO RAY')\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "NO RAY"


def test_ci_installs_the_scale_extra_with_the_readmes_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    ci = [l for l in (root / ".ci" / "run").read_text().splitlines() if l.startswith("pip install")]
    assert len(ci) == 1 and '".[test,scale]"' in ci[0]
    assert ci[0] in (root / "README.md").read_text().splitlines()
    assert 'scale = ["ray' in (root / "pyproject.toml").read_text()
