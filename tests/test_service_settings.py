"""Settings reach the onnxruntime session: --spinning (flag, environment, default, refusals)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.runtime import ALLOW_SPINNING_KEY, SPINNING, session_options
from edge_embed.service.settings import parse_settings


def _spinning_entry(bundle: Path, argv: list[str], environ: dict[str, str]) -> str:
    settings = parse_settings(["--model", str(bundle), *argv], environ=environ)
    options = settings.runtime_options(intra_op_threads=1)
    so = session_options(load_manifest(bundle), options)
    entry: str = so.get_session_config_entry(ALLOW_SPINNING_KEY)
    assert options.spinning is settings.spinning
    return entry


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {}, "1" if SPINNING else "0"),
    (["--spinning", "off"], {}, "0"),
    (["--spinning", "on"], {}, "1"),
    ([], {"EDGE_EMBED_SPINNING": "off"}, "0"),
    ([], {"EDGE_EMBED_SPINNING": "ON"}, "1"),
    (["--spinning", "on"], {"EDGE_EMBED_SPINNING": "off"}, "1"),  # the flag wins
])
def test_spinning_reaches_the_session(tiny_bundle: Path, argv: list[str],
                                      environ: dict[str, str], expected: str) -> None:
    assert _spinning_entry(tiny_bundle, argv, environ) == expected


@pytest.mark.parametrize(("argv", "environ", "named"), [
    (["--spinning", "maybe"], {}, "--spinning"),
    ([], {"EDGE_EMBED_SPINNING": "1"}, "EDGE_EMBED_SPINNING"),
])
def test_spinning_refuses_other_values(tiny_bundle: Path, argv: list[str],
                                       environ: dict[str, str], named: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(["--model", str(tiny_bundle), *argv], environ=environ)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "on or off" in err


def test_thread_plan_fills_the_cpus_with_what_is_not_given() -> None:
    from edge_embed.core.cpus import DEFAULT_MAX_RUNS, plan_threads

    # Neither flag: one single-threaded run per CPU, up to the cap (then threads share the rest).
    assert plan_threads(2, None, None) == (1, 2)
    assert plan_threads(1, None, None) == (1, 1)
    assert plan_threads(16, None, None) == (16 // DEFAULT_MAX_RUNS, DEFAULT_MAX_RUNS)
    # One flag: the other fills the CPUs; both: taken as given, runs never above the CPUs.
    assert plan_threads(2, 2, None) == (2, 1)
    assert plan_threads(8, None, 2) == (4, 2)
    assert plan_threads(2, 1, 1) == (1, 1)
    assert plan_threads(2, 1, 8) == (1, 2)


def test_connection_limits_come_from_flags_and_env(tiny_bundle: Path) -> None:
    from edge_embed.service.limits import ConnectionLimits

    model = ["--model", str(tiny_bundle)]
    assert parse_settings(model, environ={}).connections == ConnectionLimits()
    env = {"EDGE_EMBED_HEADER_TIMEOUT": "3", "EDGE_EMBED_BODY_TIMEOUT": "4.5",
           "EDGE_EMBED_KEEPALIVE_TIMEOUT": "30", "EDGE_EMBED_MAX_CONNECTIONS": "64"}
    settings = parse_settings(model, environ=env)
    assert settings.connections == ConnectionLimits(3.0, 4.5, 30.0, 64)
    assert settings.limits()["connections"] == {
        "header_timeout_s": 3.0, "body_timeout_s": 4.5, "keepalive_timeout_s": 30.0,
        "max_connections": 64}
    # the flag wins over the environment
    flagged = parse_settings([*model, "--max-connections", "8"], environ=env)
    assert flagged.connections.max_connections == 8


@pytest.mark.parametrize("argv", [["--max-connections", "0"], ["--header-timeout", "0"],
                                  ["--body-timeout", "-1"], ["--keepalive-timeout", "inf"]])
def test_connection_limits_refuse_non_positive_values(tiny_bundle: Path, argv: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(["--model", str(tiny_bundle), *argv], environ={})
    assert exc.value.code == 2
    assert argv[0].lstrip("-") in capsys.readouterr().err
