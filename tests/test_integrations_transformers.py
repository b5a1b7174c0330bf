"""switchema.integrations.transformers.EMATrainerCallback with a real transformers.Trainer on CPU.

The model is a tiny randomly initialised GPT-2 built here; nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer needs it

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from switchema import EMA, SWA  # noqa: E402
from switchema.integrations.transformers import EMATrainerCallback  # noqa: E402
from switchema.switching import SwitchRule  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def _model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=50,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def _data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": x, "labels": x} for x in torch.randint(0, 50, (n, 8), generator=g)]


TRAIN, EVAL = _data(16, 0), _data(8, 1)


def _args(out: Path, **kwargs) -> TrainingArguments:
    opts = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    opts.update(kwargs)
    return TrainingArguments(**opts)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


class Recorder(TrainerCallback):
    """Weights when training begins and after every optimizer step."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] | None = None
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = _weights(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append(_weights(model))


class EpochProbe(TrainerCallback):
    """At every epoch end (add it after the EMA callback): model == average? optimizer state."""

    def __init__(self, ema: EMATrainerCallback) -> None:
        self.ema = ema
        self.equal: list[bool] = []
        self.opt_state: list[int] = []

    def on_epoch_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        avg = self.ema.averager.averaged_state_dict()
        self.equal.append(all(torch.equal(avg[k], v) for k, v in _weights(model).items()))
        self.opt_state.append(sum(1 for s in optimizer.state.values() if s))


def _hand_ema(start, steps, decay):
    avg = {k: v.double() for k, v in start.items()}
    for w in steps:
        avg = {k: decay * avg[k] + (1 - decay) * w[k].double() for k in avg}
    return avg


def _assert_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    for k in b:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=0, msg=k)


def _eval_loss(state_dict: dict[str, torch.Tensor], tmp_path: Path, data=EVAL) -> float:
    """eval_loss of a plain Trainer (no callback) on a fresh model holding ``state_dict``."""
    model = _model()
    model.load_state_dict(state_dict)
    return Trainer(model=model, args=_args(tmp_path / "reference")).evaluate(data)["eval_loss"]


# ---------------------------------------------------------------------- construction


def test_options_are_checked_and_evaluation_needs_attach(tmp_path):
    with pytest.raises(ValueError, match="decay"):
        EMATrainerCallback(decay=1.5)
    with pytest.raises(ValueError, match="evaluate"):
        EMATrainerCallback(evaluate="ema")
    with pytest.raises(TypeError, match="SWA got an unexpected option 'warmup'"):
        EMATrainerCallback(functools.partial(SWA, warmup="ema_paper"))
    with pytest.raises(ValueError, match="not both"):
        EMATrainerCallback(SWA, decay=0.9)
    trainer = Trainer(
        model=_model(), args=_args(tmp_path), train_dataset=TRAIN, callbacks=[EMATrainerCallback()]
    )
    with pytest.raises(RuntimeError, match="attach"):
        trainer.train()
    ema = EMATrainerCallback().attach(trainer)
    with pytest.raises(RuntimeError, match="already attached"):
        ema.attach(trainer)


def test_import_is_lazy():
    import switchema.integrations as integrations

    assert integrations.EMATrainerCallback is EMATrainerCallback


# ---------------------------------------------------------------------- updates


@pytest.mark.parametrize("attached", [True, False])
def test_updates_once_per_optimizer_step_under_accumulation(tmp_path, attached):
    rec = Recorder()
    ema = EMATrainerCallback(decay=0.8, evaluate="average" if attached else "online")
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN, callbacks=[rec])
    if attached:
        ema.attach(trainer)
    else:
        trainer.add_callback(ema)
    trainer.train()
    # 16 samples, batches of 4, 2 batches per optimizer step: 2 steps per epoch, 2 epochs
    assert trainer.state.global_step == len(rec.steps) == 4
    assert ema.averager.step == ema.averager.n_updates == 4
    _assert_close(ema.averager.averaged_state_dict(), _hand_ema(rec.start, rec.steps, 0.8))
    _assert_close(_weights(trainer.model), rec.steps[-1], atol=0)  # no switch: untouched
    # tied input / output embeddings are averaged once and exported under both names
    avg = ema.averager.averaged_state_dict()
    assert torch.equal(avg["lm_head.weight"], avg["transformer.wte.weight"])


def test_swa(tmp_path):
    rec = Recorder()
    ema = EMATrainerCallback(SWA, evaluate="online")
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN, callbacks=[rec])
    trainer.add_callback(ema)
    trainer.train()
    expected = {k: torch.stack([w[k].double() for w in rec.steps]).mean(0) for k in rec.start}
    _assert_close(ema.averager.averaged_state_dict(), expected)


