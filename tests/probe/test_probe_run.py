"""`wallwatch probe run`: several nettests at once, one nettest with inputs, and every option declared.

Two lines of work met here: nettests that declare their options (`Option`, checked by the CLI
and the scenario loader before anything runs) and run together in one process, and nettests
that take options of their own (throughput rounds, web_connectivity's helper and bound) or
write one measurement per input (web_connectivity, `Nettest.run`). Nothing here dials off
the machine: the run-together case uses loopback servers and a resolver that knows no name.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.probe.test_web_connectivity import World
from wallwatch.cli import app
from wallwatch.probe.measurement import Stamp
from wallwatch.probe.nettests import NETTESTS
from wallwatch.probe.nettests import web_connectivity as wc
from wallwatch.probe.nettests.base import Common, Throughput, with_options
from wallwatch.probe.settings import LAB_ENV, ProbeSettings


def test_every_option_a_nettest_reads_is_declared() -> None:
    """The registry refuses any option not declared, so each one a nettest reads must be there."""
    for name in ("telegram", "signal", "facebook_messenger"):
        (option,) = NETTESTS[name].options
        assert option.name == "throughput" and set(option.choices or ()) == {"on", "off"}
        for choice in option.choices or ():
            NETTESTS[name].check_options({"throughput": choice})
            # ... and what the registry lets through, the nettest takes.
            with_options(name, Common(), {"throughput": choice}, Throughput(calls=("calls",)))
        with pytest.raises(ValueError, match="throughput must be one of on, off"):
            NETTESTS[name].check_options({"throughput": "maybe"})
    web = NETTESTS["web_connectivity"]
    declared = {option.name for option in web.options}
    assert declared == {"helper", "parallelism"}
    web.check_options({"helper": "https://th.example/", "parallelism": "4"})
    config = wc.default_config(ProbeSettings(), options={"helper": "https://th.example/", "parallelism": "4"})
    assert config.parallelism == 4 and config.helper_url == "https://th.example/"
    with pytest.raises(ValueError, match="web_connectivity takes no option 'throughput'"):
        web.check_options({"throughput": "on"})
    with pytest.raises(ValueError, match="takes no option"):
        NETTESTS["circumvention"].check_options({"throughput": "on"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["telegram", "--option", "throughput=maybe"], "throughput must be one of on, off"),
        (["web_connectivity", "telegram", "--option", "parallelism=4"], "name the one it is for"),
        (["web_connectivity", "telegram", "--option", "web_connectivity.throughput=on"],
         "web_connectivity takes no option 'throughput'"),
        (["web_connectivity", "telegram", "--input-file", "INPUTS"], "it takes one nettest at a time"),
        (["whatsapp", "whatsapp"], "a nettest is named twice"),
        (["whatsapp", "telegraph"], "telegraph"),
    ],
)
def test_the_command_refuses_before_measuring(tmp_path: Path, argv: list[str], message: str) -> None:
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("https://www.google.com/\n")
    # A missing lab state as a second guard: nothing here may reach the measuring.
    result = CliRunner().invoke(app, ["probe", "run", *[str(inputs) if a == "INPUTS" else a for a in argv]],
                                env={LAB_ENV: str(tmp_path / "missing.json"), "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_run_together_writes_every_measurement_of_a_nettest_with_inputs(tmp_path: Path) -> None:
    """web_connectivity beside telegram in one process: one measurement per URL of its list, and
    telegram's one; the options reach each nettest scoped to it."""
    from wallwatch.probe.cli import _run_together, scoped_options

    world = World(tmp_path)

    async def start() -> tuple[ProbeSettings, str]:
        _, settings, config = await world.start(None)
        assert config.helper_url is not None
        return settings, config.helper_url

    loop = asyncio.new_event_loop()
    try:
        settings, helper = loop.run_until_complete(start())
        output = tmp_path / "out.jsonl"
        nettests = ["web_connectivity", "telegram"]
        options = scoped_options(nettests, {"web_connectivity.helper": helper, "web_connectivity.parallelism": "16",
                                            "telegram.throughput": "off"})
        # The loopback servers answer from this loop while the nettests run in their own threads.
        measurements, failed = loop.run_until_complete(loop.run_in_executor(
            None, lambda: _run_together(nettests, settings, Stamp(), 0.5, options, output)))
    finally:
        world.close()
        loop.close()
    assert failed == {}
    urls = wc.shipped_list()
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(m["report_id"] for m in written) == sorted(m["report_id"] for m in measurements)
    pages = [m for m in measurements if m["test_name"] == "web_connectivity"]
    assert [m["input"] for m in pages] == urls and len(urls) > 1
    assert all(m["test_helpers"]["backend"]["address"] == helper for m in pages)
    assert [m["test_name"] for m in measurements].count("telegram") == 1
