"""How the hints name this program, so a printed command can be pasted as it is."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

SCRIPT_NAMES = ("modelrollout", "kubectl-modelrollout")  # pyproject's [project.scripts]
MODULE = "controller.cli.main"


def program() -> str:
    """This program as a shell would run it: its name when PATH finds this very program, else the path it ran from
    (README's set-up leaves `.venv/bin/modelrollout` off PATH), made absolute (a script that ran it, hack/demo.sh,
    may have changed directory), else `python -m`. Run from anything else (the test fixtures), the installed name."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == MODULE:  # python -m controller.cli.main
        return f"{shlex.quote(sys.executable)} -m {MODULE}"
    ran = sys.argv[0] if sys.argv else ""
    name = os.path.basename(ran)
    if name not in SCRIPT_NAMES:
        return SCRIPT_NAMES[0]
    path = os.path.abspath(ran)
    found = shutil.which(name)
    try:
        if found and os.path.samefile(found, path):
            return name
    except OSError:  # the file is gone (a venv rebuilt meanwhile): its path still says which one ran
        pass
    return shlex.quote(path)