# ---------------------------------------------------------------------- switch


@pytest.mark.parametrize("reset_optimizer", [False, True])
def test_switch_at_epoch_ends(tmp_path, reset_optimizer):
    ema = EMATrainerCallback(
        decay=0.8,
        switch=SwitchRule("1e", start="2e", reset_optimizer=reset_optimizer),
        evaluate="online",
    )
    trainer = Trainer(model=_model(), args=_args(tmp_path, num_train_epochs=3), train_dataset=TRAIN)
    trainer.add_callback(ema)
    probe = EpochProbe(ema)
    trainer.add_callback(probe)
    trainer.train()
    assert probe.equal == [False, True, True]
    n = probe.opt_state[0]
    assert n > 0 and probe.opt_state == ([n, 0, 0] if reset_optimizer else [n] * 3)


# ---------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("evaluate", ["average", "online", "both"])
def test_evaluate_uses_the_requested_weights(tmp_path, evaluate):
    args = _args(tmp_path, eval_strategy="epoch")
    trainer = Trainer(model=_model(), args=args, train_dataset=TRAIN, eval_dataset=EVAL)
    ema = EMATrainerCallback(decay=0.8, evaluate=evaluate).attach(trainer)
    trainer.train()
    online = _weights(trainer.model)
    avg_loss = _eval_loss(ema.averager.averaged_state_dict(), tmp_path)
    online_loss = _eval_loss(online, tmp_path)
    assert abs(avg_loss - online_loss) > 1e-4

    metrics = trainer.evaluate()
    _assert_close(_weights(trainer.model), online, atol=0)
    if evaluate == "online":
        assert metrics["eval_loss"] == pytest.approx(online_loss, abs=1e-5)
        assert "eval_online_loss" not in metrics
    else:
        assert metrics["eval_loss"] == pytest.approx(avg_loss, abs=1e-5)
        if evaluate == "both":
            assert metrics["eval_online_loss"] == pytest.approx(online_loss, abs=1e-5)
        else:
            assert "eval_online_loss" not in metrics
    # the epoch-end evaluations during training were logged the same way
    logged = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(logged) == 3  # two epoch ends, then the call above: same weights as the last
    assert logged[1]["eval_loss"] == logged[2]["eval_loss"]
    online_logged = [h for h in trainer.state.log_history if "eval_online_loss" in h]
    assert len(online_logged) == (3 if evaluate == "both" else 0)


def test_failing_evaluation_restores_the_model(tmp_path):
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN, eval_dataset=EVAL)
    ema = EMATrainerCallback(decay=0.8).attach(trainer)
    trainer.train()
    online = _weights(trainer.model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    trainer.evaluation_loop = boom
    with pytest.raises(RuntimeError, match="boom"):
        trainer.evaluate()
    _assert_close(_weights(trainer.model), online, atol=0)
    assert ema.averager._swapped_index is None


def test_evaluate_on_a_dict_of_datasets(tmp_path):
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN)
    ema = EMATrainerCallback(decay=0.8, evaluate="both").attach(trainer)
    trainer.train()
    metrics = trainer.evaluate({"a": EVAL, "b": EVAL[:4]})
    avg_loss = _eval_loss(ema.averager.averaged_state_dict(), tmp_path)
    online_loss = _eval_loss(_weights(trainer.model), tmp_path)
    assert metrics["eval_a_loss"] == pytest.approx(avg_loss, abs=1e-5)
    assert metrics["eval_online_a_loss"] == pytest.approx(online_loss, abs=1e-5)
    assert {"eval_b_loss", "eval_online_b_loss"} <= metrics.keys()


# ---------------------------------------------------------------------- checkpoints


def _ckpt_run(
    out: Path, attached: bool, resume: str | bool | None = None, compute_metrics=None, **kwargs
):
    args = _args(out, num_train_epochs=4, save_strategy="epoch", **kwargs)
    trainer = Trainer(
        model=_model(),
        args=args,
        train_dataset=TRAIN,
        eval_dataset=EVAL,
        compute_metrics=compute_metrics,
    )
    ema = EMATrainerCallback(
        functools.partial(EMA, decay=0.9, warmup="ema_paper"),
        switch=SwitchRule("1e", start="2e", reset_optimizer=True),
        evaluate="average" if attached else "online",
    )
    if attached:
        ema.attach(trainer)
    else:
        trainer.add_callback(ema)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, ema


