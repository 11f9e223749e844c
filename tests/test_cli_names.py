"""One flag name per concept (docs/glossary.md)."""

import pytest

from workbench import cli, commands


def parse(argv):
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["trace", "ck", "--samples", "3"], "samples", 3),
        (["updates", "a", "b", "--out", "s.zarr", "--windows", "3"], "windows", 3),
        (["probe", "a", "--out", "s.zarr", "--windows", "3"], "windows", 3),
        (["kd-signal", "a", "--data", "d.yaml", "--out", "s.zarr", "--windows", "3"], "windows", 3),
    ],
)
def test_one_name_per_concept_parses_without_a_warning(argv, dest, value, capsys):
    assert getattr(parse(argv), dest) == value
    assert "deprecated" not in capsys.readouterr().err


def test_samples_and_windows_defaults():
    assert parse(["trace", "ck"]).samples == 2 and parse(["updates", "a", "b", "--out", "s"]).windows == 2


@pytest.mark.parametrize(
    "command",
    [
        ["trace", "ck"],
        ["updates", "a", "b", "--out", "s"],
        ["probe", "a", "--out", "s"],
        ["kd-signal", "a", "--data", "d", "--out", "s"],
        ["eval", "a"],
        ["teacher-cache", "c", "--out", "o"],
    ],
)
def test_analysis_commands_share_one_device_default(command):
    assert parse(command).device == commands.DEVICE_DEFAULT == "auto"


@pytest.mark.parametrize(
    "command",
    [
        ["trace", "ck"],
        ["updates", "a", "b", "--out", "s"],
        ["probe", "a", "--out", "s"],
        ["kd-signal", "a", "--data", "d", "--out", "s"],
        ["eval", "a"],
        ["teacher-cache", "c", "--out", "o"],
    ],
)
def test_model_running_commands_share_one_threads_flag(command, capsys):
    """`--threads` in every command that runs models (default: torch's choice; they used to cap at 2), and
    a count below 1 is one error before any work."""
    import torch

    assert parse(command).threads is None and parse(command + ["--threads", "3"]).threads == 3
    before = torch.get_num_threads()
    assert cli.main(command + ["--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err and torch.get_num_threads() == before


def test_compare_takes_its_store_positionally_or_as_store(tmp_path, capsys):
    assert (
        parse(["compare", "s.zarr"]).store == "s.zarr"
        and parse(["compare", "--store", "s.zarr"]).store_flag == "s.zarr"
    )
    assert cli.main(["compare"]) == 2
    assert "compare needs its input store" in capsys.readouterr().err
    assert cli.main(["compare", "a.zarr", "--store", "b.zarr"]) == 2
    assert "two input stores" in capsys.readouterr().err
    missing = str(tmp_path / "none.zarr")
    assert cli.main(["compare", "--store", missing]) == cli.main(["compare", missing]) == 2
    err = capsys.readouterr().err
    assert err.count("none.zarr") >= 2 and "input store" not in err  # the flag's store is the one opened


@pytest.mark.parametrize(
    "command, flag, metavar",
    [
        (["eval", "a"], "--figure", "PATH"),
        (["kd-signal", "a"], "--figure", "PATH"),
        (["updates", "a", "b"], "--figures", "DIR"),
        (["probe", "a"], "--figures", "DIR"),
    ],
)
def test_figure_is_a_path_prefix_and_figures_a_folder(command, flag, metavar):
    helptext = cli.build_parser()._subparsers._group_actions[0].choices[command[0]].format_help()
    assert f"{flag} {metavar}" in helptext
