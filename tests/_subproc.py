"""Starting test subprocesses so that none outlives its test: each child leads its own session (so it and anything it
starts, e.g. torchrun's workers, are killed together on every exit path) and gets SIGINT at its default, whatever the
shell job that started pytest did to it (a child that inherits an ignored SIGINT never raises KeyboardInterrupt)."""
import os, signal, subprocess


def _default_sigint(): signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen(cmd, **kw) -> subprocess.Popen:
    "Start `cmd` in a new session with SIGINT at its default (kill it with `kill_group`)."
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_default_sigint, **kw)


def kill_group(p: subprocess.Popen) -> None:
    "Kill `p` and every process of its session that is still running, and reap `p`."
    try: os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError: pass
    p.wait()


def run(cmd, timeout: float, **kw) -> subprocess.CompletedProcess:
    "Like `subprocess.run(..., capture_output=True, text=True)`, but the whole process group is killed on timeout or any error."
    p = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    try: out, err = p.communicate(timeout=timeout)
    finally: kill_group(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)
