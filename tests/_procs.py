"""Running torchrun in tests: a timeout kills the launcher and its workers (torchrun starts
them in sessions of their own, so killing the launcher's process group leaves them)."""
import os
import signal
import subprocess
from pathlib import Path


def descendants(pid):
    """Every process below `pid` (children first found through /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found.append(kid)
            todo.append(kid)
    return found


def kill_tree(pid):
    for p in [pid] + descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finish(proc, timeout):
    """(returncode, output) of a Popen started with text output; on timeout every process of
    the tree is killed and returncode is None."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, _ = proc.communicate()
        return None, out
