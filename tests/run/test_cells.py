"""Cells (drpo_sim.run.cells): a cell's id is the hash of its kind, its spec and its code digest,
and of nothing else (its labels and inputs place it, they do not identify it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from drpo_sim import objectives
from drpo_sim.provenance import code_digest
from drpo_sim.run import cells
from drpo_sim.run.cells import KINDS, Cell, Kind, cell_id, sim_cell
from drpo_sim.sim import SimConfig

CONFIG = SimConfig.from_flat({"vocab_size": 64, "steps": 5, "group_size": 8}).flat()


def _cell(**labels) -> Cell:
    return sim_cell(CONFIG, "drpo", objectives.get("drpo").params, [0, 1], **labels)


def test_cell_id_is_the_hash_of_kind_spec_and_code():
    cell = _cell(noise_std=0.0)
    canonical = json.dumps({"kind": "sim", "spec": cell.spec, "code": cell.code}, sort_keys=True, separators=(",", ":"))
    assert cell.id == hashlib.sha256(canonical.encode()).hexdigest()[: cells.ID_DIGITS] and len(cell.id) == 16
    assert cell.id == cell_id({"kind": "sim", "spec": cell.spec, "code": cell.code})
    # the code digest is the simulator's, whose cells these are, not the package version
    assert cell.code == KINDS["sim"].code == code_digest("drpo_sim.sim")
    assert KINDS["sim"].module == "drpo_sim.sim" and KINDS["lab"].module == "drpo_sim.lm.rl"


def test_sim_cell_lays_out_its_spec_and_its_labels():
    cell = sim_cell(CONFIG, "drpo", {"delta": 0.15}, (3, 7), setting="a", variant="drpo (delta 0.15)")
    assert cell.kind == "sim" and cell.inputs is None
    assert cell.spec == {"config": CONFIG, "method": "drpo", "params": {"delta": 0.15}, "seeds": [3, 7]}
    assert cell.labels == {"setting": "a", "variant": "drpo (delta 0.15)"}
    assert cell.task() == {"id": cell.id, "kind": "sim", "spec": dict(cell.spec), "inputs": None}
    meta = cell.metadata()
    assert meta == {"cell": cell.id, "kind": "sim", "spec": dict(cell.spec), "labels": dict(cell.labels),
                    "code": cell.code}
    json.dumps(meta)  # what a cell file records is JSON


@pytest.mark.parametrize("change", [
    {"config": {**CONFIG, "noise_std": 0.1}},
    {"config": {**CONFIG, "steps": 6}},
    {"method": "mask_drpo", "params": objectives.get("mask_drpo").params},
    {"params": {"delta": 2.5}},
    {"seeds": [0, 2]},
    {"seeds": [0, 1, 2]},
], ids=["config", "steps", "method", "params", "other-seeds", "more-seeds"])
def test_a_cell_id_changes_when_its_spec_changes(change):
    cell = _cell()
    other = Cell("sim", {**cell.spec, **change}, cell.labels)
    assert other.id != cell.id


def test_a_cell_id_changes_when_its_code_changes(monkeypatch):
    before = _cell().id
    # the code digest of the module computing the cell: any edit of the simulator (or of what it imports)
    monkeypatch.setattr(Kind, "code", property(lambda self: "0" * 16))
    edited = _cell()
    assert edited.code == "0" * 16 and edited.id != before
    monkeypatch.undo()
    assert _cell().id == before
    # the same through the KINDS entry: a kind computed by other code has other ids
    monkeypatch.setitem(KINDS, "sim", dataclasses.replace(KINDS["sim"], module="drpo_sim.stats"))
    moved = _cell()
    assert moved.code == code_digest("drpo_sim.stats") != code_digest("drpo_sim.sim") and moved.id != before


def test_labels_and_inputs_do_not_change_a_cell_id():
    plain = _cell()
    labelled = _cell(setting="fp8_stale", variant="drpo")
    assert labelled.id == plain.id and labelled.labels != plain.labels
    relabelled = plain.relabel(noise_std=0.1)
    assert relabelled.id == plain.id and relabelled.labels == {"noise_std": 0.1} and relabelled.spec == plain.spec
    assert Cell("sim", plain.spec, inputs=object()).id == plain.id


def test_noise_std_0_and_0_0_are_one_cell():
    ints = SimConfig.from_flat({"vocab_size": 64, "steps": 5, "group_size": 8, "noise_std": 0, "lr": 1}).flat()
    floats = SimConfig.from_flat({"vocab_size": 64, "steps": 5, "group_size": 8, "noise_std": 0.0, "lr": 1.0}).flat()
    a = sim_cell(ints, "drpo", {"delta": 12}, [0, 1])
    b = sim_cell(floats, "drpo", {"delta": 12.0}, [0, 1])
    assert a.id == b.id and a.spec == b.spec
    assert isinstance(a.spec["config"]["noise_std"], float) and isinstance(a.spec["params"]["delta"], float)
    # integer fields stay integers, and another value is another cell
    assert isinstance(a.spec["config"]["vocab_size"], int) and type(a.spec["config"]["std_norm"]) is bool
    assert sim_cell({**floats, "noise_std": 0.1}, "drpo", {"delta": 12.0}, [0, 1]).id != a.id


def test_unknown_kind_and_non_finite_values_are_errors():
    with pytest.raises(ValueError, match="unknown cell kind 'gpu'; valid: sim, lab"):
        Cell("gpu", {})
    cell = sim_cell({**CONFIG, "noise_std": float("nan")}, "drpo", {"delta": 12.5}, [0], setting="x")
    with pytest.raises(ValueError, match=r"cell \{'setting': 'x'\}: values must be finite numbers"):
        cell.id
