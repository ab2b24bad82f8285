"""artune's fused Adam/AdamW against torch.optim's, step for step, and what it spares a new process."""

import subprocess
import sys

import pytest
import torch

from artune.config import TrainConfig
from artune.models import GPT, ModelConfig
from artune.optim import lr_lambda, make_optimizer

CONFIGS = {
    "adam": TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.1, warmup=3, lr_schedule="cosine", lr_min_ratio=0.1),
    "adamw": TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.1, warmup=3, lr_schedule="linear"),
    "noam": TrainConfig(optimizer="noam", lr=1.0, warmup=4),
}
STEPS = 12


def torch_optimizer(config: TrainConfig, model: torch.nn.Module, total_steps: int):
    """What artune's trainer used before: torch.optim's fused Adam/AdamW with a LambdaLR."""
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    else:
        betas = (0.9, 0.98) if config.optimizer == "noam" else (0.9, 0.999)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay, fused=True)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config, total_steps))


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=20, seq_len=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0))


def train(net: GPT, step, steps: range) -> None:
    for i in steps:
        x = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(i))
        loss = torch.nn.functional.cross_entropy(net(x).flatten(0, 1), x.roll(-1, 1).flatten())
        loss.backward()
        step()


@pytest.mark.parametrize("name", CONFIGS)
def test_the_same_parameters_and_lr_as_torch_optim_step_for_step(name):
    config = CONFIGS[name]
    ours, theirs = model(), model()
    opt = make_optimizer(config, ours.parameters(), STEPS)
    ref, sched = torch_optimizer(config, theirs, STEPS)

    def ours_step():
        opt.step()
        opt.zero_grad()

    def theirs_step():
        ref.step()
        sched.step()
        ref.zero_grad()

    for i in range(STEPS):
        train(ours, ours_step, range(i, i + 1))
        train(theirs, theirs_step, range(i, i + 1))
        assert opt.lr == ref.param_groups[0]["lr"], i
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b), i


@pytest.mark.parametrize("name", CONFIGS)
def test_a_state_saved_by_torch_optim_or_by_itself_resumes_the_same_run(name):
    config = CONFIGS[name]
    straight = model()
    opt = make_optimizer(config, straight.parameters(), STEPS)
    train(straight, lambda: (opt.step(), opt.zero_grad()), range(STEPS))

    # the first half by torch.optim (a checkpoint of an earlier artune), the rest by artune
    half = model()
    ref, sched = torch_optimizer(config, half, STEPS)
    train(half, lambda: (ref.step(), sched.step(), ref.zero_grad()), range(STEPS // 2))
    resumed = make_optimizer(config, half.parameters(), STEPS)
    resumed.load_state_dict({**ref.state_dict(), "steps_taken": sched.state_dict()["last_epoch"]})
    # its own state, saved and put back into a new optimizer mid-run
    train(half, lambda: (resumed.step(), resumed.zero_grad()), range(STEPS // 2, STEPS - 2))
    again = make_optimizer(config, half.parameters(), STEPS)
    again.load_state_dict(resumed.state_dict())
    train(half, lambda: (again.step(), again.zero_grad()), range(STEPS - 2, STEPS))

    assert again.lr == opt.lr
    for a, b in zip(straight.parameters(), half.parameters()):
        assert torch.equal(a, b)


def test_a_state_of_another_model_is_refused():
    net = model()
    n = len(list(net.parameters()))
    opt = make_optimizer(CONFIGS["adam"], net.parameters(), STEPS)
    state = opt.state_dict()
    state["param_groups"][0]["params"].pop()
    with pytest.raises(ValueError, match=f"holds {n - 1} parameters, the model has {n}"):
        opt.load_state_dict(state)


def test_training_in_a_new_process_never_imports_torch_dynamo(tmp_path):
    """torch.optim imports torch._dynamo (1.7-2.6 s) when its first optimizer is built; every
    new trial worker would pay it."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40, encoding="utf-8")
    script = (
        "import sys\n"
        "from artune.config import TrainConfig\n"
        "from artune.train import Trainer\n"
        f"Trainer(TrainConfig(dataset={str(corpus)!r}, d_model=16, n_layers=1, n_heads=2, seq_len=8, batch_size=4,"
        " epochs=2, batches_per_epoch=3, sample_tokens=3, prompt='to', optimizer='adamw', device='cpu')).fit()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
