"""README.md: a landing page whose example runs, leaves the state it describes, and whose
figures are those of the generated findings.

The Python blocks of the README and of the documentation share one convention (see
``markdown_blocks``); the documentation's blocks are run by tests/test_docs.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re

import torch

from markdown_blocks import ROOT, block, blocks, run

README = ROOT / "README.md"


def test_readme_is_a_landing_page():
    """The reference material lives in docs/; the README stays short enough to read."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, (
        f"README.md has {len(lines)} lines (at most 250: move detail to docs/)"
    )
    assert {tag for tag, _ in blocks(README)} == {"ten-lines", "quickstart", "quickstart-save"}


def test_readme_starts_with_the_two_commands():
    """Nothing but prose comes before the main-job and test commands (tests/test_repo.py checks
    that CI runs the second); the CPU note comes before them, since the first downloads torch."""
    text = README.read_text()
    fences = re.findall(r"^```(\w*)\n(.*?)\n```", text, re.S | re.M)
    assert [lang for lang, _ in fences[:2]] == ["bash", "bash"]
    assert fences[0][1].endswith("switchema compare") and "pytest" in fences[1][1]
    assert text.index("download.pytorch.org/whl/cpu") < text.index("```bash")


def test_ten_lines():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    before = copy.deepcopy(model)
    loader = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(5)]
    seen = []

    def evaluate(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})

    ns = run(
        "ten-lines",
        dict(
            model=model,
            loader=loader,
            loss_fn=torch.nn.functional.cross_entropy,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            evaluate=evaluate,
        ),
    )
    ema = ns["ema"]
    assert ema.step == ema.n_updates == 5
    averaged = ema.averaged_state_dict()
    # the switch copied the average into the model; the block evaluated that same average
    assert all(torch.equal(seen[0][k], averaged[k]) for k in averaged)
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())
    # the average of 5 steps at 0.999 is still almost the initial weights, not the trained ones
    w0, w = before[0].weight, model[0].weight
    assert (w - w0).abs().max() > 0 and torch.allclose(w, w0, atol=1e-3)


def test_quickstart(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # the save block writes ckpt.pt
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ns = run("quickstart")
    printed = out.getvalue().strip()
    assert f"It prints `{printed}`" in README.read_text(), printed  # the README says what it prints
    model, ema, sema, sema_model = ns["model"], ns["ema"], ns["sema"], ns["sema_model"]
    trained, ema_acc, sema_acc = ns["accuracy"](model), ns["ema_acc"], ns["sema_acc"]
    # what the text says: the EMA is about 2 points ahead of the weights it averages, and
    # Switch EMA is level with the EMA
    assert ema_acc - trained > 0.015 and abs(sema_acc - ema_acc) < 0.005
    assert ema.step == ema.n_updates == sema.step == 20 * 40
    # swapped() restored the plain-EMA model: it is not its average
    averaged = ema.averaged_state_dict()
    assert not torch.equal(model[0].weight, averaged["0.weight"])
    # the last switch (step 800) copied the average into the Switch EMA model
    for name, p in sema_model.named_parameters():
        assert torch.equal(p, sema.averaged_state_dict()[name]), name
    assert ns["accuracy"](sema_model) == sema_acc

    ns = run("quickstart-save", ns)
    for name, p in model.named_parameters():  # the model now holds the average
        assert torch.equal(p, averaged[name]), name
    saved = torch.load(tmp_path / "ckpt.pt")
    fresh = type(ema)(copy.deepcopy(model), decay=0.99)
    fresh.load_state_dict(saved["ema"])
    assert fresh.step == ema.step
    assert torch.equal(fresh.averaged_state_dict()["0.weight"], averaged["0.weight"])
    assert not torch.equal(saved["model"]["0.weight"], averaged["0.weight"])  # saved before


# ------------------------------------------------------------------- the findings section

CLAIMS = ROOT / "experiments" / "CLAIMS.md"
RESULTS = ROOT / "experiments" / "RESULTS.md"
INTERVAL = re.compile(r"[-+]?\d+\.\d+ \[[-+]?\d+\.\d+, [-+]?\d+\.\d+\]")


def _findings() -> str:
    text = README.read_text()
    return text[text.index("## What the lab found") : text.index("## Install")]


def test_findings_quote_the_generated_files():
    """Every effect the README quotes is in CLAIMS.md or RESULTS.md as generated now: when the
    runs are redone and the files regenerated, this fails until the README says the same."""
    findings = _findings()
    generated = CLAIMS.read_text() + RESULTS.read_text()
    quoted = INTERVAL.findall(findings)
    assert len(quoted) >= 2
    for interval in quoted:
        assert interval in generated, f"README quotes {interval}, not in the generated files"
    counts = re.search(r"\d+ claims measured: [^.;]*", CLAIMS.read_text())
    assert counts and counts[0] in " ".join(findings.split()), (
        f"README must quote CLAIMS.md's count as it is now: {counts[0] if counts else None!r}"
    )


def test_findings_say_what_the_claims_table_says():
    """'No claim of the SEMA paper was supported': read it from the table, not from memory."""
    assert "no claim of the SEMA paper was supported" in " ".join(_findings().split())
    rows = [line.split(" | ") for line in CLAIMS.read_text().splitlines() if line.startswith("| ")]
    sema = [row for row in rows if len(row) > 2 and row[1] == "SEMA"]
    assert len(sema) > 20
    assert not any("supported" in row[-1] and "not" not in row[-1] for row in sema)
    assert block("quickstart")[0] == README