@pytest.mark.parametrize("attached", [True, False])
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, attached):
    straight_trainer, straight = _ckpt_run(tmp_path / "straight", attached)
    saved = torch.load(tmp_path / "straight" / "checkpoint-4" / "ema.pt", weights_only=True)
    assert saved["averager"]["step"] == 4 and saved["averager"]["epoch"] == 2

    # interrupted after 2 epochs: only that checkpoint exists
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    resume = True if attached else str(tmp_path / "resumed" / "checkpoint-4")
    resumed_trainer, resumed = _ckpt_run(tmp_path / "resumed", attached, resume=resume)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a["averager"]["step"] == b["averager"]["step"] == 8
    for k, v in a["averager"]["averages"].items():
        torch.testing.assert_close(v, b["averager"]["averages"][k], atol=1e-6, rtol=0, msg=k)
    _assert_close(_weights(straight_trainer.model), _weights(resumed_trainer.model))


def test_resume_without_ema_file_warns(tmp_path):
    _ckpt_run(tmp_path / "a", attached=False)
    os.remove(tmp_path / "a" / "checkpoint-4" / "ema.pt")
    with pytest.warns(UserWarning, match="does not exist"):
        _ckpt_run(tmp_path / "a", attached=True, resume=str(tmp_path / "a" / "checkpoint-4"))


def test_load_best_model_at_end_restores_its_averages(tmp_path):
    calls = []

    def first_is_best(prediction):
        calls.append(1)
        return {"score": -len(calls)}

    trainer, ema = _ckpt_run(
        tmp_path,
        attached=True,
        compute_metrics=first_is_best,
        eval_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=True,
    )
    best = trainer.state.best_model_checkpoint
    assert best.endswith("checkpoint-2")
    saved = torch.load(os.path.join(best, "ema.pt"), weights_only=True)
    assert ema.averager.step == saved["averager"]["step"]
    for k, v in saved["averager"]["averages"].items():
        assert torch.equal(ema.state_dict()["averager"]["averages"][k], v), k


# ---------------------------------------------------------------------- DDP

_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_integrations_transformers import (
        EMATrainerCallback, EVAL, TRAIN, Recorder, Trainer, _args, _hand_ema, _model
    )

    out = Path({out!r})
    rec = Recorder()
    args = _args(out / "run", save_strategy="epoch", eval_strategy="epoch", ddp_backend="gloo")
    trainer = Trainer(model=_model(), args=args, train_dataset=TRAIN, eval_dataset=EVAL,
                      callbacks=[rec])
    ema = EMATrainerCallback(decay=0.8, evaluate="both").attach(trainer)
    trainer.train()
    avg = ema.averager.averaged_state_dict()
    expected = _hand_ema(rec.start, rec.steps, 0.8)
    err = max(float((avg[k].double() - expected[k]).abs().max()) for k in expected)
    result = dict(world=args.world_size, steps=ema.averager.step, err=err,
                  wrapped=type(trainer.model_wrapped).__name__,
                  evals=[sorted(h) for h in trainer.state.log_history if "epoch" in h],
                  avg={{k: v.flatten().tolist() for k, v in avg.items()}})
    (out / f"rank{{args.process_index}}.json").write_text(json.dumps(result))
    """
)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    script = tmp_path / "ddp_run.py"
    tests_dir = str(Path(__file__).resolve().parent)
    script.write_text(_DDP_SCRIPT.format(tests=tests_dir, out=str(tmp_path)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([*cmd, str(script)], cwd=tmp_path, env=env, check=True, timeout=240)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        # 16 samples over 2 ranks, batches of 4, accumulation 2: 1 optimizer step per epoch
        assert r["world"] == 2 and r["steps"] == 2 and r["err"] < 1e-6
        assert r["wrapped"] == "DistributedDataParallel"
        assert any("eval_online_loss" in keys for keys in r["evals"])
        assert any("eval_loss" in keys for keys in r["evals"])
    assert ranks[0]["avg"] == ranks[1]["avg"]
    assert (tmp_path / "run" / "checkpoint-2" / "ema.pt").is_file()


def test_switch_rule_in_steps_and_copy_at_end(tmp_path):
    rec = Recorder()
    ema = EMATrainerCallback(decay=0.8, switch="3s", evaluate="online", copy_average_at_end=True)
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=TRAIN, callbacks=[rec])
    trainer.add_callback(ema)
    switched = []

    class StepProbe(TrainerCallback):  # after the EMA callback: model == average now?
        def on_step_end(self, args, state, control, model=None, **kwargs):
            avg = ema.averager.averaged_state_dict()
            switched.append(all(torch.equal(avg[k], v) for k, v in _weights(model).items()))

    trainer.add_callback(StepProbe())
    trainer.train()
    assert switched == [False, False, True, False]
    # 4 optimizer steps: a switch after step 3, then the average is copied in at the end
    _assert_close(ema.averager.averaged_state_dict(), _hand_ema(rec.start, rec.steps, 0.8))
    _assert_close(_weights(trainer.model), ema.averager.averaged_state_dict(), atol=0)
