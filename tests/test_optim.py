"""artune's scheduled Adam/AdamW against torch.optim's with a LambdaLR, step for step, and its checkpoints."""

import pytest
import torch

from artune.config import TrainConfig
from artune.models import GPT, ModelConfig
from artune.optim import Adam, lr_lambda, make_optimizer

CONFIGS = {
    "adam": TrainConfig(optimizer="adam", lr=3e-3, weight_decay=0.1, warmup=3, lr_schedule="cosine", lr_min_ratio=0.1),
    "adamw": TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.1, warmup=3, lr_schedule="linear"),
    "noam": TrainConfig(optimizer="noam", lr=1.0, warmup=4),
    "adamw-beta2": TrainConfig(
        optimizer="adamw", lr=3e-3, weight_decay=0.1, adam_beta2=0.95, warmup=3, lr_schedule="cosine"
    ),
    "noam-beta2": TrainConfig(optimizer="noam", lr=1.0, adam_beta2=0.99, warmup=4),
}
STEPS = 12


def torch_optimizer(config: TrainConfig, model: torch.nn.Module, total_steps: int):
    """The usual way to schedule torch.optim's fused Adam/AdamW: a LambdaLR over the same multiplier."""
    beta2 = config.adam_beta2 if config.adam_beta2 is not None else 0.98 if config.optimizer == "noam" else 0.999
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=(0.9, beta2), weight_decay=config.weight_decay, fused=True
        )
    else:
        opt = torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=(0.9, beta2), weight_decay=config.weight_decay, fused=True
        )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config, total_steps))


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")),
]


def model(device: str = "cpu") -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=20, seq_len=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0)).to(
        device
    )


def train(net: GPT, step, steps: range) -> None:
    for i in steps:
        x = torch.randint(0, 20, (4, 8), generator=torch.Generator().manual_seed(i)).to(next(net.parameters()).device)
        loss = torch.nn.functional.cross_entropy(net(x).flatten(0, 1), x.roll(-1, 1).flatten())
        loss.backward()
        step()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CONFIGS)
