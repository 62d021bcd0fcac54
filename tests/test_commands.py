"""The one `wallwatch` command's conventions (issue 11, item 7), through typer's CliRunner:
`--version`; one `export` for every dataset; `--out` is a folder everywhere and the help says so;
times say their format when refused; choices are typed choices; long commands show progress."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from wallwatch import __version__
from wallwatch.cli import app
from tests.conftest import REPLAY_MEASUREMENTS

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def _run(*args: str):  # noqa: ANN202 - click's Result
    return runner.invoke(app, list(args))


def _plain(text: str) -> str:
    """The text of rich's boxes, without the box drawing (option names are cut by the borders)."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_version() -> None:
    result = _run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"wallwatch {__version__}"


def test_one_export_writes_every_dataset_into_one_folder(replay_copy: Path, tmp_path: Path) -> None:
    assert _run("export-series", "hourly", "--data", str(replay_copy)).exit_code != 0  # one command now
    out = tmp_path / "exports"
    result = _run("export", "verdicts", "observations", "measurements", "hourly", "daily", "events",
                  "--out", str(out), "--data", str(replay_copy))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.csv" for name in ("verdicts", "observations", "measurements", "hourly", "daily", "events"))
    assert pacsv.read_csv(out / "verdicts.csv").num_rows == 234
    assert pacsv.read_csv(out / "events.csv").num_rows == 4
    result = _run("export", "daily", "--format", "parquet", "--country", "cn", "--data", str(replay_copy))
    assert result.exit_code == 0, result.output
    assert pq.read_table(replay_copy / "exports" / "daily.parquet").num_rows > 0  # default: DATA/exports
    assert "xlsx" in _run("export", "verdicts", "--format", "xlsx", "--data", str(replay_copy)).output


def test_out_is_a_folder_in_every_command_and_the_help_says_so(replay_copy: Path, tmp_path: Path) -> None:
    helps = {
        ("report",): "Folder to write the report into",
        ("events",): "Folder to write the feed into",
        ("export",): "Folder to write into",
        ("lab", "replay"): "folder to write measurements.jsonl",
        ("demo",): "folder to write measurements.jsonl",
    }
    for command, words in helps.items():
        text = _plain(_run(*command, "--help").output)
        assert words in text, (command, text)
    folder = tmp_path / "feed"
    result = _run("events", "--data", str(replay_copy), "--no-rebuild", "--feed", "atom", "--out", str(folder))
    assert result.exit_code == 0, result.output
    assert (folder / "events.atom").read_bytes().startswith(b"<?xml")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = _run("report", "--data", str(replay_copy), "--out", str(a_file), "--no-png")
    assert result.exit_code == 2 and "is a file" in _plain(result.output)


def test_a_time_that_cannot_be_read_is_refused_with_the_format(replay_copy: Path) -> None:
    result = _run("series", "--data", str(replay_copy), "--since", "20/09/2017")
    assert result.exit_code == 2
    assert "write YYYY-MM-DD or YYYY-MM-DDTHH:MM (UTC), e.g. 2017-09-20 or 2017-09-20T12:00" in _plain(result.output)
    assert "YYYY-MM-DD[THH:MM]" in _plain(_run("series", "--help").output)
    for written in ("2017-09-20", "2017-09-20T12:00", "2017-09-20 12:00:00", "2017-09-20T12:00Z",
                    "2017-09-20T14:00+02:00"):
        result = _run("series", "--data", str(replay_copy), "--since", written, "--country", "CN")
        assert result.exit_code == 0, (written, result.output)
    from wallwatch.analysis.cli import parse_utc

    assert parse_utc("2017-09-20T14:00+02:00") == parse_utc("2017-09-20T12:00Z") == parse_utc("2017-09-20 12:00")


def test_choices_are_typed_and_listed(replay_copy: Path) -> None:
    result = _run("events", "--data", str(replay_copy), "--no-rebuild", "--service", "whatsap")
    assert result.exit_code == 2 and "whatsapp" in result.output and "openvpn" in result.output
    result = _run("events", "--data", str(replay_copy), "--no-rebuild", "--no-record", "--json",
                  "--service", "openvpn")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and '"service":"openvpn"' in lines[0]
    assert "whatsapp|telegram|signal" in _plain(_run("report", "--help").output).replace(" ", "")
    probe = _run("probe", "run", "whatsap")
    assert probe.exit_code == 2 and "'whatsapp'" in probe.output and "'openvpn'" in probe.output


def test_long_commands_show_progress(tmp_path: Path) -> None:
    data = tmp_path / "data"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(REPLAY_MEASUREMENTS, inputs / "a.jsonl.gz")
    result = _run("ingest", str(inputs), "--data", str(data), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert re.search(r"ingest: 78 measurements read.*1/1", result.output), result.output
    result = _run("series", "--data", str(data))
    assert result.exit_code == 0 and re.search(r"series: writing daily.*4/4", result.output), result.output
    result = _run("events", "--data", str(data), "--no-rebuild")
    assert result.exit_code == 0 and re.search(r"events: detecting.*18/18", result.output), result.output
    result = _run("report", "--data", str(data), "--out", str(tmp_path / "r"), "--no-png", "--no-exports",
                  "--no-rebuild", "--max-charts", "2")
    assert result.exit_code == 0 and re.search(r"report: page.*6/6", result.output), result.output


def test_progress_goes_to_stderr_and_ends_full(replay_copy: Path) -> None:
    """The bar is on stderr, so a command's stdout (JSON lines here) stays clean to pipe on."""
    result = _run("events", "--data", str(replay_copy), "--no-rebuild", "--no-record", "--json")
    assert result.exit_code == 0
    assert "events: detecting" in result.stderr and "events: detecting" not in result.stdout
    assert all(line.startswith("{") for line in result.stdout.splitlines())
    import io

    from rich.console import Console

    from wallwatch.progress import progress

    buffer = io.StringIO()
    with progress("work", 3, console=Console(file=buffer, width=100)) as step:
        step(description="work: one")  # two of three units skipped: the bar still ends full
    assert "work: one" in buffer.getvalue() and "3/3" in buffer.getvalue()


@pytest.mark.parametrize("command", [("ingest",), ("series",), ("events",), ("report",), ("export",)])
def test_every_pipeline_command_has_help(command: tuple[str, ...]) -> None:
    assert _run(*command, "--help").exit_code == 0
