"""The command table of vadice.cli: every listed command module must import and register its commands."""

from __future__ import annotations

import pytest

import vadice.cli as cli


def test_a_listed_command_module_that_does_not_import_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "vadice.cli.predcit"))
    with pytest.raises(ModuleNotFoundError, match="vadice.cli.predcit"):
        cli.build_parser()
    with pytest.raises(ModuleNotFoundError, match="vadice.cli.predcit"):
        cli.main(["--version"])


def test_every_listed_module_registers_a_command():
    import argparse
    import importlib

    for name in cli.COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub)
        assert sub.choices, f"{name} registers no command"
