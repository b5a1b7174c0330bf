"""The names of a run's models (switchema.lab.keys): one format, one parse, the names the lab
has always written, errors that name the string, and the training loop writing exactly them."""

from __future__ import annotations

import numpy as np
import pytest

from switchema.lab.config import StudyConfig
from switchema.lab.jobs import build_study_data
from switchema.lab.keys import ARRAYS, KINDS, ModelKey, ModelLabel, saved_keys
from switchema.lab.resolve import resolve
from switchema.lab.train import train_run

pytestmark = pytest.mark.usefixtures("one_thread")

# names as run folders written before this module hold them (models.pt; predictions.npz behind
# a prefix); labels from metrics.jsonl
WRITTEN = [
    "baseline/online/0",
    "ema/online/3",
    "ema/avg/0",
    "ema/avg@0.9/1",
    "ema/avg@0.999/12",
    "ema/avg@0.99995/0",
    "ema/avg@1e-05/0",
    "sema-openmixup/avg/4",
    "swa/avg/0",
    "posthoc/pow@0.05/0",
    "posthoc/pow@0.1/0",
    "posthoc/tracked@0.15/2",
    "posthoc/posthoc@0.015/0",
    "posthoc/posthoc@0.288675/0",
]


@pytest.mark.parametrize("text", WRITTEN)
def test_every_name_written_parses_and_formats_back(text):
    key = ModelKey.parse(text)
    assert key.format() == text
    method, label, seed = text.split("/")
    assert (key.method, key.label.format(), key.seed) == (method, label, int(seed))
    assert ModelKey(method, label, int(seed)) == key
    for prefix in ARRAYS:
        assert key.format(prefix) == f"{prefix}/{text}"
        assert ModelKey.parse(f"{prefix}/{text}", prefix) == key
    over_seeds = ModelKey.parse(f"{method}/{label}")
    assert over_seeds.seed is None and over_seeds.format() == f"{method}/{label}"


def test_numbers_are_written_as_the_lab_always_wrote_them():
    """``kind@{value:g}``, for decays and widths of any number of digits, and the parsed number
    is the one written (parse(format(k)) == k for every key)."""
    rng = np.random.default_rng(0)
    values = [*rng.uniform(0, 1, 300), *(1 - 10.0 ** -rng.uniform(1, 8, 300)), 1 / 12**0.5]
    for kind in ("avg", "pow", "tracked", "posthoc"):
        for v in values:
            label = ModelLabel(kind, float(v))
            assert label.format() == f"{kind}@{v:g}"
            assert label.value == float(f"{v:g}")
            assert ModelLabel.parse(label.format()) == label
            key = ModelKey("m", label, 7)
            assert ModelKey.parse(key.format()) == key
            assert ModelKey.parse(key.format("grid"), "grid") == key
    assert ModelLabel("avg", np.float32(0.5)) == ModelLabel("avg", 0.5)
    assert ModelKey("ema", "avg", np.int64(2)).seed == 2 and ModelKey("ema", "avg", 2).seed == 2


def test_the_kinds_and_their_numbers():
    assert ModelLabel("online").format() == "online" and ModelLabel("avg").format() == "avg"
    assert {k for k, n in KINDS.items() if n == "width"} == {"pow", "tracked", "posthoc"}
    assert ModelLabel.parse("avg@0.99").value == 0.99 and ModelLabel.parse("avg").value is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("ema/avg", None),  # well formed: no error (a model over seeds)
        ("ema", "is not <method>/<label>/<seed>"),
        ("ema/avg/0/1", "is not <method>/<label>/<seed>"),
        ("/avg/0", "is not <method>/<label>/<seed>"),
        ("ema//0", "is not <method>/<label>/<seed>"),
        ("ema/avg/", "is not <method>/<label>/<seed>"),
        ("ema/avg/x", "the seed 'x' is not an int >= 0"),
        ("ema/avg/01", "the seed '01' is not an int >= 0"),
        ("ema/avg/-1", "the seed '-1' is not an int >= 0"),
        ("ema/average/0", "model label 'average' is not one of online, avg, avg@<decay>"),
        ("ema/avg@/0", "model label 'avg@': '' is not a number"),
        ("ema/avg@x/0", "model label 'avg@x': 'x' is not a number"),
        ("ema/avg@0.9@1/0", "model label 'avg@0.9@1': '0.9@1' is not a number"),
        ("ema/avg@nan/0", "must be finite and >= 0"),
        ("ema/avg@-0.5/0", "must be finite and >= 0"),
        ("ema/online@0.9/0", "the online model has no number"),
        ("posthoc/posthoc/0", "a posthoc model needs its width"),
        ("ema/avg@0.990/0", "model label 'avg@0.990' is written 'avg@0.99'"),
        ("ema/avg@.99/0", "is written 'avg@0.99'"),
    ],
)
def test_malformed_names_are_refused_naming_the_string_and_the_form(text, message):
    if message is None:
        ModelKey.parse(text)
        return
    with pytest.raises(ValueError) as e:
        ModelKey.parse(text)
    assert repr(text) in str(e.value) and message in str(e.value)


