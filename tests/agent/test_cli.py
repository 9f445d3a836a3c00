"""The command line, as a technician meets it: golden scripts against real subprocesses.

A real ``tenure-broker serve`` runs as a subprocess for the whole module; ``@agent start``
runs a real ``tenure-agent run``. The commands under test run in-process (``main(argv)``)
so that the module stays fast.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from tests.agent.golden import check, parse
from tests.agent.processes import AgentProcess, BrokerProcess, Estate, free_port

TESTDATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.fixture(scope="module")
def broker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path_factory.mktemp("broker"))
    yield broker
    broker.stop()


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_golden(
    script: Path,
    broker_process: BrokerProcess,
    tmp_path: Path,
    short_dir: Path,
    agent_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    estate = Estate(broker_process)
    variables = {
        "BROKER": broker_process.url,
        "HTTPS_BROKER": broker_process.url.replace("http://", "https://", 1),
        "STATE": str(tmp_path / "state"),
        "SOCKET": str(short_dir / "agent.sock"),
        "DEAD": f"http://127.0.0.1:{free_port()}",
    }
    agent: AgentProcess | None = None

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    try:
        for step in parse(script):
            if step.kind == "command":
                check(step, variables, run, script.name)
                continue
            verb, *args = step.text.split()
            if verb == "mint":
                code = estate.code(*args[1:])
                variables[args[0]] = code
                variables[args[0] + "_SPACED"] = f"{code[:4]} {code[4:]}"
                variables[args[0] + "_DASHED"] = f"{code[:4]}-{code[4:]}"
                typo = f"{(int(code[0]) + 1) % 10}{code[1:]}"  # one wrong digit
                variables[args[0] + "_MISTYPED"] = f"{typo[:4]} {typo[4:]}"
            elif verb == "agent" and args == ["start"]:
                agent = AgentProcess(Path(variables["STATE"]), Path(variables["SOCKET"]), agent_env)
            elif verb == "agent" and args == ["stop"]:
                assert agent is not None
                assert agent.stop() == 0, agent.log.read_text()
                agent = None
            elif verb == "broker" and args == ["stop"]:
                broker_process.stop()  # the agent's broker is down: unreachable
            elif verb == "broker" and args == ["start"]:
                broker_process.start()
            elif verb == "agent" and args == ["kill"]:  # a crash: the leases stay recorded, and taken
                assert agent is not None
                agent.stop(signal.SIGKILL)
                agent = None
            elif verb == "in_use":
                pool = args[1] if len(args) > 1 else "Default"
                assert estate.in_use(pool) == int(args[0]), f"{script.name}:{step.line}"
            else:
                raise AssertionError(f"{script.name}:{step.line}: unknown directive {verb}")
    finally:
        if agent is not None:
            agent.stop(signal.SIGKILL)
        if not broker_process.running:
            broker_process.start()  # for the scripts after this one


def test_typos_spend_none_of_the_brokers_failure_budget(
    broker_process: BrokerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # More typos than the broker's ten failures per address: were any sent, the good code
    # typed next would be answered 429.
    code = Estate(broker_process).code()
    typo = f"{code[:6]}{code[7]}{code[6]}" if code[6] != code[7] else f"{(int(code[0]) + 1) % 10}{code[1:]}"
    common = ["--broker", broker_process.url, "--state-dir", str(tmp_path / "state")]
    for _ in range(12):
        assert main(["enroll", typo, *common]) == 2
    assert main(["enroll", code, "--name", "enc-host-9", *common]) == 0
    out, err = capsys.readouterr()
    assert err.count("check the digits and type it again") == 12
    assert out.startswith('Enrolled server "enc-host-9"')


PLAIN_RUNS = [
    ["run"],
    ["run", "--config", "/etc/a.toml"],
    ["run", "--config=/etc/a.toml", "--state-dir", "/var/x", "--socket=/run/s.sock"],
    ["run", "--socket", "/a", "--socket", "/b"],  # the last one counts, as in argparse
    ["run", "--state-dir=a=b"],
    ["run", "--socket="],
    ["run", "--socket=-x"],
]
LEFT_TO_ARGPARSE = [
    ["run", "--sock", "/a"],  # an abbreviation argparse accepts
    ["run", "--socket", "-x"],
    ["run", "--socket"],
    ["run", "extra"],
    ["run", "--help"],
    ["run", "--", "--socket", "/a"],
    ["status", "--socket", "/a"],
    [],
]


@pytest.mark.parametrize("argv", PLAIN_RUNS)
def test_run_is_read_without_argparse_exactly_as_argparse_reads_it(argv: list[str]) -> None:
    from agent.cli import _plain_run
    from agent.commands import parse

    plain = _plain_run(argv)
    assert plain is not None
    assert vars(plain) == vars(parse(argv))


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE)
def test_anything_but_a_plain_run_is_left_to_argparse(argv: list[str]) -> None:
    from agent.cli import _plain_run

    assert _plain_run(argv) is None


def test_the_service_unit_command_line_is_read_without_argparse(tmp_path: Path) -> None:
    unit = (Path(__file__).parents[2] / "deploy/systemd/tenure-agent.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    from agent.cli import _plain_run

    assert _plain_run(exec_start.split()[1:]) is not None
    # ...so the service never imports it: a `run` that cannot start still got that far.
    code = (
        "import sys\n"
        "from agent.cli import main\n"
        f"code = main(['run', '--config', {str(tmp_path / 'missing.toml')!r}])\n"
        "print(code, 'argparse' in sys.modules, 'gettext' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False", "False"]


READ_SETTINGS = """
import gc, sys, types
from pathlib import Path
from types import SimpleNamespace
{before}
from agent.cli import _load_config

config = _load_config(SimpleNamespace(config=Path(sys.argv[1]), state_dir=None, socket=None))
gc.collect()
modules = [o for o in gc.get_objects() if isinstance(o, types.ModuleType)]
alive = sorted({{m.__name__ for m in modules if m.__name__.startswith("tomllib")}})
print(config.log_level, config.retry_max, len(config.local_api.allow), "tomllib" in sys.modules, alive)
"""


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        # The service reads its settings with tomllib, then lets it go: not in sys.modules,
        # and nothing of the agent keeps it alive (docs/agent.md, "Footprint").
        ("", "debug 30.0 1 False []"),
        # Imported before the agent read its settings: not the agent's to let go.
        ("import tomllib", "debug 30.0 1 True ['tomllib', 'tomllib._parser', 'tomllib._re', 'tomllib._types']"),
    ],
)
def test_the_service_lets_tomllib_go_once_its_settings_are_read(before: str, expected: str, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nlog_level = "debug"\nretry_max = 30.0\n\n[local_api]\nallow = [{ user = "root", domains = ["-"] }]\n'
    )
    code = READ_SETTINGS.format(before=before)
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
