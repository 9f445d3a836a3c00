"""Golden scripts for ``tenure-agent``: the commands a technician types, the exact lines back.

After Keygen Relay's ``cli/testdata/*.test.txt``. A script is a list of steps::

    # a comment
    @mint CODE [POOL]      make an authentication code; sets $CODE, $CODE_SPACED, $CODE_DASHED and
                           $CODE_MISTYPED (its first digit wrong, spaced)
    @agent start|stop      start `tenure-agent run` as a subprocess / SIGTERM it (must exit 0)
    @broker stop|start     stop the broker / start it again (same port and data directory)
    @agent kill            SIGKILL it: a crash, its leases left recorded and taken
    @in_use N [POOL]       the pool (default "Default") has N licences in use
    $ tenure-agent ...     run a command (in-process, after $VAR substitution, shlex-split)
    ? 2                    its exit code (default 0)
    > text                 the next stdout line, exactly
    >~ regex               the next stdout line, matching the whole regex
    2> text                the next stderr line, exactly

Every line of output must be matched: an unexpected extra line fails the script.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Step:
    line: int
    kind: str  # "command" | "directive"
    text: str
    exit_code: int = 0
    stdout: list[tuple[str, str]] = field(default_factory=list)  # ("=", text) or ("~", regex)
    stderr: list[str] = field(default_factory=list)


def parse(path: Path) -> list[Step]:
    steps: list[Step] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("$ "):
            steps.append(Step(number, "command", line[2:]))
        elif line.startswith("@"):
            steps.append(Step(number, "directive", line[1:]))
        else:
            if not steps or steps[-1].kind != "command":
                raise ValueError(f"{path.name}:{number}: expectation without a command")
            step = steps[-1]
            if line.startswith("? "):
                step.exit_code = int(line[2:])
            elif line.startswith(">~ "):
                step.stdout.append(("~", line[3:]))
            elif line.startswith("> ") or line == ">":
                step.stdout.append(("=", line[2:]))
            elif line.startswith("2> "):
                step.stderr.append(line[3:])
            else:
                raise ValueError(f"{path.name}:{number}: cannot read {line!r}")
    return steps


def expand(text: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace("$" + name, variables[name])
    return text


def check(
    step: Step,
    variables: dict[str, str],
    run: Callable[[list[str]], tuple[int, str, str]],
    where: str,
) -> None:
    argv = shlex.split(expand(step.text, variables))
    assert argv[0] == "tenure-agent", f"{where}: scripts run tenure-agent only"
    code, out, err = run(argv[1:])
    out_lines, err_lines = out.splitlines(), err.splitlines()
    context = f"{where}:{step.line} `{step.text}`\nstdout:\n{out}\nstderr:\n{err}"
    assert code == step.exit_code, f"exit code {code}, expected {step.exit_code}\n{context}"
    assert len(out_lines) == len(step.stdout), f"stdout line count\n{context}"
    for got, (how, want) in zip(out_lines, step.stdout, strict=True):
        want = expand(want, variables)
        if how == "=":
            assert got == want, f"stdout\n  got:  {got}\n  want: {want}\n{context}"
        else:
            assert re.fullmatch(want, got), f"stdout\n  got:  {got}\n  want: /{want}/\n{context}"
    assert [expand(e, variables) for e in step.stderr] == err_lines, f"stderr\n{context}"
