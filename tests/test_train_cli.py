"""The training loop (loss falls, interrupt + resume == uninterrupted, checkpoints refuse
other configurations) and the `megalodon-lit` command (every subcommand, through the installed entry point)."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from _subproc import kill_group, popen, run
from conftest import ROOT
from megalodon_lit.model import MegalodonConfig
from megalodon_lit.model import MegalodonForCausalLM
from megalodon_lit.train import (CHECKPOINT_FILES, TrainConfig, check_run_folder, TrainingDiverged, load_checkpoint, lr_at, recover_checkpoint,
                                 save_checkpoint, train)

CLI = [str(Path(sys.executable).parent / "megalodon-lit")]
NANO = MegalodonConfig.from_preset("nano")


def test_schedule():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, tc) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:]))
    with pytest.raises(ValueError, match="steps"): TrainConfig(steps=0)
    with pytest.raises(ValueError, match="autocast"): TrainConfig(autocast="fp16")
    # nonsense that used to be accepted (lr inf trained on nan; max_minutes 0 or nan never or always stopped)
    for kw, msg in ((dict(lr=float("inf")), "lr must be a finite number > 0"), (dict(lr=float("nan")), "lr"), (dict(warmup=-5), "warmup must be an int >= 0"),
                    (dict(max_minutes=0), "max_minutes must be a finite number > 0"), (dict(max_minutes=float("nan")), "max_minutes"),
                    (dict(clip=0.0), "clip"), (dict(min_lr_ratio=2.0), "min_lr_ratio"), (dict(betas=(0.9, 1.5)), "betas"), (dict(weight_decay=-1.0), "weight_decay")):
        with pytest.raises(ValueError, match=msg): TrainConfig(**kw)
    assert TrainConfig(warmup=0).warmup == 0


def test_fixed_seed_loss_decreases(tmp_path, text_corpus):
    tc = TrainConfig(steps=40, batch_size=8, seq_len=64, lr=5e-3, warmup=5, eval_every=10, save_every=100)
    res = train(NANO, tc, text_corpus, out=tmp_path, progress=False)
    h = res.history
    assert h["step"] == list(range(1, 41)) and len(h["val_loss"]) == 4
    assert sum(h["loss"][-5:]) / 5 < sum(h["loss"][:5]) / 5 - 1.0
    assert h["val_loss"][-1] < h["val_loss"][0]


def test_compiled_training_follows_the_eager_curve(tmp_path, text_corpus, monkeypatch):
    "TrainConfig(compile=True) trains through torch.compile (here its aot_eager backend: the same ATen ops, fast to compile)."
    calls = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(m) or real(m, backend="aot_eager", fullgraph=True))
    torch._dynamo.reset()
    tc = dict(steps=6, batch_size=4, seq_len=48, lr=5e-3, warmup=2, eval_every=3, save_every=100)
    eager = train(NANO, TrainConfig(**tc), text_corpus, out=tmp_path / "a", progress=False).history
    compiled = train(NANO, TrainConfig(**tc, compile=True), text_corpus, out=tmp_path / "b", progress=False).history
    assert len(calls) == 1
    diff = max(abs(a - b) for a, b in zip(compiled["loss"], eager["loss"]))  # measured 0.0: aot_eager runs the same ops
    assert diff < 1e-5 and len(compiled["loss"]) == 6
    with pytest.raises(ValueError, match="compile"): TrainConfig(compile="yes")


def test_interrupt_and_resume_give_the_same_curve(tmp_path, text_corpus):
    tc = TrainConfig(steps=24, batch_size=4, seq_len=48, lr=5e-3, warmup=4, eval_every=6, save_every=10, grad_accum=2)
    whole = train(NANO, tc, text_corpus, out=tmp_path / "a", progress=False).history

    def stop(done, hist):
        if done == 13: raise KeyboardInterrupt
    first = train(NANO, tc, text_corpus, out=tmp_path / "b", progress=False, callback=stop, log=lambda s: None)
    assert first.interrupted and first.history["step"][-1] == 13
    assert json.loads((tmp_path / "b" / "checkpoint" / "trainer.json").read_text())["step"] == 13
    again = train(None, tc, text_corpus, out=tmp_path / "b", resume=True, progress=False).history
    assert again["step"] == whole["step"] and again["loss"] == whole["loss"] and again["val_loss"] == whole["val_loss"]


def test_checkpoint_checks(tmp_path, text_corpus):
    tc = TrainConfig(steps=2, batch_size=2, seq_len=32, eval_every=1)
    train(NANO, tc, text_corpus, out=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="resume"): train(NANO, tc, text_corpus, out=tmp_path, progress=False)
    other = MegalodonConfig.from_preset("nano", attention_chunks=2)
    with pytest.raises(ValueError, match="attention_chunks: checkpoint 1 vs requested 2"):
        train(other, tc, text_corpus, out=tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"): train(NANO, tc, text_corpus, out=tmp_path / "x", resume=True, progress=False)
    (tmp_path / "checkpoint" / "optimizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="optimizer.safetensors is missing"): load_checkpoint(tmp_path / "checkpoint")
    small = tmp_path / "small.txt"; small.write_text("x" * 300)
    with pytest.raises(ValueError, match="fewer than one batch"): train(NANO, TrainConfig(batch_size=8, seq_len=64), small, out=tmp_path / "s", progress=False)


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, text_corpus):
    "lr 100 diverges within a few steps: training stops naming step, loss and lr; the checkpoint on disk is the last finite one."
    tc = TrainConfig(steps=30, batch_size=4, seq_len=64, lr=100.0, warmup=1, save_every=1, eval_every=100)
    with pytest.raises(TrainingDiverged, match=r"diverged at step (\d+): .*loss .*lr .*last good checkpoint \(step (\d+)\)") as e:
        train(NANO, tc, text_corpus, out=tmp_path, progress=False)
    step = int(e.value.args[0].split("diverged at step ")[1].split(":")[0])
    model, opt, record = load_checkpoint(tmp_path / "checkpoint")
    assert record["step"] == step - 1 and record["step"] < 30
    assert all(torch.isfinite(t).all() for t in [*model.state_dict().values(), *opt.values()] if t.is_floating_point())


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = MegalodonForCausalLM(NANO)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "ck", model, opt, 1, TrainConfig(), {}, "x")
    with torch.no_grad(): model.embed.weight[3, 1] = float("nan")
    with pytest.raises(TrainingDiverged, match="non-finite values in embed.weight"):
        save_checkpoint(tmp_path / "ck", model, opt, 2, TrainConfig(), {}, "x")
    assert json.loads((tmp_path / "ck" / "trainer.json").read_text())["step"] == 1


def test_save_interrupted_between_renames_is_recovered(tmp_path, text_corpus, monkeypatch):
    "A kill between save_checkpoint's two renames leaves only checkpoint.old and checkpoint.tmp: resume finds the newer one."
    tc = TrainConfig(steps=6, batch_size=2, seq_len=32, eval_every=3, save_every=3)
    real = Path.rename
    def rename(self, target):  # the final save (step 6) is killed just before its last rename
        if self.name == "checkpoint.tmp" and json.loads((self / "trainer.json").read_text())["step"] == 6: raise KeyboardInterrupt
        return real(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt): train(NANO, tc, text_corpus, out=tmp_path, progress=False)
    monkeypatch.setattr(Path, "rename", real)
    ck = tmp_path / "checkpoint"
    assert not ck.exists() and (tmp_path / "checkpoint.old").is_dir() and (tmp_path / "checkpoint.tmp").is_dir()
    with pytest.raises(FileExistsError, match="resume"): train(NANO, tc, text_corpus, out=tmp_path, progress=False)  # a plain re-run deletes nothing
    assert json.loads((ck / "trainer.json").read_text())["step"] == 6  # the complete new one was put back
    res = train(None, TrainConfig(**{**tc.__dict__, "steps": 8}), text_corpus, out=tmp_path, resume=True, progress=False)
    assert res.history["step"][-1] == 8
    # an incomplete .tmp (no trainer.json yet) loses to the complete .old
    ck.rename(tmp_path / "checkpoint.old")
    shutil.copytree(tmp_path / "checkpoint.old", tmp_path / "checkpoint.tmp")
    (tmp_path / "checkpoint.tmp" / "trainer.json").unlink()
    assert recover_checkpoint(ck, log=lambda s: None) and json.loads((ck / "trainer.json").read_text())["step"] == 8


def test_save_checkpoint_is_durable(tmp_path, monkeypatch):
    "Every file, the new folder and the folder holding it are fsynced, so a power loss cannot undo a completed save."
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    model = MegalodonForCausalLM(NANO)
    save_checkpoint(tmp_path / "checkpoint", model, torch.optim.AdamW(model.parameters()), 1, TrainConfig(), {}, "x")
    tmp = str(tmp_path / "checkpoint.tmp")
    assert {f"{tmp}/{f}" for f in CHECKPOINT_FILES} | {tmp, str(tmp_path)} <= set(synced), synced


def test_resume_refuses_other_settings_unless_allowed(tmp_path, text_corpus):
    "Resuming with another seq_len, batch_size, seed or corpus would silently change the run: refused, naming the setting."
    corpus = tmp_path / "corpus"; shutil.copytree(text_corpus, corpus)
    tc = TrainConfig(steps=2, batch_size=2, seq_len=32, eval_every=1)
    train(NANO, tc, corpus, out=tmp_path / "run", progress=False)
    resume = lambda tc, src=corpus, **kw: train(None, tc, src, out=tmp_path / "run", resume=True, progress=False, **kw)
    more = lambda **kw: TrainConfig(**{**tc.__dict__, "steps": 3, **kw})
    for change, msg in ((dict(seq_len=48), "seq_len: checkpoint 32, now 48"), (dict(batch_size=3), "batch_size: checkpoint 2, now 3"),
                        (dict(seed=1), "seed: checkpoint 0, now 1")):
        with pytest.raises(ValueError, match=f"{msg}.*--allow-change {next(iter(change))}"): resume(more(**change))
    other = tmp_path / "other.py"; other.write_bytes((text_corpus / "decoder.py").read_bytes() * 3)
    with pytest.raises(ValueError, match="corpus: checkpoint"): resume(more(), other)
    (corpus / "zz_extra.py").write_text("x = 1\n")  # same source, other bytes
    with pytest.raises(ValueError, match="corpus: checkpoint .*sha256"): resume(more())
    with pytest.raises(ValueError, match="not settings a resume checks"): resume(more(), allow_changes=("steps",))
    res = resume(more(seq_len=40), allow_changes=("seq_len", "corpus"))  # asked for explicitly
    assert res.history["step"][-1] == 3


def test_unusable_out_fails_before_the_first_step(tmp_path, text_corpus):
    "An --out that is a file, or cannot be written, is refused before any training (not at the first save, after it)."
    calls = []
    tc = TrainConfig(steps=3, batch_size=2, seq_len=32, eval_every=10)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file, not a folder"): train(NANO, tc, text_corpus, out=tmp_path / "file", progress=False, callback=calls.append)
    with pytest.raises(ValueError, match="cannot be written: Not a directory"):  # a place no one can create, root included
        train(NANO, tc, text_corpus, out=tmp_path / "file" / "run", progress=False, callback=calls.append)
    ro = tmp_path / "ro"; ro.mkdir(); ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # (root may write anywhere)
            with pytest.raises(ValueError, match="cannot be written"): train(NANO, tc, text_corpus, out=ro / "run", progress=False, callback=calls.append)
    finally: ro.chmod(0o700)
    assert calls == []  # no step ran
    assert check_run_folder(tmp_path / "new" / "run").is_dir()


def run_cli(*args, timeout=300):
    return run(CLI + list(args), timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("cmd", [[], ["demo"], ["train"], ["generate"], ["verify"], ["bench"], ["info"]])
def test_cli_help(cmd):
    r = run_cli(*cmd, "--help")
    assert r.returncode == 0 and "usage: megalodon-lit" in r.stdout, r.stderr


def test_cli_train_resume_generate_info(tmp_path, text_corpus):
    common = ["--preset", "nano", "--corpus", str(text_corpus), "--out", str(tmp_path / "run"), "--batch-size", "4",
              "--seq-len", "48", "--eval-every", "4", "--no-progress"]
    r = run_cli("train", *common, "--steps", "6")
    assert r.returncode == 0 and "steps 6/6" in r.stdout, r.stderr
    r = run_cli("train", *common, "--steps", "6")
    assert r.returncode == 2 and "--resume" in r.stderr  # refuses to overwrite a run
    r = run_cli("train", *common, "--steps", "8", "--resume", "--seed", "3")
    assert r.returncode == 2 and "seed: checkpoint 0, now 3" in r.stderr and "--allow-change seed" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    r = run_cli("train", *common[2:], "--steps", "8", "--resume", "--attention-chunks", "2")  # no --preset: only the field given differs
    assert r.returncode == 2 and "(attention_chunks: checkpoint 1 vs requested 2)" in r.stderr, r.stderr
    r = run_cli("train", "--corpus", str(text_corpus), "--out", str(tmp_path / "run"), "--steps", "10", "--resume", "--no-progress",
                "--batch-size", "4", "--seq-len", "48", "--eval-every", "4")  # no --preset: the checkpoint's configuration
    assert r.returncode == 0 and "steps 10/10" in r.stdout, r.stderr
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0
    r = run_cli("generate", str(tmp_path / "run"), "--prompt", "def ", "--max-new-tokens", "30", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("def ") and len(r.stdout.encode()) >= 4 + 20, r.stderr
    # a reader that stops early (`| head -c 5`): no traceback, exit status 141 (128 + SIGPIPE) as a shell tool
    p = popen(CLI + ["generate", str(tmp_path / "run"), "--max-new-tokens", "100000", "--temperature", "0"], stdout=subprocess.PIPE,
              stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        head = p.stdout.read(5); p.stdout.close()
        err = p.stderr.read().decode(); p.wait(timeout=120)
    finally: kill_group(p)
    assert len(head) == 5 and p.returncode == 141 and err == "", (p.returncode, err)
    r = run_cli("info", "--checkpoint", str(tmp_path / "run"))
    assert r.returncode == 0 and "total" in r.stdout and "streaming cache per sequence" in r.stdout
    r = run_cli("info", "--preset", "mega7.1B")
    assert r.returncode == 0 and "7,117,381,632" in r.stdout
    r = run_cli("generate", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "holds no checkpoint" in r.stderr


@pytest.mark.parametrize("sig, status, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_cli_ctrl_c_saves_and_resumes(tmp_path, text_corpus, sig, status, said):
    """A real SIGINT (or SIGTERM, handled alike) during `megalodon-lit train`: exit status 128 + signal, a checkpoint, and --resume finishes the run. pytest is started here
    as a background shell job would start it, with SIGINT ignored: the child must still get SIGINT at its default, and never outlive the test."""
    out = tmp_path / "run"
    args = ["--preset", "nano", "--corpus", str(text_corpus), "--out", str(out), "--batch-size", "4", "--seq-len", "48",
            "--eval-every", "50", "--save-every", "1", "--no-progress"]
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `cmd &` in a non-interactive shell does to its jobs
    try: p = popen(CLI + ["train", *args, "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally: signal.signal(signal.SIGINT, ignored)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint" / "trainer.json").exists() and time.time() < deadline and p.poll() is None: time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        time.sleep(1.0)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally: kill_group(p)
    assert p.returncode == status and "Traceback" not in stderr, (stdout, stderr)
    done = json.loads((out / "checkpoint" / "trainer.json").read_text())["step"]
    assert done >= 1 and f"{said} after step {done}; saving a resumable checkpoint" in stdout, stdout
    r = run_cli("train", *args, "--steps", str(done + 3), "--resume")
    assert r.returncode == 0 and f"steps {done + 3}/{done + 3}" in r.stdout, r.stderr


def test_cli_bad_arguments_are_one_line(tmp_path, capsys, text_corpus):
    "Arguments that used to end in a traceback: one line on stderr naming the argument, exit status 2, nothing started."
    from megalodon_lit.cli import main
    MegalodonForCausalLM(MegalodonConfig.from_preset("nano", vocab_size=300)).save_pretrained(tmp_path / "v300")
    cases = [(["train", "--device", "bogus"], "--device 'bogus' is not a device"), (["generate", str(tmp_path / "v300"), "--device", "nope:0"], "is not a device"),
             (["demo", "--threads", "0"], "--threads must be >= 1"), (["bench", "--threads", "0"], "--threads must be >= 1"),
             (["train", "--chunk-parallel", "2", "--steps", "-1"], "steps must be an int >= 1, got -1"),
             (["train", "--chunk-parallel", "2", "--batch-size", "0"], "batch_size must be an int >= 1, got 0"),
             (["train", "--chunk-parallel", "0"], "--chunk-parallel must be >= 1"), (["train", "--max-bytes", "-5"], "--max-bytes must be >= 1"),
             (["generate", str(tmp_path / "v300")], "vocab_size is 300; generate prints bytes")]
    if not torch.cuda.is_available(): cases.append((["train", "--device", "cuda"], "--device cuda: CUDA is not available"))
    for argv, msg in cases:
        assert main(argv + ["--out", str(tmp_path / "o")] if argv[0] == "train" else argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "o").exists()
    # a diverging run is not a usage error: one line, exit status 1
    assert main(["train", "--preset", "nano", "--corpus", str(text_corpus), "--out", str(tmp_path / "div"), "--lr", "100", "--warmup", "1",
                 "--steps", "30", "--batch-size", "4", "--seq-len", "64", "--save-every", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "error: the run diverged at step" in err and len(err.strip().splitlines()) == 1, err


def test_cli_verify_and_bench():
    r = run_cli("verify")
    assert r.returncode == 0 and "all paths agree" in r.stdout, r.stdout + r.stderr
    assert "cema chunked float32" in r.stdout and "model streamed" in r.stdout
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):  # CI: the kernels run through the interpreter
        assert "cema triton float32 gradients" in r.stdout and "attention W=2 triton" in r.stdout, r.stdout
    r = run_cli("bench", "--quick")
    assert r.returncode == 0 and "decode" in r.stdout and "chunked" in r.stdout, r.stderr


def test_cli_bench_end_to_end_parts(tmp_path):
    r = run_cli("bench", "--what", "profile", "--threads", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    (f,) = tmp_path.glob("*/end_to_end.json")
    res = json.loads(f.read_text())
    prof = res["profile"]["tiny megalodon/torch"]
    assert res["record"]["torch"] == torch.__version__ and prof["CEMA"] > 0 and prof["matmuls"] > 0
    assert abs(sum(v for k, v in prof.items() if k != "total") - prof["total"]) < 1e-9
    # a second part with no time left: its rows are stored as skipped, the profile measured above stays
    r = run_cli("bench", "--what", "decode,profile", "--threads", "1", "--out", str(tmp_path), "--budget", "0")
    assert r.returncode == 0 and "skipped (time budget)" in r.stdout, r.stderr
    res2 = json.loads(f.read_text())
    assert res2["profile"]["tiny megalodon/torch"] == prof and res2["decode"] and all("skipped" in d for d in res2["decode"])
    # --resume: the stored profile is not measured again
    r = run_cli("bench", "--what", "profile", "--threads", "1", "--out", str(tmp_path), "--resume")
    assert r.returncode == 0 and "stored earlier, not run again" in r.stdout and json.loads(f.read_text())["profile"] == res2["profile"], r.stderr
    r = run_cli("bench", "--what", "paths,speed")
    assert r.returncode != 0 and "unknown part" in r.stderr + r.stdout


def test_cli_bench_sizes_are_the_bench_sets():
    "`--size` offers exactly the size sets `run_benchmarks` knows (cpu-small: the 4-layer shape of the decode and training comparison)."
    from megalodon_lit.bench import BENCH_SIZES
    from megalodon_lit.cli import _parser
    bench = next(a for a in _parser()._subparsers._group_actions[0].choices["bench"]._actions if a.dest == "size")
    assert sorted(bench.choices) == sorted(BENCH_SIZES)
    c = MegalodonConfig.from_preset(BENCH_SIZES["cpu-small"]["models"]["small (4 layers)"][0], num_layers=4)
    assert (c.model_dim, c.num_layers, c.num_heads, c.z_dim, c.value_dim, c.ffn_hidden_dim, c.cema_ndim, c.chunk_size) == (256, 4, 2, 128, 512, 512, 16, 256)


def test_cli_train_chunk_parallel_under_torchrun(tmp_path, text_corpus):
    "`megalodon-lit train --chunk-parallel 2` launched by torchrun: two gloo processes share each sequence, checkpoint and resume exactly."
    corpus = text_corpus / "decoder.py"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    def launch(out, *extra):
        return run([torchrun, "--standalone", "--nproc-per-node", "2", CLI[0], "train", "--chunk-parallel", "2", "--preset", "nano",
                    "--corpus", str(corpus), "--seq-len", "64", "--batch-size", "2", "--out", str(out), *extra],
                   timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = launch(tmp_path / "a", "--steps", "3", "--save-every", "2")
    assert r.returncode == 0 and "chunk-parallel training done: 3 steps" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    assert "cp=2" in r.stdout
    first = json.loads((tmp_path / "a" / "checkpoint" / "trainer.json").read_text())
    assert first["step"] == 3 and len(first["history"]["loss"]) == 3
    r = launch(tmp_path / "a", "--steps", "5", "--resume")
    assert r.returncode == 0 and "chunk-parallel training done: 2 steps" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    r = launch(tmp_path / "b", "--steps", "5")  # the same five steps without a break
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, whole = (json.loads((tmp_path / d / "checkpoint" / "trainer.json").read_text())["history"]["loss"] for d in "ab")
    assert len(whole) == 5 and resumed == whole
    r = run_cli("train", "--chunk-parallel", "2", "--steps", "1")
    assert r.returncode == 2 and "torchrun" in r.stderr
