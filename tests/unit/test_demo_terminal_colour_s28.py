"""The demo's status lines: the on-call CLI's phase colours on a terminal (a pty), plain text through a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The demo's watch of one rollout whose status (read from a stand-in for the API) has ended RolledBack.
CHILD = textwrap.dedent("""
    import sys
    from controller.devstack.demo import watch

    class Api:
        def get_namespaced_custom_object(self, *args):
            return {"status": {"phase": "RolledBack", "step": "2/4", "canaryWeight": 0, "message": "rolled back"}}

    watch(Api(), "moderation", "nsfw-classifier-live", sys.stdout, timeout=30)
""")


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    return env


def on_a_pty() -> str:
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=follower, stderr=follower,
                                 env=child_env(), cwd=REPO)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert child.wait(timeout=60) == 0, b"".join(chunks)
        return b"".join(chunks).decode()
    finally:
        os.close(leader)


def test_the_demo_colours_its_phases_on_a_terminal_and_is_plain_when_piped() -> None:
    terminal = on_a_pty()
    # Red as `modelrollout get` shows it, padded after the colour codes so the columns still line up.
    assert "\033[31mRolledBack\033[0m  step=2/4  weight=  0%  rolled back" in terminal, repr(terminal)

    piped = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=child_env(),
                           cwd=REPO, timeout=60, check=True).stdout
    assert "RolledBack  step=2/4  weight=  0%  rolled back" in piped, piped
    assert "\033" not in piped