def test_array_names_and_bad_arguments():
    with pytest.raises(ValueError, match=r"model array 'grid/ema/avg/0' is not probs/<method>"):
        ModelKey.parse("grid/ema/avg/0", "probs")
    with pytest.raises(ValueError, match="an array prefix is one of probs, val_probs"):
        ModelKey("ema", "avg", 0).format("logits")
    with pytest.raises(ValueError, match="per seed"):
        ModelKey("ema", "avg").format("probs")
    with pytest.raises(ValueError, match="a method is a name without '/'"):
        ModelKey("a/b", "avg", 0)
    with pytest.raises(ValueError, match="a seed is an int >= 0 or None, got True"):
        ModelKey("ema", "avg", True)
    with pytest.raises(TypeError, match="ModelLabel or a string"):
        ModelKey("ema", 0.99, 0)
    with pytest.raises(TypeError, match="must be a number, got '0.9'"):
        ModelLabel("avg", "0.9")
    with pytest.raises(TypeError, match="a model key is a string"):
        ModelKey.parse(None)
    names = [
        "grid/x",
        "grid/y",
        "data/x_test",
        "grid/ema/avg/1",
        "probs/ema/avg/1",
        "grid/sema/avg/0",
    ]
    assert saved_keys(names, "grid") == [ModelKey("ema", "avg", 1), ModelKey("sema", "avg", 0)]
    with pytest.raises(ValueError, match="'samples/ema/avg/x'"):
        saved_keys(["samples/ema/avg/x"], "samples")


def test_training_writes_the_names_the_rows_give():
    """Every final model of a tiny run with several decays and post-hoc EMA is saved under
    ``method/label/seed`` (spelled here by hand from the metric rows), its predictions and
    decision-boundary grid under ``probs/``, ``val_probs/`` and ``grid/`` of the same name."""
    cfg = StudyConfig(
        task="circles",
        methods=["baseline", "ema", "posthoc"],
        seeds=[5],
        epochs=1,
        decay=[0.9, 0.99],
        posthoc_grid=[0.05, 1 / 12**0.5 - 1e-9],
        posthoc_check=[0.05],
    )
    study = resolve(cfg)
    data, y_train, flipped = build_study_data(study)  # with its validation split
    rows, arrays, states = train_run(
        study, data, ["baseline", "ema", "posthoc"], 5, y_train=y_train, flipped=flipped
    )
    expected = {f"{r['method']}/{r['model']}/5" for r in rows}
    assert "posthoc/posthoc@0.288675/5" in expected and "ema/avg@0.99/5" in expected
    assert set(states) == expected
    assert {k.format() for k in map(ModelKey.parse, states)} == expected
    for prefix in ("probs", "val_probs", "grid"):
        assert {k.format() for k in saved_keys(arrays, prefix)} == expected
        assert {n for n in arrays if n.startswith(f"{prefix}/")} >= {
            f"{prefix}/{e}" for e in expected
        }


def test_reports_read_measures_of_a_named_model(tmp_path):
    """``analysis.<measure>`` of ``method/model`` comes from analysis.json, seed by seed; a
    model other than the one measured, or a malformed name, is a usage error naming it."""
    import json

    from switchema.lab.errors import UsageError
    from switchema.lab.report.points import Run, values

    measured = {
        f"{m}/{s}": {"method": m, "model": label, "seed": s, "top_eigenvalue": 10.0 * s + k}
        for k, (m, label) in enumerate([("baseline", "online"), ("ema", "avg@0.99")])
        for s in (0, 1)
    }
    (tmp_path / "analysis.json").write_text(json.dumps({"models": measured}))
    run = Run("r", tmp_path, {}, [], {})
    assert values(run, "ema/avg@0.99", "analysis.top_eigenvalue") == ({0: 1.0, 1: 11.0}, "")
    assert values(run, "baseline/online", "analysis.top_eigenvalue")[0] == {0: 0.0, 1: 10.0}
    with pytest.raises(UsageError, match="measured ema/avg@0.99, not ema/avg@0.999"):
        values(run, "ema/avg@0.999", "analysis.top_eigenvalue")
    with pytest.raises(UsageError, match="has no 'trace'; it has: top_eigenvalue"):
        values(run, "ema/avg@0.99", "analysis.trace")
    with pytest.raises(UsageError, match="method/model.*'avg@0.990' is written 'avg@0.99'"):
        values(run, "ema/avg@0.990", "analysis.top_eigenvalue")
