"""mdsample.compat drop-ins keep the upstream signatures and semantics (chi-square at ALPHA = 1e-3)."""
import math
import types

import pytest
import numpy as np
import torch

import mdsample
from mdsample.compat import dream, llada, mdlm
from mdsample.models import hf_backbone
from sampler_oracles import chi_square_pvalue
from test_samplers_generate import MASK, TinyLM, prompts

ALPHA = 1e-3


def frequencies(tokens, vocab):
    return {(v,): int((tokens == v).sum()) for v in range(vocab)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_mdlm_sample_categorical_distribution(dtype):
    w = torch.tensor([0.0, 3.0, 1.0, 0.0, 0.5, 2.5], dtype=dtype)  # unnormalised; zeros never win
    n = 20000
    out = mdlm.sample_categorical(w.expand(n, 6), seed=5)
    assert out.shape == (n,) and out.dtype == torch.int64
    assert int(((out == 0) | (out == 3)).sum()) == 0
    p = w.double() / w.double().sum()
    assert chi_square_pvalue(frequencies(out, 6), {(v,): float(p[v]) for v in range(6)}) > ALPHA


def test_mdlm_sample_categorical_negative_weights_never_win_and_global_rng():
    w = torch.tensor([[-1e-3, 0.2, 0.8], [0.5, -0.1, 0.5]]).repeat(500, 1)  # MDLM's last step: q[mask] = -dt
    torch.manual_seed(0)
    a = mdlm.sample_categorical(w)
    assert int((a[0::2] == 0).sum()) == 0 and int((a[1::2] == 1).sum()) == 0
    torch.manual_seed(0)
    assert torch.equal(a, mdlm._sample_categorical(w))  # torch.manual_seed reproduces, as upstream
    assert not torch.equal(a, mdlm.sample_categorical(w))  # and successive calls get fresh randomness
    with pytest.raises(ValueError, match=r"categorical_probs\[0\] has no positive weight"):
        mdlm.sample_categorical(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"categorical_probs\[1\] contains NaN"):
        mdlm.sample_categorical(torch.tensor([[1.0, 2.0], [1.0, math.nan]]))
    with pytest.raises(ValueError, match=r"categorical_probs\[0\] contains an infinite weight"):
        mdlm.sample_categorical(torch.tensor([[1.0, math.inf]]))
    with pytest.raises(TypeError, match="categorical_probs"):
        mdlm.sample_categorical(torch.ones(2, 3, dtype=torch.long))


def test_add_gumbel_noise():
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=torch.bfloat16)
    assert llada.add_gumbel_noise(logits, 0.0) is logits  # temperature 0: the logits (argmax)
    n = 20000
    scores = llada.add_gumbel_noise(logits.expand(n, 4), 0.7, seed=3)
    assert scores.dtype == torch.bfloat16 and scores.shape == (n, 4)  # never a float64 [.., V] tensor
    out = scores.argmax(-1)
    p = torch.softmax(logits.double() / 0.7, -1)
    assert chi_square_pvalue(frequencies(out, 4), {(v,): float(p[v]) for v in range(4)}) > ALPHA
    assert torch.equal(out, llada.gumbel_argmax(logits.expand(n, 4), 0.7, seed=3))


def test_add_gumbel_noise_array_is_a_tensor_at_every_temperature():
    """A NumPy array came back an ndarray at T = 0 and raised in full_like at T > 0."""
    arr = np.array([[1.0, 0.0, 3.0], [0.5, 2.0, -1.0]], dtype=np.float32)
    for t in (0.0, 0.9):
        out = llada.add_gumbel_noise(arr, t, seed=1)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3) and out.dtype == torch.float32
    assert torch.equal(llada.add_gumbel_noise(arr, 0.0), torch.from_numpy(arr))
    assert torch.equal(llada.add_gumbel_noise(arr, 0.9, seed=1).argmax(-1), llada.gumbel_argmax(arr, 0.9, seed=1))


