"""The decode step of megalodon_lit.decode: equal to the readable path token by token, a cache unchanged by later
steps (copy-on-write ring), the plan rebuilt when a parameter changes, and the profiler-event count of one step."""
import pytest
import torch

from conftest import perturbed
from megalodon_lit.core import rel_err, seed_everything
from megalodon_lit.decode import RingKVCache, decode_plan, decode_step
from megalodon_lit.model import MegalodonConfig, MegalodonForCausalLM

EVENTS_PER_STEP = 780  # measured 769 with torch 2.13.0 (readable path: 3,573)


@pytest.mark.parametrize("W,opts", [(1, {}), (2, dict(swiglu=True, rescale_nffn=True)), (3, dict(scale_emb=True, norm_affine=False))])
def test_decode_step_equals_readable_path(W, opts):
    seed_everything(W)
    m = perturbed(MegalodonForCausalLM(MegalodonConfig.from_preset("nano", attention_chunks=W, **opts)))
    ids = torch.randint(0, 256, (2, 45))  # C = 16: crosses two chunk boundaries and wraps the ring
    with torch.no_grad():
        full = m(ids).logits
        fast = slow = m(ids[:, :5], use_cache=True).cache
        for t in range(5, 45):
            logits, fast = decode_step(m, ids[:, t:t + 1], fast)
            slow = m(ids[:, t:t + 1], cache=slow, fast_decode=False).cache
            assert rel_err(logits, full[:, t]) <= 1e-5, t
    assert isinstance(fast.layers[0].kv, RingKVCache) and fast.seen == 45
    for a, b in zip(fast.tensors(), slow.tensors()): assert rel_err(a, b) <= 1e-5


def test_forward_takes_decode_step_and_mixes_with_pieces():
    seed_everything(1)
    m = perturbed(MegalodonForCausalLM(MegalodonConfig.from_preset("nano", attention_chunks=2)))
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        full = m(ids).logits
        cache, outs = None, []
        for a, b in ((0, 3), (3, 4), (4, 5), (5, 21), (21, 22), (22, 23), (23, 40)):  # one-token steps between pieces
            o = m(ids[:, a:b], cache=cache, use_cache=True); outs.append(o.logits); cache = o.cache
    assert rel_err(torch.cat(outs, 1), full) <= 1e-5


def test_cache_unchanged_by_later_steps_and_branches_copy():
    seed_everything(2)
    m = perturbed(MegalodonForCausalLM(MegalodonConfig.from_preset("nano")))
    ids = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        _, c1 = decode_step(m, ids[:, 20:21], m(ids[:, :20], use_cache=True).cache)
        before = [t.clone() for t in c1.tensors()]
        la, ca = decode_step(m, ids[:, 21:22], c1)    # in place
        lb, cb = decode_step(m, ids[:, 25:26], c1)    # c1 again: must copy, not overwrite ca's slot
        la2, _ = decode_step(m, ids[:, 22:23], ca)
        ref = m(ids[:, :23]).logits[:, -1]
    assert all(torch.equal(a, b) for a, b in zip(before, c1.tensors()))
    assert ca.layers[0].kv.ring is not cb.layers[0].kv.ring and not torch.equal(la, lb)
    assert rel_err(la2, ref) <= 1e-5


def test_plan_follows_parameter_changes():
    seed_everything(3)
    m = perturbed(MegalodonForCausalLM(MegalodonConfig.from_preset("nano")))
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        cache = m(ids[:, :11], use_cache=True).cache
        plan = decode_plan(m)
        assert decode_plan(m) is plan
        m.layers[0].mega.cema.theta.add_(0.3); m.layers[1].nffn.fc1.weight.mul_(1.1)
        assert decode_plan(m) is not plan
        assert rel_err(m(ids[:, 11:], cache=cache).logits, m(ids[:, 11:], cache=cache, fast_decode=False).logits) <= 1e-5


def test_decode_step_operation_count():
    "One decode step of the benchmark shape (vocab 256, D 256, 4 layers, 2 heads, C 256) after 1K tokens: profiler events."
    seed_everything(0)
    cfg = MegalodonConfig(vocab_size=256, model_dim=256, num_layers=4, num_heads=2, z_dim=128, value_dim=512, ffn_hidden_dim=512,
                          cema_ndim=16, chunk_size=256, norm_num_groups=32)
    m = MegalodonForCausalLM(cfg).eval()
    tok = torch.tensor([[3]])
    with torch.no_grad():
        cache = m(torch.randint(0, 256, (1, 1024)), use_cache=True).cache
        cache = m(tok, cache=cache).cache  # the first step copies the prompt's window into a ring
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof: m(tok, cache=cache)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as slow: m(tok, cache=cache, fast_decode=False)
    n, n_slow = len(prof.events()), len(slow.events())
    assert n <= EVENTS_PER_STEP, n
    assert n_slow > 3 * n, (n, n_slow)  # the readable path is still the one the flag selects
    assert not any(e.name in ("aten::cat", "aten::dropout", "aten::arange") for e in prof.events() if e.cpu_parent is None)


@pytest.mark.parametrize("W,seed", [(1, 0), (2, 3)])
def test_decode_step_in_bfloat16_loses_no_more_than_the_readable_path(W, seed):
    """A bfloat16 model: the decode step and the readable one-token path, each against the float32 forward of the same
    (rounded) weights. Measured over W = 1-3 and 4 seeds: mean error ratio fast/readable 0.94-1.03 over 40 steps, worst
    single-step error of the fast step 1.35e-2 (bfloat16's unit roundoff is 3.9e-3); a wrong ring slot or state is O(1)."""
    seed_everything(seed)
    m32 = perturbed(MegalodonForCausalLM(MegalodonConfig.from_preset("nano", attention_chunks=W)))
    m = MegalodonForCausalLM(MegalodonConfig.from_preset("nano", attention_chunks=W)).eval()
    m.load_state_dict(m32.state_dict()); m = m.to(torch.bfloat16)
    m32.load_state_dict({k: v.float() for k, v in m.state_dict().items()})
    ids = torch.randint(0, 256, (2, 45))
    fast_err, slow_err = [], []
    with torch.no_grad():
        full = m32(ids).logits
        fast = slow = m(ids[:, :5], use_cache=True).cache
        for t in range(5, 45):
            logits, fast = decode_step(m, ids[:, t:t + 1], fast)
            out = m(ids[:, t:t + 1], cache=slow, fast_decode=False); slow = out.cache
            fast_err.append(rel_err(logits.float(), full[:, t])); slow_err.append(rel_err(out.logits[:, -1].float(), full[:, t]))
    assert fast.layers[0].kv.ring.v.dtype == torch.bfloat16
    assert sum(fast_err) / sum(slow_err) <= 1.1 and max(fast_err) <= 0.03, (max(fast_err), max(slow_err))
