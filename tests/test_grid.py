"""The grid runner: parts written as cells finish, reused only when config, encoder and match agree."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from hica.errors import HicaError
from hica.eval import grid as grid_mod
from hica.eval.grid import STAMP, GridRun, config_hash, safe_key


def _run(out: Path, calls: list[str], scope: dict | None = None, **kw) -> tuple[list[dict], GridRun]:
    cells = ["a", "b/c", "d e"]

    def compute(cell: str) -> dict:
        calls.append(cell)
        return {"cell": cell, "value": len(cell)}

    with GridRun(out, scope=scope or {"lr": 0.1}, encoder={"sha": "x"}, config_yaml="lr: 0.1\n", **kw) as run:
        recs = list(run.run(cells, compute, key=lambda c: f"cell__{c}"))
    return recs, run


def test_parts_written_and_reused(tmp_path: Path) -> None:
    calls: list[str] = []
    first, run = _run(tmp_path, calls)
    assert calls == ["a", "b/c", "d e"] and run.stats.computed == 3
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == sorted(
        f"{safe_key('cell__' + c)}.json" for c in ["a", "b/c", "d e"]
    )
    assert (tmp_path / "config.resolved.yaml").read_text() == "lr: 0.1\n"
    again, run2 = _run(tmp_path, calls)
    assert calls == ["a", "b/c", "d e"]  # nothing recomputed
    assert run2.stats.resumed == 3 and run2.stats.computed == 0 and run2.stats.other_code == 0
    assert again == first
    assert all(r[STAMP]["code_commit"] == run.code for r in again)


def test_config_or_encoder_change_recomputes(tmp_path: Path) -> None:
    calls: list[str] = []
    _run(tmp_path, calls)
    _run(tmp_path, calls, scope={"lr": 0.2})
    assert len(calls) == 6
    h1 = config_hash({"lr": 0.1}, {"sha": "x"})
    assert h1 != config_hash({"lr": 0.1}, {"sha": "y"}) and h1 == config_hash({"lr": 0.1}, {"sha": "x"})


def test_no_resume_recomputes(tmp_path: Path) -> None:
    calls: list[str] = []
    _run(tmp_path, calls)
    _run(tmp_path, calls, resume=False)
    assert len(calls) == 6


def test_match_fields_and_unreadable_part(tmp_path: Path) -> None:
    with GridRun(tmp_path, scope={}) as run:
        run.part("p", lambda: {"v": 1}, match={"ids": [1, 2]})
    (tmp_path / "parts" / "q.json").write_text("{half")
    with GridRun(tmp_path, scope={}) as run:
        assert run.cached("p", match={"ids": [1, 2]})["v"] == 1
        assert run.cached("p", match={"ids": [1, 3]}) is None
        assert run.cached("q") is None  # a torn file is computed again, not an error
        rec = run.part("q", lambda: {"v": 2})
    assert rec["v"] == 2 and json.loads((tmp_path / "parts" / "q.json").read_text())["v"] == 2


def test_parts_of_other_code_counted_or_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(grid_mod, "git_state", lambda: ("old", True))
    _run(tmp_path, calls)
    monkeypatch.setattr(grid_mod, "git_state", lambda: ("new", True))
    _, run = _run(tmp_path, calls)
    assert len(calls) == 3 and run.stats.other_code == 3 and run.summary()["parts_from_other_code"] == 3
    _, run = _run(tmp_path, calls, rerun_other_code=True)
    assert len(calls) == 6 and run.stats.computed == 3


def test_second_writer_refused(tmp_path: Path) -> None:
    """Another writer (here: another thread; another process gets the same flock) is refused."""
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with GridRun(tmp_path, scope={}):
                pass
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    with GridRun(tmp_path, scope={}):
        t = threading.Thread(target=second)
        t.start()
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], HicaError)


def test_failed_cell_leaves_no_part(tmp_path: Path) -> None:
    def boom() -> dict:
        raise RuntimeError("cell failed")

    with pytest.raises(RuntimeError), GridRun(tmp_path, scope={}) as run:
        run.part("ok", lambda: {"v": 1})
        run.part("bad", boom)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["ok.json"]


def test_keys_that_share_a_file_name_are_not_confused(tmp_path: Path) -> None:
    with GridRun(tmp_path, scope={}) as run:
        run.part("a/b", lambda: {"v": 1})
        assert run.path("a/b") == run.path("a_b")
        assert run.cached("a_b") is None  # same file, another key: computed, not reused
        assert run.part("a_b", lambda: {"v": 2})["v"] == 2


def test_uncommitted_code_is_stamped_dirty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grid_mod, "git_state", lambda: ("abc", False))
    with GridRun(tmp_path, scope={}) as run:
        rec = run.part("p", lambda: {"v": 1})
    assert rec[STAMP]["code_commit"] == "abc+dirty"
    monkeypatch.setattr(grid_mod, "git_state", lambda: ("abc", True))
    with GridRun(tmp_path, scope={}, rerun_other_code=True) as run:
        assert run.cached("p") is None  # the clean commit is other code than its dirty tree
