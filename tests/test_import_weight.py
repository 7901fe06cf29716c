"""Light entry points stay light: what `import` and `--help` pull into sys.modules.

Importing diffusers runs diffusers.utils, which imports torch._dynamo: together about
a second on the 2-core CI machine and ~12 s on the H100 machine (bench/results/
import_cpu.json, README "Cold start"). Only building the VAE or the scheduler needs
them, so the API, the CLI and the VAE's constants must not import them. Each check runs
in a fresh interpreter, because this test process has long since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Imported only when a model is built (diffusers) or compiled (dynamo, inductor).
HEAVY = ("diffusers", "torch._dynamo", "torch._inductor", "sympy")

_REPORT = """
import json, sys
{code}
print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))
"""


def loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """The modules among `names` that a fresh interpreter holds after running `code`."""
    script = _REPORT.format(code=code, names=names)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["fastsync.api", "fastsync.components", "fastsync.pipeline"])
def test_importing_the_api_loads_neither_diffusers_nor_dynamo(module):
    assert loaded_after(f"import {module}", HEAVY) == []


_HELP = """
import contextlib, io
from fastsync.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({argv!r})
    except SystemExit:
        pass
"""


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["run", "--help"], ["batch", "--help"]])
def test_cli_help_imports_no_model_code(argv):
    # Not even torch: the sub-commands import what they need when they run.
    code = "import fastsync.cli" if not argv else _HELP.format(argv=argv)
    assert loaded_after(code, ("torch", "numpy", *HEAVY)) == []


def test_building_the_vae_still_uses_diffusers():
    # The deferred import must still give diffusers' class, not a substitute.
    code = "from fastsync.components import random_vae, make_scheduler\n" \
           "vae, sch = random_vae('tiny'), make_scheduler()\n" \
           "assert type(vae).__module__.startswith('diffusers.'), type(vae)\n" \
           "assert type(sch).__module__.startswith('diffusers.'), type(sch)"
    assert loaded_after(code, ("diffusers",)) == ["diffusers"]


def test_cli_version_names_the_package(capsys):
    import fastsync
    from fastsync.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastsync {fastsync.__version__}"