def test_get_num_transfer_tokens_matches_llada():
    mask_index = torch.rand(5, 17, generator=torch.Generator().manual_seed(0)) < 0.6
    steps = 4
    got = llada.get_num_transfer_tokens(mask_index, steps)
    mask_num = mask_index.sum(dim=1, keepdim=True)
    want = torch.zeros(5, steps, dtype=torch.int64) + mask_num // steps
    for i in range(5):
        want[i, : int(mask_num[i] % steps)] += 1
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"mask_index must be bool \[B, L\]; got torch.bool of shape \(17,\)"):
        llada.get_num_transfer_tokens(mask_index[0], steps)


def test_llada_exclusions_on_a_model_without_a_declared_vocabulary():
    """logits_eos_inf removes LLaDA's EOS 126081: on a model that declares no vocabulary it failed deep inside
    (an IndexError); the first logits' V now names the id."""
    table = torch.randn(MASK + 1, MASK + 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = lambda x, attention_mask=None: table[x]  # noqa: E731
    for kw, arg in ((dict(logits_eos_inf=True), "logits_exclude 126081"),
                    (dict(confidence_eos_eot_inf=True), r"confidence_exclude 126\d+")):
        with pytest.raises(ValueError, match=f"{arg} is not a token of the model's vocabulary of size {MASK + 1}"):
            llada.generate(model, prompts(), steps=4, gen_length=4, block_length=4, mask_id=MASK, **kw)


def test_llada_generate_signature_and_parity():
    model, p = TinyLM(), prompts()
    # Upstream's positional order: model, prompt, attention_mask, steps, gen_length, block_length, temperature,
    # cfg_scale, remasking, mask_id.
    out = llada.generate(model, p, None, 8, 8, 4, 0.0, 1.0, "low_confidence", MASK)
    assert torch.equal(out, mdsample.generate(model, p, steps=8, gen_length=8, block_length=4, cfg_scale=1.0,
                                              mask_id=MASK))
    torch.manual_seed(1)
    a = llada.generate(model, p, steps=8, gen_length=8, block_length=4, temperature=1.0, mask_id=MASK)
    torch.manual_seed(1)
    assert torch.equal(a, llada.generate(model, p, steps=8, gen_length=8, block_length=4, temperature=1.0,
                                         mask_id=MASK))
    with pytest.raises(ValueError, match="remasking"):
        llada.generate(model, p, remasking="entropy", mask_id=MASK)
    with pytest.raises(TypeError, match="earlier generate.*by keyword"):  # LLaDA's older positional order
        llada.generate(model, p, 8, 8)


class FixedLogits:
    """Position-dependent logits over LLaDA's real vocabulary size (so EOS / EOT ids exist)."""

    def __init__(self, rows):
        self.rows = rows  # [L, V]

    def __call__(self, x, attention_mask=None):
        return self.rows[: x.shape[1]].expand(x.shape[0], -1, -1)


def test_llada_eos_flags():
    vocab, mask = 126400, 126336
    rows = torch.full((3, vocab), -20.0)
    rows[1, 5], rows[1, 6] = 0.0, -1.5       # position 1: token 5, p ~ 0.82 ...
    rows[1, llada.EOS_ID] = 5.0              # ... unless EOS is allowed, which then wins
    rows[2, 7], rows[2, 5] = 4.0, 0.0         # position 2: token 7, p ~ 0.72 with EOT in the softmax,
    rows[2, llada.EOT_ID] = 3.0              # ~ 0.98 once EOT's mass is removed
    p = torch.tensor([[1]])
    plain = llada.generate(FixedLogits(rows), p, None, 2, 2, 2, 0.0, 0.0, "low_confidence", mask)
    assert plain[0, 1] == llada.EOS_ID
    banned = llada.generate(FixedLogits(rows), p, None, 2, 2, 2, 0.0, 0.0, "low_confidence", mask, True)
    assert banned[0].tolist() == [1, 5, 7]
    # One token per step: which position is committed first shows the confidence used.
    seen = []

    class Spy(FixedLogits):
        def __call__(self, x, attention_mask=None):
            seen.append(x.clone())
            return super().__call__(x, attention_mask)

    llada.generate(Spy(rows), p, None, 2, 2, 2, 0.0, 0.0, "low_confidence", mask, True, False)
    assert seen[1][0].tolist() == [1, 5, mask]  # 0.82 > 0.72: position 1 first
    llada.generate(Spy(rows), p, None, 2, 2, 2, 0.0, 0.0, "low_confidence", mask, True, True)
    assert seen[3][0].tolist() == [1, mask, 7]  # 0.98 > 0.82: position 2 first
    # EOS drawn, only the confidence flag: at T = 0 upstream removes EOS from the confidence softmax
    # too (its noised logits alias the logits), so EOS's confidence is 0 and position 2 goes first;
    # at T > 0 only EOT, and EOS (p ~ 1) goes first. T = 0.01 draws the argmax here (gaps >= 1.5).
    out = llada.generate(Spy(rows), p, None, 2, 2, 2, 0.0, 0.0, "low_confidence", mask, False, True)
    assert seen[5][0].tolist() == [1, mask, 7] and out[0].tolist() == [1, llada.EOS_ID, 7]
    out = llada.generate(Spy(rows), p, None, 2, 2, 2, 0.01, 0.0, "low_confidence", mask, False, True)
    assert seen[7][0].tolist() == [1, llada.EOS_ID, mask] and out[0].tolist() == [1, llada.EOS_ID, 7]


def _padded_prompts():
    g = torch.Generator().manual_seed(2)
    p = torch.randint(1, 39, (2, 5), generator=g)
    am = torch.ones(2, 5, dtype=torch.long)
    p[1, :2], am[1, :2] = 0, 0  # left padding
    return p, am


@pytest.mark.parametrize("opts", [dict(alg="entropy"), dict(alg="origin", temperature=0.7, top_p=0.9),
                                  dict(alg="maskgit_plus", alg_temp=0.5, top_k=3)])
def test_dream_diffusion_generate_is_sample_dream_on_the_shifted_model(llama, opts):
    p, am = _padded_prompts()
    out = dream.diffusion_generate(llama, p, attention_mask=am, max_new_tokens=6, steps=4, mask_token_id=39, seed=3,
                                   **opts)
    want = mdsample.sample_dream(hf_backbone(llama, logits_shift=1), p, attention_mask=am, max_new_tokens=6, steps=4,
                                 mask_id=39, seed=3, **opts)
    assert torch.equal(out, want) and bool((out[:, 5:] != 39).all())
    unshifted = mdsample.sample_dream(hf_backbone(llama), p, attention_mask=am, max_new_tokens=6, steps=4,
                                      mask_id=39, seed=3, **opts)
    assert not torch.equal(out, unshifted)  # the shift is applied (else the parity above proves little)


def test_dream_options_config_history_and_global_rng(llama):
    p, am = _padded_prompts()

    class Config:  # stands in for DreamGenerationConfig: kwargs override its attributes
        steps, alg, max_length, mask_token_id, temperature = 3, "maskgit_plus", 20, 39, 1.0

    res = dream.diffusion_generate(llama, p, Config(), attention_mask=am, max_new_tokens=4, return_dict_in_generate=True,
                                   output_history=True, seed=1)
    assert isinstance(res, dream.DreamOutput) and res.sequences.shape == (2, 9)
    assert len(res.history) == 3 and torch.equal(res.history[-1], res.sequences)
    for before, after in zip(res.history, res.history[1:]):  # committed tokens stay
        kept = before != 39
        assert torch.equal(after[kept], before[kept])
    assert dream.diffusion_generate(llama, p, mask_token_id=39, steps=2).shape == (2, 5 + 20)  # default: 20 new
    assert dream.diffusion_generate(llama, p, mask_token_id=39, steps=2, max_length=12).shape == (2, 12)
    many = dream.diffusion_generate(llama, p, mask_token_id=39, steps=2, max_new_tokens=3, num_return_sequences=3)
    assert many.shape == (6, 8) and torch.equal(many[:3, :5], p[:1].expand(3, -1))
    torch.manual_seed(4)
    a = dream.diffusion_generate(llama, p, mask_token_id=39, steps=3, max_new_tokens=5, temperature=1.0)
    torch.manual_seed(4)
    assert torch.equal(a, dream.diffusion_generate(llama, p, mask_token_id=39, steps=3, max_new_tokens=5,
                                                   temperature=1.0))
    with pytest.raises(TypeError, match="stpes"):
        dream.diffusion_generate(llama, p, mask_token_id=39, stpes=3)
    with pytest.raises(ValueError, match="generation_logits_hook_func"):
        dream.diffusion_generate(llama, p, mask_token_id=39, generation_logits_hook_func=lambda i, x, l: l)
    with pytest.raises(ValueError, match="max_length"):
        dream.diffusion_generate(llama, p, mask_token_id=39, max_length=5)
    with pytest.raises(ValueError, match="mask_id 151666"):  # Dream's mask token is not in this vocabulary
        dream.diffusion_generate(llama, p, max_new_tokens=2)


class FakeDream(torch.nn.Module):
    """A Dream-type HF model (``config.model_type == "Dream"``) that honours Dream's attention inputs:
    ``"full"``, or a bool [B, 1, L, L] mask with position ids. Records what its body received."""

    def __init__(self, vocab=20, d=16):
        super().__init__()
        torch.manual_seed(3)
        self.config = types.SimpleNamespace(model_type="Dream", vocab_size=vocab, max_position_embeddings=64)
        self.emb, self.pos = torch.nn.Embedding(vocab, d).double(), torch.nn.Embedding(64, d).double()
        self.lm_head = torch.nn.Linear(d, vocab, bias=False).double()
        with torch.no_grad():
            self.lm_head.weight.mul_(6.0)
        self.seen = []
        self.model = self._body

    def _body(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        self.seen.append((attention_mask, position_ids))
        B, L = input_ids.shape
        pos = torch.arange(L).expand(B, L) if position_ids is None else position_ids
        h = self.emb(input_ids) + self.pos(pos)
        s = h @ h.transpose(1, 2) / 4.0
        if not isinstance(attention_mask, str):
            s = s.masked_fill(~attention_mask[:, 0], -1e9)
        return types.SimpleNamespace(last_hidden_state=torch.tanh(h + torch.softmax(s, -1) @ h))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return types.SimpleNamespace(logits=self.lm_head(self._body(input_ids, attention_mask,
                                                                    position_ids).last_hidden_state))


def test_dream_padded_batch_reaches_the_model_as_dreams_loop_passes_it():
    model = FakeDream()
    g = torch.Generator().manual_seed(5)
    raw = [torch.randint(1, 19, (n,), generator=g) for n in (4, 2)]
    p = torch.zeros(2, 4, dtype=torch.long)
    am = torch.zeros(2, 4, dtype=torch.long)
    for j, r in enumerate(raw):
        p[j, 4 - len(r):], am[j, 4 - len(r):] = r, 1
    out = dream.diffusion_generate(model, p, attention_mask=am, max_new_tokens=5, steps=5, alg="entropy",
                                   mask_token_id=19)
    mask4, positions = model.seen[0]
    real = torch.cat([am, torch.ones(2, 5, dtype=torch.long)], 1).bool()
    assert mask4.shape == (2, 1, 9, 9) and torch.equal(mask4[:, 0], real[:, None, :] & real[:, :, None])
    assert positions[1].tolist() == [1, 1, 0, 1, 2, 3, 4, 5, 6]  # pads at 1, real tokens counted from 0
    for j, r in enumerate(raw):  # so a padded row is its prompt generated alone
        model.seen.clear()
        alone = dream.diffusion_generate(model, r.unsqueeze(0), max_new_tokens=5, steps=5, alg="entropy",
                                         mask_token_id=19)
        assert model.seen[0] == ("full", None)
        assert torch.equal(out[j, 4:], alone[0, len(r):])


def test_drop_in_inputs_go_to_the_models_device():
    """Upstream builds its canvas on ``model.device``: a CPU prompt for a GPU model works. (The moving
    helper here, on the meta device; the drop-ins themselves below, on a GPU.)"""
    from mdsample.compat._device import on_model_device

    class OnMeta:
        device = torch.device("meta")

    ids = torch.tensor([[1, 2]])
    prompt, mask, answer = on_model_device(OnMeta(), prompt=ids, attention_mask=None, answer=ids.numpy())
    assert prompt.device.type == "meta" and mask is None and answer.device.type == "meta"
    assert on_model_device(object(), prompt=ids)[0] is ids  # no device to ask: unchanged
    with pytest.raises(TypeError, match="answer"):
        on_model_device(OnMeta(), answer=[1, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_drop_ins_take_a_cpu_prompt_for_a_gpu_model():
    from mdsample.compat import fast_dllm, smdm

    model, p = TinyLM().cuda(), prompts(B=2)
    want = llada.generate(model, p.cuda(), None, 4, 4, 4, 0.0, 0.0, "low_confidence", MASK)
    got = llada.generate(model, p, None, 4, 4, 4, 0.0, 0.0, "low_confidence", MASK)
    assert got.device.type == "cuda" and torch.equal(got, want)
    x, nfe = fast_dllm.generate(model, p, 4, 4, 4, 0.0, "low_confidence", MASK)
    assert torch.equal(x, want) and nfe > 0
    assert smdm.diff_sample(model, None, p, alg="greddy", steps=4, temperature=0.0, cfg_scale=0.0,
                            context_length=p.shape[1] + 4, dim=MASK).device.type == "cuda"
    nll = smdm.eval_target_nll_ar(model, p[0], p[1], mask_id=MASK)
    assert nll == smdm.eval_target_nll_ar(model, p[0].cuda(), p[1].cuda(), mask_id=MASK)
    ll = llada.get_log_likelihood(model, p[0], p[1], mc_num=4, batch_size=4, mask_id=MASK, seed=1)
    assert ll == llada.get_log_likelihood(model, p[0].cuda(), p[1].cuda(), mc_num=4, batch_size=4, mask_id=MASK,
                                          seed=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_smdm_runs_the_model_under_bf16_autocast_on_a_gpu():
    """SMDM wraps every forward of its sampler and harness in bf16 autocast; autocast=False opts out."""
    from mdsample.compat import smdm

    seen = []

    class Spy(TinyLM):
        def hidden(self, x, attention_mask=None):
            seen.append(torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16)
            return super().hidden(x, attention_mask)

    model, p = Spy().cuda(), prompts(B=2)
    smdm.diff_sample(model, None, p, alg="greddy", steps=2, temperature=0.0, cfg_scale=0.0,
                     context_length=p.shape[1] + 2, dim=MASK)
    smdm.eval_target_nll_ar(model, p[0], p[1], mask_id=MASK)
    assert seen and all(seen)
    seen.clear()
    smdm.eval_target_nll_mc(model, p[0], p[1], mc_num=4, batch_size=4, mask_id=MASK, autocast=False)
    assert seen and not any(seen)


def test_smdm_autocast_is_a_flag():
    from mdsample.compat import smdm

    with pytest.raises(TypeError, match="autocast"):
        smdm.eval_target_nll_ar(TinyLM(), prompts(B=1)[0], prompts(B=1)[0], mask_id=MASK, autocast="yes")
