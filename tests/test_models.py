import pytest
import torch

from artune.models import GPT, ModelConfig

V, T = 11, 16


def _model(dropout: float = 0.0, seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    values = dict(vocab_size=V, seq_len=T, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=dropout)
    values.update(overrides)
    return GPT(ModelConfig(**values))


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(V, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_output_shape_is_batch_time_vocab():
    model = _model()
    assert model(_ids(3, T)).shape == (3, T, V)


@pytest.mark.parametrize("t", [1, 5, T - 1])
def test_causal_future_tokens_do_not_change_earlier_logits(t):
    model = _model(dropout=0.2).eval()  # eval: dropout off, so the comparison is exact up to float noise
    x = _ids(2, T)
    changed = x.clone()
    changed[:, t:] = (x[:, t:] + 1 + _ids(2, T - t, seed=7) % (V - 1)) % V  # every later token differs
    assert (changed[:, t:] != x[:, t:]).all()
    with torch.no_grad():
        before, after = model(x), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], atol=1e-5, rtol=0)
    # ...while the logits from position t on do see the change (the test can tell the two apart)
    assert (after[:, t:] - before[:, t:]).abs().max() > 1e-3


def test_output_layer_is_tied_to_the_embedding():
    model = _model()
    assert model.head.weight is model.tok_emb.weight
    C, F, L = 32, 64, 2
    per_block = 2 * C + 3 * C * C + C * C + 2 * C + C * F + F * C  # ln1, qkv, proj, ln2, up, down
    assert model.num_parameters() == V * C + T * C + L * per_block + 2 * C  # no separate V x C head
    names = [n for n, _ in model.named_parameters()]
    assert "tok_emb.weight" in names and "head.weight" not in names
    # A training step moves both: they are one tensor.
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _ids(2, T)
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
    opt.step()
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


def test_tie_survives_a_state_dict_round_trip():
    a, b = _model(seed=0), _model(seed=1)
    b.load_state_dict(a.state_dict())
    assert b.head.weight is b.tok_emb.weight
    torch.testing.assert_close(b.head.weight, a.tok_emb.weight)


def test_n_heads_must_divide_d_model():
    with pytest.raises(ValueError, match=r"n_heads must divide d_model, but got d_model=30, n_heads=4"):
        ModelConfig(vocab_size=V, seq_len=T, d_model=30, n_layers=1, n_heads=4, d_ff=64)


def test_generate_appends_exactly_n_greedy_tokens_deterministically():
    model = _model().eval()
    prompt = _ids(1, 4)
    out = model.generate(prompt, 7)
    assert out.shape == (1, 4 + 7)
    assert torch.equal(out[:, :4], prompt)
    assert torch.equal(model.generate(prompt, 7), out)
    # greedy: each appended token is the argmax of the logits at the previous position
    with torch.no_grad():
        logits = model(out[:, :-1])
    assert torch.equal(out[0, 4:], logits[0, 3:].argmax(dim=-1))
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_generate_beyond_the_context_keeps_the_last_seq_len_tokens():
    model = _model().eval()
    out = model.generate(_ids(1, T - 2), 10)  # grows past seq_len: the window slides
    assert out.shape == (1, T + 8)
    with torch.no_grad():
        last = model(out[:, -T - 1 : -1])[0, -1].argmax()
    assert out[0, -1] == last


@pytest.mark.parametrize("length", [1, 3, T - 1])
def test_shorter_sequences_than_seq_len(length):
    model = _model().eval()
    x = _ids(2, T)
    with torch.no_grad():
        short, full = model(x[:, :length]), model(x)
    assert short.shape == (2, length, V)
    torch.testing.assert_close(short, full[:, :length], atol=1e-5, rtol=0)


def test_dropout_is_active_in_training_and_off_in_eval():
    model = _model(dropout=0.3)
    x = _ids(2, T)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
