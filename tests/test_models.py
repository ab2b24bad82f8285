import pytest
import torch

from artune.models import GPT, ModelConfig, rope_rotations

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


@pytest.mark.parametrize(
    ("positions", "activation"), [("learned", "gelu"), ("rope", "gelu"), ("learned", "swiglu"), ("rope", "relu2")]
)
@pytest.mark.parametrize("t", [1, 5, T - 1])
def test_causal_future_tokens_do_not_change_earlier_logits(t, positions, activation):
    model = _model(
        dropout=0.2, position_encoding=positions, activation=activation
    ).eval()  # eval: dropout off, so the comparison is exact up to float noise
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


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("activation", ["gelu", "swiglu", "relu2"])
def test_the_config_counts_the_models_parameters_without_building_it(positions, activation):
    """The memory check before a model is built (artune.train.device.fitting) counts from the config alone."""
    model = _model(position_encoding=positions, activation=activation, n_layers=3)
    assert model.cfg.num_parameters() == model.num_parameters()


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


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("length", [1, 3, T - 1])
def test_shorter_sequences_than_seq_len(length, positions):
    model = _model(position_encoding=positions).eval()
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


def _rotate(x: torch.Tensor, positions: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Vectors ``(N, head_dim)`` turned as RoPE turns a query at each of ``positions``."""
    turns = torch.view_as_complex(rope_rotations(int(positions.max()) + 1, head_dim)[positions, 0, 0])  # the query slot
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * turns).flatten(-2)


def test_rope_makes_a_query_key_product_depend_on_their_distance_alone():
    hd = 8
    q, k = torch.randn(1, hd, dtype=torch.float64), torch.randn(1, hd, dtype=torch.float64)
    products = {}
    for i, j in [(3, 1), (7, 5), (12, 10), (5, 5), (9, 9)]:
        qi, kj = _rotate(q.float(), torch.tensor([i]), hd), _rotate(k.float(), torch.tensor([j]), hd)
        products[(i, j)] = (qi * kj).sum().item()
    assert products[(3, 1)] == pytest.approx(products[(7, 5)], abs=1e-5)
    assert products[(3, 1)] == pytest.approx(products[(12, 10)], abs=1e-5)
    assert products[(5, 5)] == pytest.approx((q * k).sum().item(), abs=1e-5)  # distance 0: no turn at all
    assert products[(9, 9)] == pytest.approx(products[(5, 5)], abs=1e-5)
    assert abs(products[(3, 1)] - products[(5, 5)]) > 1e-3  # a distance does change it
    # A turn keeps the vector's length: the pairs are rotated, not scaled.
    torch.testing.assert_close(_rotate(q.float(), torch.tensor([11]), hd).norm(), q.float().norm())


def test_rope_turns_queries_and_keys_and_passes_values_through():
    turns = rope_rotations(T, 8)
    assert turns.shape == (T, 3, 1, 4, 2)
    assert torch.equal(turns[:, 0], turns[:, 1])  # queries and keys alike
    torch.testing.assert_close(turns.square().sum(-1), torch.ones(T, 3, 1, 4))  # unit length: turns, not scalings
    identity = torch.tensor([1.0, 0.0]).expand(T, 1, 4, 2)
    assert torch.equal(turns[:, 2], identity)  # values untouched
    assert torch.equal(turns[0], torch.tensor([1.0, 0.0]).expand(3, 1, 4, 2))  # position 0 is not turned


def test_the_compiled_form_of_rope_turns_as_the_eager_one():
    from artune.models import _turn, _turn_real

    turns = rope_rotations(T, 8)
    x = torch.randn(2, T, 3, 2, 8)
    torch.testing.assert_close(_turn_real(x, turns), _turn(x, turns))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = x.bfloat16()
        assert _turn_real(half, turns).dtype == _turn(half, turns).dtype == torch.bfloat16


def test_a_rope_model_has_no_position_table_and_knows_positions_anyway():
    model = _model(position_encoding="rope")
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("pos_emb") for n in names)
    assert not hasattr(model, "positions")  # nor the table's indices
    assert "rope" not in model.state_dict() and not any(k.endswith(".rope") for k in model.state_dict())
    assert model.num_parameters() == _model().num_parameters() - T * 32
    # One block's attention without positions is blind to the order of the tokens before the last
    # (a weighted sum over them as a set); with rope it is not.
    one_block = _model(position_encoding="rope", n_layers=1).eval()
    x, swapped = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 1, 3, 4]])
    with torch.no_grad():
        assert (one_block(x)[0, -1] - one_block(swapped)[0, -1]).abs().max() > 1e-4


def test_a_rope_model_trains_under_bf16_autocast():
    model = _model(position_encoding="rope")
    x = _ids(2, T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x.flatten()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_rope_needs_an_even_head_width():
    with pytest.raises(ValueError, match=r"d_model / n_heads must be even, but got d_model=12, n_heads=4"):
        ModelConfig(vocab_size=V, seq_len=T, d_model=12, n_layers=1, n_heads=4, d_ff=64, position_encoding="rope")
    ModelConfig(vocab_size=V, seq_len=T, d_model=12, n_layers=1, n_heads=4, d_ff=64)  # learned: any width


def test_rope_gradients_are_the_complex_products_own():
    """The rotation's hand-written backward against autograd's formula, in float64."""
    from artune.models import _Rotate

    turns = rope_rotations(5, 4).double()
    back = turns * torch.tensor([1.0, -1.0], dtype=torch.float64)
    x = torch.randn(2, 5, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: _Rotate.apply(t, turns, back), (x,))
    grad = torch.randn(2, 3, 2, 5, 4, dtype=torch.float64).permute(0, 3, 1, 2, 4)  # arrives permuted, as in the model
    (mine,) = torch.autograd.grad(_Rotate.apply(x, turns, back), x, grad)
    reference = torch.view_as_real(
        torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.view_as_complex(turns)
    ).flatten(-2)
    (theirs,) = torch.autograd.grad(reference, x, grad)
    torch.testing.assert_close(mine, theirs)


def test_swiglu_is_a_gated_unit_with_the_gate_and_value_in_one_matrix():
    model = _model(activation="swiglu", d_ff=48)
    ff = model.blocks[0].ff
    assert ff.up.weight.shape == (2 * 48, 32) and ff.down.weight.shape == (32, 48)
    x = torch.randn(2, 3, 32)
    gate, value = ff.up.weight[:48], ff.up.weight[48:]
    expected = ff.down(torch.nn.functional.silu(x @ gate.T) * (x @ value.T))
    torch.testing.assert_close(ff(x), expected)


def test_relu2_squares_the_relu():
    ff = _model(activation="relu2").blocks[0].ff
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(ff(x), ff.down(torch.relu(ff.up(x)) ** 2))


@pytest.mark.parametrize("activation", ["swiglu", "relu2"])
def test_every_activation_trains(activation):
    model = _model(activation=activation)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _ids(4, T)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_an_unknown_activation_is_refused():
    with pytest.raises(ValueError, match=r"activation must be 'gelu', 'swiglu' or 'relu2', but got 'glu'"):
        ModelConfig(vocab_size=V, seq_len=T, d_model=32, n_layers=1, n_heads=4, d_ff=64, activation="glu")


def test_swiglu_gradients_are_autograds_own():
    """The unit's hand-written backward against autograd's, in float64 (and for a permuted gradient)."""
    from artune.models import _SwiGLU, _swiglu

    h = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(_SwiGLU.apply, (h,))
    torch.testing.assert_close(_SwiGLU.apply(h), _swiglu(h))
    grad = torch.randn(5, 2, 4, dtype=torch.float64).transpose(0, 1)
    (mine,) = torch.autograd.grad(_SwiGLU.apply(h), h, grad)
    (theirs,) = torch.autograd.grad(_swiglu(h), h, grad)
    torch.testing.assert_close(mine, theirs)


def _qkv(length: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values ``(B, H, T, head_dim)`` strided as the model makes them (one qkv tensor, permuted)."""
    qkv = torch.randn(3, length, 3, 4, 8, dtype=dtype, generator=torch.Generator().manual_seed(length))
    return tuple(t.requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).clone().unbind(0))


