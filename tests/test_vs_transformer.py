"""The same-size Transformer of notebook 08_vs_transformer: sliding-window attention against its masked dense form, equal
parameter counts, the ablations' defaults, checkpoints that record the architecture, and `megalodon-lit train --arch transformer`."""
import json, os, sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _subproc import run
from megalodon_lit import bench
from megalodon_lit.model import PRESETS, MegalodonConfig, MegalodonForCausalLM, param_count, read_config
from megalodon_lit.train import TrainConfig, checkpoint_arch, load_checkpoint, train
from megalodon_lit.vs_transformer import (AblatedConfig, LlamaBaseline, TransformerConfig, matched_transformer, model_config,
                                          sliding_window_attention, transformer_params)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "megalodon-lit")]


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for f in sorted(Path(json.__file__).parent.glob("*.py")): (d / f.name).write_bytes(f.read_bytes())  # ~60 KB of real text
    return d


def run_cli(*args, timeout=300):
    return run(CLI + list(args), timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("L, window", [(37, 8), (16, 16), (5, 9), (64, 1)])
def test_sliding_window_matches_masked_dense(L, window):
    q, k, v = (torch.randn(2, 3, L, 6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=(j <= i) & (j > i - window))
    out = sliding_window_attention(q, k, v, window)
    g = torch.randn_like(ref)
    gr, go = torch.autograd.grad(ref, (q, k, v), g), torch.autograd.grad(out, (q, k, v), g)
    assert (out - ref).abs().max() < 1e-12 and all((a - b).abs().max() < 1e-12 for a, b in zip(gr, go))


def test_window_longer_than_the_sequence_is_full_attention():
    torch.manual_seed(0)
    m = LlamaBaseline.from_config(TransformerConfig(dim=32, num_layers=2, num_heads=2, ffn_hidden_dim=40)).eval()
    ids = torch.randint(0, 256, (2, 45))
    assert (m(ids, window=64).logits - m(ids).logits).abs().max() < 1e-5
    assert (m(ids, window=8).logits[:, :8] - m(ids).logits[:, :8]).abs().max() < 1e-5  # the first window sees everything either way
    assert (m(ids, window=8).logits[:, 20:] - m(ids).logits[:, 20:]).abs().max() > 1e-3  # later positions do not


@pytest.mark.parametrize("name", ["nano", "tiny", "small", "mega200M", "mega7.1B"])
def test_matched_transformer_within_5_percent(name):
    c = MegalodonConfig.from_preset(name)
    t = matched_transformer(c)
    target = param_count(c)["total"]
    assert abs(transformer_params(t) - target) <= 0.05 * target and (t.vocab_size, t.dim, t.num_layers) == (c.vocab_size, c.model_dim, c.num_layers)
    if c.model_dim <= 256:  # the formula is the built model's count
        assert transformer_params(t) == t.build().num_parameters() and MegalodonForCausalLM(c).num_parameters() == target


def test_bench_keeps_the_baseline():
    assert bench.LlamaBaseline is LlamaBaseline


def test_ablation_defaults_change_nothing_and_do_not_reload(tmp_path):
    torch.manual_seed(0); full = MegalodonForCausalLM(MegalodonConfig.from_preset("nano"))
    torch.manual_seed(0); same = AblatedConfig(**PRESETS["nano"]).build()
    ids = torch.randint(0, 256, (2, 40))
    assert torch.equal(full(ids).logits, same(ids).logits)
    ab = model_config("megalodon", "small", "no_cema", sizes={"small": PRESETS["nano"]}).build()
    assert not any("cema" in n for n, _ in ab.named_parameters()) and ab.num_parameters() < full.num_parameters()
    assert model_config("megalodon", "small", "w2", sizes={"small": PRESETS["nano"]}).attention_chunks == 2
    ab.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown config fields"): read_config(tmp_path / "config.json")


def test_transformer_interrupt_and_resume_give_the_same_curve(tmp_path, text_corpus):
    cfg = matched_transformer(MegalodonConfig.from_preset("nano"))
    tc = TrainConfig(steps=6, batch_size=2, seq_len=32, eval_every=3, save_every=3, warmup=2)
    whole = train(cfg, tc, text_corpus, out=tmp_path / "a", device="cpu", progress=False)
    first = train(cfg, TrainConfig(**{**tc.__dict__, "steps": 6, "max_minutes": None}), text_corpus, out=tmp_path / "b", device="cpu",
                  progress=False, callback=lambda done, h: (_ for _ in ()).throw(KeyboardInterrupt) if done == 3 else None)
    assert first.interrupted and checkpoint_arch(tmp_path / "b" / "checkpoint") == "transformer"
    rest = train(None, tc, text_corpus, out=tmp_path / "b", resume=True, device="cpu", progress=False)
    assert isinstance(rest.model, LlamaBaseline) and rest.history["loss"] == whole.history["loss"]
    with pytest.raises(ValueError, match="holds a transformer model"):
        load_checkpoint(tmp_path / "b" / "checkpoint", MegalodonConfig.from_preset("nano"))


def test_cli_arch_transformer_trains_and_resumes(tmp_path, text_corpus):
    out = tmp_path / "run"
    common = ["--corpus", str(text_corpus), "--out", str(out), "--batch-size", "2", "--seq-len", "32", "--eval-every", "2", "--no-progress"]
    r = run_cli("train", "--arch", "transformer", "--preset", "nano", *common, "--steps", "4")
    assert r.returncode == 0 and "steps 4/4" in r.stdout, r.stderr
    saved = json.loads((out / "checkpoint" / "config.json").read_text())
    assert saved["arch"] == "transformer" and TransformerConfig.from_dict(saved) == matched_transformer(MegalodonConfig.from_preset("nano"))
    r = run_cli("train", "--resume", *common, "--steps", "6")  # no --arch, no --preset: the checkpoint's
    assert r.returncode == 0 and "steps 6/6" in r.stdout, r.stderr
    r = run_cli("train", "--resume", "--arch", "megalodon", *common, "--steps", "8")
    assert r.returncode == 2 and "resume it with --arch transformer" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    for cmd in (["generate", str(out)], ["info", "--checkpoint", str(out)]):
        r = run_cli(*cmd)
        assert r.returncode == 2 and "holds a Transformer" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
