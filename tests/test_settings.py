"""The environment switches: the usual spellings, anything else refused naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bn_portable._native import _settings

TRUE = ["1", "true", "True", "TRUE", "on", "On", "yes", "YES", " 1 ", "\ttrue\n"]
FALSE = ["0", "false", "False", "off", "OFF", "no", "No", " 0", "false "]
GARBAGE = ["2", "enabled", "nope", "-1", "0.0", "t", "y"]


@pytest.mark.parametrize("setting", TRUE)
def test_fast_paths_true_spellings(monkeypatch, setting):
    monkeypatch.setenv("BN_PORTABLE_FAST_PATHS", setting)
    assert _settings.fast_paths_from_environment() is True


@pytest.mark.parametrize("setting", FALSE)
def test_fast_paths_false_spellings(monkeypatch, setting):
    monkeypatch.setenv("BN_PORTABLE_FAST_PATHS", setting)
    assert _settings.fast_paths_from_environment() is False


@pytest.mark.parametrize("setting", ["", "  "])
def test_fast_paths_unset_or_empty_means_on(monkeypatch, setting):
    monkeypatch.setenv("BN_PORTABLE_FAST_PATHS", setting)
    assert _settings.fast_paths_from_environment() is True
    monkeypatch.delenv("BN_PORTABLE_FAST_PATHS")
    assert _settings.fast_paths_from_environment() is True


@pytest.mark.parametrize("setting", GARBAGE)
def test_fast_paths_garbage_is_refused(monkeypatch, setting):
    monkeypatch.setenv("BN_PORTABLE_FAST_PATHS", setting)
    with pytest.raises(ValueError, match=r"BN_PORTABLE_FAST_PATHS must be one of .*got"):
        _settings.fast_paths_from_environment()


@pytest.mark.parametrize(("setting", "count"), [("1", 1), (" 4 ", 4), ("16", 16), ("", None)])
def test_thread_count_spellings(monkeypatch, setting, count):
    monkeypatch.setenv("BN_PORTABLE_NUM_THREADS", setting)
    assert _settings.num_threads_from_environment() == count


def _import_with(environment):
    env = {**os.environ, **environment}
    env["PYTHONPATH"] = os.pathsep.join(["src", env.get("PYTHONPATH", "")])
    code = "import bn_portable as bn; print(bn.fast_paths_enabled())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("environment", "printed"),
    [({"BN_PORTABLE_FAST_PATHS": "off"}, "False"), ({"BN_PORTABLE_FAST_PATHS": " No "}, "False"),
     ({"BN_PORTABLE_FAST_PATHS": "yes"}, "True")],
)
def test_the_switch_is_read_at_import(environment, printed):
    completed = _import_with(environment)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == printed


@pytest.mark.parametrize(
    ("environment", "variable"),
    [({"BN_PORTABLE_FAST_PATHS": "maybe"}, "BN_PORTABLE_FAST_PATHS"),
     ({"BN_PORTABLE_NUM_THREADS": "many"}, "BN_PORTABLE_NUM_THREADS")],
)
def test_garbage_fails_at_import_not_at_the_first_large_call(environment, variable):
    completed = _import_with(environment)
    assert completed.returncode != 0
    assert f"ValueError: {variable} must be" in completed.stderr
