"""What each command line imports (issue 10, start-up): ``--version`` loads neither typer nor
pydantic, ``validate`` no typer (a plain ``validate FILE [--json]`` is run without it, saying
exactly what typer's ``validate`` says) and nothing of the compiler, the backend or the daemon,
``compile`` nothing of the kernel side.  Each command runs in a fresh interpreter, as the ``sgagent`` script runs it,
and reports ``sys.modules`` as it is when the command is done.  Import assertions, no timing
(bench/startup.py measures the time)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sgagent.cli import main

from ._docs import raw, rule

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "alibaba" / "s5-web-some-vpc.yaml"

# The body of the ``sgagent`` console script, then the modules loaded by the end of the command.
_RUN = ("import json, sys\n"
        "from sgagent.cli import main\n"
        "rc = main()\n"
        "sys.stdout.flush()\n"
        "print('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n"
        "sys.exit(rc)\n")


def command(*argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    proc = subprocess.run([sys.executable, "-c", _RUN, *argv], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    marker = proc.stdout.rfind("\nMODULES ")
    assert marker >= 0, proc.stderr
    modules = set(json.loads(proc.stdout[marker + len("\nMODULES "):]))
    proc.stdout = proc.stdout[:marker].removesuffix("\n")
    return proc, modules


def loaded(modules: set[str], *packages: str) -> list[str]:
    """The modules in ``modules`` that are one of ``packages`` or inside one."""
    return sorted(m for m in modules for p in packages if m == p or m.startswith(p + "."))


def test_version_loads_neither_typer_nor_pydantic():
    from sgagent import __version__

    proc, modules = command("--version")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == __version__
    assert loaded(modules, "typer", "click", "rich", "pydantic", "pydantic_core", "yaml") == []
    assert loaded(modules, "sgagent") == ["sgagent", "sgagent.cli"]


# Everything a check of a document has no use for.
NOT_FOR_VALIDATE = ("sgagent.nft", "sgagent.backend", "sgagent.daemon", "sgagent.sandbox",
                    "sgagent.metrics", "sgagent.compiler", "sgagent.evaluator", "sgagent.netns",
                    "sgagent.verify")


def test_validate_loads_only_the_reader_the_model_and_the_checks():
    proc, modules = command("validate", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{EXAMPLE}: valid (1 NICs, 1 groups, 3 rules)"
    assert {"sgagent.load", "sgagent.model", "sgagent.checks"} <= modules
    assert loaded(modules, *NOT_FOR_VALIDATE) == []
    assert loaded(modules, "typer", "click", "rich", "sgagent.commands") == []
    proc, modules = command("validate", "--json", str(EXAMPLE))
    assert proc.returncode == 0 and json.loads(proc.stdout)["valid"] is True
    assert loaded(modules, "typer", "sgagent.commands") == []


def _through_typer(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``sgagent ARGV`` as typer runs it: the same command line with ``--`` before the file
    (click's end of options), which the plain path leaves to typer."""
    argv = [*argv[:-1], "--", argv[-1]] if argv[-1] != "--json" else \
        [*argv[:-2], "--json", "--", argv[-2]]
    loaded_before = "sgagent.commands" in sys.modules
    rc = main(argv)
    assert loaded_before or "sgagent.commands" in sys.modules  # typer ran it
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", ["valid", "refused", "missing", "not yaml"])
@pytest.mark.parametrize("form", [[], ["--json"], ["--json", "before"]])
def test_plain_validate_says_what_typers_validate_says(capsys, tmp_path, case, form):
    if case == "valid":
        path = EXAMPLE
    else:
        path = tmp_path / "doc.yaml"
        if case == "refused":
            path.write_text(yaml.safe_dump(raw({"sg-web": {"rules": [rule(ports=70000)]}})))
        elif case == "not yaml":
            path.write_text("version: [1\n")
    argv = ["validate", str(path), *form[:1]]
    if "before" in form:
        argv = ["validate", "--json", str(path)]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert (rc, out, err) == _through_typer(capsys, argv)
    assert rc == (0 if case == "valid" else 1) and (out if rc == 0 or form else err)


def test_a_refused_document_loads_no_more(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw({"sg-web": {"rules": [rule(ports=70000)]}})))
    proc, modules = command("validate", str(bad))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"{bad}: refused, 1 error",
        "  security_groups.sg-web.rules[0].ports: 70000 is not a port (1..65535)"]
    assert loaded(modules, *NOT_FOR_VALIDATE) == []


def test_compile_loads_nothing_of_the_kernel_side():
    proc, modules = command("compile", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("table inet sgagent {")
    assert {"sgagent.compiler", "sgagent.nft.render"} <= modules
    assert loaded(modules, "sgagent.daemon", "sgagent.sandbox", "sgagent.metrics",
                  "sgagent.netns", "sgagent.verify", "sgagent.evaluator") == []


def test_kernel_errors_are_still_one_line_when_the_command_loads_the_backend(capsys):
    # The error classes of the namespaces and the backend are matched without importing their
    # modules up front (they are loaded by the command that raises them).
    name = "sgt-" + secrets.token_hex(4)  # no such namespace: nothing is created or entered
    assert main(["flush", "--netns", name]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.splitlines() == [f"error: network namespace {name!r} does not exist "
                                f"(no /run/netns/{name})"]


@pytest.mark.parametrize("argv", [["--version", "validate"], ["--version", "--bogus"], ["-V"]])
def test_other_version_spellings_go_through_typer_as_before(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    if argv == ["--version", "validate"]:  # the eager option answers before the command
        from sgagent import __version__
        assert (rc, out, err) == (0, __version__ + "\n", "")
    else:
        assert rc == 1 and out == "" and err.startswith("error: No such option: ")