@pytest.mark.parametrize("length", [1, 5, 64])
def test_explicit_attention_is_sdpas_own_with_its_gradients(length):
    from artune.models import explicit_causal_attention

    q, k, v = _qkv(length)
    mine = explicit_causal_attention(q, k, v)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(mine)
    for a, b in zip(torch.autograd.grad(mine, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", [1, 5, 64, 300])
def test_explicit_attention_in_bf16_is_sdpa_to_bf16s_precision(length):
    """In bf16, and under bf16 autocast as a trial runs it, against SDPA in float32 (its gradients too)."""
    from artune.models import explicit_causal_attention

    q, k, v = _qkv(length)
    grad = torch.randn(3, 4, length, 8)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    exact_grads = torch.autograd.grad(exact, (q, k, v), grad)
    for autocast in (False, True):  # bf16 tensors; float32 ones that autocast casts in its matmuls
        given = [t.detach().to(torch.float32 if autocast else torch.bfloat16).requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            mine = explicit_causal_attention(*given)
        assert mine.dtype == torch.bfloat16
        torch.testing.assert_close(mine.float(), exact, atol=3e-2, rtol=3e-2)
        for a, b in zip(torch.autograd.grad(mine, given, grad.bfloat16()), exact_grads):
            torch.testing.assert_close(a.float(), b, atol=6e-2, rtol=6e-2)


@pytest.mark.parametrize(
    ("length", "dtype"), [(5, torch.float32), (64, torch.float32), (64, torch.bfloat16), (512, torch.bfloat16)]
)
def test_short_float32_and_bf16_contexts_on_a_cpu_take_the_explicit_attention(length, dtype):
    from artune.models import EXPLICIT_ATTENTION_MAX_LEN, causal_attention, explicit_causal_attention

    assert length <= EXPLICIT_ATTENTION_MAX_LEN[dtype]
    q, k, v = _qkv(length, dtype)
    with torch.no_grad():
        assert torch.equal(causal_attention(q, k, v), explicit_causal_attention(q, k, v))


@pytest.mark.parametrize(("dtype", "explicit"), [(torch.bfloat16, True), (torch.float32, False)])
def test_compiled_bf16_keeps_the_explicit_attention_and_compiled_float32_takes_sdpa(monkeypatch, dtype, explicit):
    """Under torch.compile (as dynamo traces it, is_compiling() is true) bf16 stays explicit: SDPA's bf16 kernel is
    slow compiled too; float32's two forms are level compiled, and Inductor fuses SDPA itself."""
    from artune.models import causal_attention, explicit_causal_attention

    q, k, v = _qkv(64, dtype)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.no_grad():
        form = explicit_causal_attention if explicit else torch.nn.functional.scaled_dot_product_attention
        kwargs = {} if explicit else {"is_causal": True}
        assert torch.equal(causal_attention(q, k, v), form(q, k, v, **kwargs))


@pytest.mark.parametrize(
    ("length", "dtype"), [(65, torch.float32), (64, torch.float64), (64, torch.float16), (513, torch.bfloat16)]
)
def test_attention_keeps_sdpa_for_long_contexts_and_other_dtypes(length, dtype):
    from artune.models import causal_attention

    q, k, v = _qkv(length, dtype)
    with torch.no_grad():
        assert torch.equal(
            causal_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        )


def test_explicit_attention_drops_attention_weights_and_scales_the_rest():
    """Values that are the identity make the output the attention weights: each is dropped, or kept / (1 - p)."""
    from artune.models import explicit_causal_attention

    q, k, _ = _qkv(8)  # head width 8 = T, so that the values can be the identity
    identity = torch.eye(8).expand(3, 4, 8, 8)
    with torch.no_grad():
        weights = explicit_causal_attention(q, k, identity)
        torch.manual_seed(3)
        dropped = explicit_causal_attention(q, k, identity, dropout_p=0.5)
        torch.manual_seed(3)
        assert torch.equal(explicit_causal_attention(q, k, identity, dropout_p=0.5), dropped)  # seeded: reproducible
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 8))
    assert (weights.triu(1) == 0).all()  # no weight on a future position
    kept = dropped != 0
    assert 0.3 < kept[weights > 0].float().mean() < 0.7
    torch.testing.assert_close(dropped[kept], weights[kept] / 0.5)