def test_the_same_parameters_and_lr_as_torch_optim_step_for_step(name, device):
    config = CONFIGS[name]
    ours, theirs = model(device), model(device)
    opt = make_optimizer(config, ours, STEPS)
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
    opt = make_optimizer(config, straight, STEPS)
    train(straight, lambda: (opt.step(), opt.zero_grad()), range(STEPS))

    # the first half by torch.optim (a checkpoint of an earlier artune), the rest by artune
    half = model()
    ref, sched = torch_optimizer(config, half, STEPS)
    train(half, lambda: (ref.step(), sched.step(), ref.zero_grad()), range(STEPS // 2))
    resumed = make_optimizer(config, half, STEPS)
    resumed.load_state_dict({**ref.state_dict(), "steps_taken": sched.state_dict()["last_epoch"]})
    # its own state, saved and put back into a new optimizer mid-run
    train(half, lambda: (resumed.step(), resumed.zero_grad()), range(STEPS // 2, STEPS - 2))
    again = make_optimizer(config, half, STEPS)
    again.load_state_dict(resumed.state_dict())
    train(half, lambda: (again.step(), again.zero_grad()), range(STEPS - 2, STEPS))

    assert again.lr == opt.lr
    for a, b in zip(straight.parameters(), half.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
def test_frozen_parameters_gradients_now_and_then_and_two_dtypes_as_torch_optim(decoupled):
    """A frozen parameter, one with a gradient every other step, one never reached, and a float64
    one (its own fused call), against torch.optim; then each state loaded into the other's next step."""

    def parameters():
        torch.manual_seed(1)
        return [
            torch.nn.Parameter(torch.randn(3, 4)),
            torch.nn.Parameter(torch.randn(5, dtype=torch.float64)),
            torch.nn.Parameter(torch.randn(2), requires_grad=False),
            torch.nn.Parameter(torch.randn(4)),
            torch.nn.Parameter(torch.randn(3)),
        ]

    def give_gradients(params, step):
        matrix, vector, _, sometimes, _never = params
        loss = (matrix**2).sum() * (step + 1) + (vector**3).sum()
        if step % 2 == 0:
            loss = loss + (sometimes * matrix[0]).sum()
        loss.backward()

    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    ours, theirs = parameters(), parameters()
    opt = Adam(ours, lr=0.01, weight_decay=0.1, decoupled_weight_decay=decoupled)
    ref = kind(theirs, lr=0.01, weight_decay=0.1, fused=True)
    for step in range(5):
        for params, optimizer in ((ours, opt), (theirs, ref)):
            give_gradients(params, step)
            optimizer.step()
            optimizer.zero_grad()
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), step
    assert 4 not in ref.state_dict()["state"]  # torch.optim keeps no state for the parameter never reached

    # torch.optim's state (no entry for that parameter) into ours, and ours into torch.optim
    again = Adam(ours, lr=0.01, weight_decay=0.1, decoupled_weight_decay=decoupled)
    again.load_state_dict({**ref.state_dict(), "steps_taken": 5})
    back = kind(theirs, lr=0.01, weight_decay=0.1, fused=True)
    back.load_state_dict(
        {
            "state": {i: v for i, v in opt.state_dict()["state"].items() if i != 4},
            "param_groups": ref.state_dict()["param_groups"],
        }
    )
    for step in range(5, 8):
        for params, optimizer in ((ours, again), (theirs, back)):
            give_gradients(params, step)
            optimizer.step()
            optimizer.zero_grad()
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), step


def test_a_state_of_another_model_is_refused():
    net = model()
    n = len(list(net.parameters()))
    opt = make_optimizer(CONFIGS["adam"], net, STEPS)
    # torch.optim keeps a parameter's state from its first step
    train(net, lambda: (opt.step(), opt.zero_grad()), range(1))
    state = opt.state_dict()
    state["param_groups"][0]["params"].pop()
    with pytest.raises(ValueError, match=f"holds {n - 1} parameters, the model has {n}"):
        opt.load_state_dict(state)
    state = opt.state_dict()
    state["state"][0] = {**state["state"][0], "exp_avg": torch.zeros(3)}
    with pytest.raises(
        ValueError, match=r"the optimizer state of parameter 0 has shape \(3,\), the model's is \(20, 16\)"
    ):
        opt.load_state_dict(state)


# --- muon: torch.optim's Muon on the blocks' weight matrices, fused AdamW on the rest

MUON = TrainConfig(optimizer="muon", lr=3e-3, weight_decay=0.1, adam_beta2=0.95, warmup=3, lr_schedule="cosine")


def torch_muon(config: TrainConfig, net: GPT, total_steps: int):
    """The usual way to run Muon (Moonshot's RMS matching) beside AdamW, each scheduled by a LambdaLR."""
    matrices = [p for name, p in net.named_parameters() if name.startswith("blocks.") and p.ndim == 2]
    others = [p for name, p in net.named_parameters() if not (name.startswith("blocks.") and p.ndim == 2)]
    muon = torch.optim.Muon(matrices, lr=config.lr, weight_decay=config.weight_decay, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(
        others, lr=config.lr, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay, fused=True
    )
    schedule = lr_lambda(config, total_steps)
    return [(opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)) for opt in (muon, adamw)]


def test_muon_steps_the_blocks_matrices_and_adamw_the_rest():
    net = model()
    opt = make_optimizer(MUON, net, STEPS)
    names = {p: name for name, p in net.named_parameters()}
    assert [names[p] for p in opt.muon.param_groups[0]["params"]] == [
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.proj.weight",
        "blocks.0.ff.up.weight",
        "blocks.0.ff.down.weight",
    ]
    # the token embedding (which the output layer shares: once), the learned positions and the norms
    others = [names[p] for p in opt.optimizer.param_groups[0]["params"]]
    assert others[:2] == ["tok_emb.weight", "pos_emb.weight"] and all("ln" in name for name in others[2:])
    assert len(others) + 4 == len(list(net.parameters()))
    assert opt.optimizer.defaults["fused"] and opt.betas == (0.9, 0.95)


@pytest.mark.parametrize("position_encoding", ["learned", "rope"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu", "relu2"])
def test_muon_and_adamw_step_every_parameter_once_whatever_the_model(position_encoding, activation):
    net = GPT(
        ModelConfig(
            vocab_size=20,
            seq_len=8,
            d_model=16,
            n_layers=3,
            n_heads=2,
            d_ff=32,
            position_encoding=position_encoding,
            activation=activation,
        )
    )
    opt = make_optimizer(MUON, net, STEPS)
    muon, adamw = opt.muon.param_groups[0]["params"], opt.optimizer.param_groups[0]["params"]
    stepped = [id(p) for p in muon + adamw]
    assert sorted(stepped) == sorted(id(p) for p in net.parameters())  # each once; the tied output layer too
    names = {id(p): name for name, p in net.named_parameters()}
    # each block's attention and feed-forward matrices (the gated unit's two as one), and nothing else
    assert len(muon) == 4 * 3 and all(p.ndim == 2 and names[id(p)].startswith("blocks.") for p in muon)
    assert all(p.ndim == 1 or not names[id(p)].startswith("blocks.") for p in adamw)


def test_muon_gives_the_same_parameters_and_lr_as_torch_optim_step_for_step():
    ours, theirs = model(), model()
    opt = make_optimizer(MUON, ours, STEPS)
    ref = torch_muon(MUON, theirs, STEPS)

    def theirs_step():
        for o, schedule in ref:
            o.step()
            schedule.step()
            o.zero_grad()

    for i in range(STEPS):
        train(ours, lambda: (opt.step(), opt.zero_grad()), range(i, i + 1))
        train(theirs, theirs_step, range(i, i + 1))
        assert opt.lr == ref[0][0].param_groups[0]["lr"] == ref[1][0].param_groups[0]["lr"], i
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b), i


def test_a_muon_state_resumes_the_same_run():
    straight = model()
    opt = make_optimizer(MUON, straight, STEPS)
    train(straight, lambda: (opt.step(), opt.zero_grad()), range(STEPS))

    half = model()
    first = make_optimizer(MUON, half, STEPS)
    train(half, lambda: (first.step(), first.zero_grad()), range(STEPS // 2))
    again = make_optimizer(MUON, half, STEPS)
    again.load_state_dict(first.state_dict())
    train(half, lambda: (again.step(), again.zero_grad()), range(STEPS // 2, STEPS))

    assert again.lr == opt.lr and again.steps_taken == STEPS
    for a, b in zip(straight.parameters(), half.parameters()):
        assert torch.equal(a, b)


def test_adam_and_muon_refuse_each_others_state_and_muon_a_state_of_another_model():
    adam, muon = make_optimizer(CONFIGS["adamw"], model(), STEPS), make_optimizer(MUON, net := model(), STEPS)
    train(net, lambda: (muon.step(), muon.zero_grad()), range(1))
    with pytest.raises(ValueError, match="not Muon's"):
        muon.load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="not Adam's"):
        adam.load_state_dict(muon.state_dict())
    state = muon.state_dict()
    state["muon"]["state"][0] = {"momentum_buffer": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(3,\), the model's is \(48, 16\)"):
        muon.load_state_dict(state)
