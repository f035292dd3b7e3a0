"""The one registry mechanism: registration, spec parsing, options, plugins by entry point."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from safeturn.errors import ModelSpecError, SafeturnError
from safeturn.registry import Registry, RegistryError


def _registry() -> Registry[str]:
    reg: Registry[str] = Registry("widget", error=ModelSpecError)

    @reg.register("plain", summary="no argument")
    def plain(*, loud: bool = False) -> str:
        return "PLAIN" if loud else "plain"

    @reg.register("wrap", summary="takes a spec", example="wrap:plain", argument="inner spec")
    def wrap(rest: str) -> str:
        return f"wrap({rest})"

    @reg.register("opt", summary="optional argument", argument="size", argument_required=False)
    def opt(rest: str, **options: Any) -> str:
        return f"opt({rest or 'default'},{sorted(options)})"

    return reg


def test_spec_is_split_on_the_first_colon_only() -> None:
    reg = _registry()
    assert reg.create("wrap:openai:http://h:8000/v1#m") == "wrap(openai:http://h:8000/v1#m)"
    assert reg.create("  plain ") == "plain"
    assert reg.create("opt") == "opt(default,[])"
    assert reg.create("opt:3", anything=1) == "opt(3,['anything'])"


def test_bracketed_options_reach_the_factory_at_the_head_of_the_argument() -> None:
    reg = _registry()
    entry, rest = reg.split("wrap[a,b]:x+y")
    assert entry.name == "wrap"
    assert rest == "[a,b]:x+y"


def test_unknown_name_and_missing_argument_raise_the_kinds_error_naming_the_spec() -> None:
    reg = _registry()
    with pytest.raises(ModelSpecError, match=r"unknown widget 'nope'.*plain, wrap:<inner spec>"):
        reg.create("nope:x")
    with pytest.raises(ModelSpecError, match=r"needs a inner spec.*e\.g\. wrap:plain"):
        reg.create("wrap")
    with pytest.raises(ModelSpecError, match="takes no argument"):
        reg.create("plain:extra")


def test_options_are_checked_against_the_factory_signature() -> None:
    reg = _registry()
    assert reg.create("plain", loud=True) == "PLAIN"
    with pytest.raises(ModelSpecError, match=r"does not take option\(s\) volume; it takes: loud"):
        reg.create("plain", volume=3)
    assert list(reg.get("plain").options()) == ["loud"]
    assert reg.get("wrap").options() == {}


def test_a_name_registered_twice_is_refused() -> None:
    reg = _registry()
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("plain", summary="again")(lambda: "x")
    assert isinstance(RegistryError("x"), SafeturnError)


def test_describe_records_what_a_run_used_without_building_it() -> None:
    reg = _registry()
    created = reg.describe("wrap:openai:http://h/v1#m", temperature=0.5, client=object())
    record = created.as_dict()
    assert record["kind"] == "widget"
    assert record["name"] == "wrap"
    assert record["spec"] == "wrap:openai:http://h/v1#m"
    assert record["options"]["temperature"] == 0.5
    assert record["options"]["client"].startswith("<object object")
    assert record["origin"] == __name__


def test_builtins_are_imported_on_first_lookup_only(tmp_path: Path, monkeypatch: Any) -> None:
    module = tmp_path / "lazy_widgets_builtin.py"
    module.write_text(
        textwrap.dedent(
            """
            from test_registry_target import REG

            @REG.register("late", summary="registered on import")
            def late() -> str:
                return "late"
            """
        )
    )
    target = tmp_path / "test_registry_target.py"
    target.write_text(
        "from safeturn.registry import Registry\n"
        "REG = Registry('lazy widget', builtins=['lazy_widgets_builtin'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import test_registry_target

    try:
        assert "lazy_widgets_builtin" not in sys.modules
        assert test_registry_target.REG.create("late") == "late"
        assert "lazy_widgets_builtin" in sys.modules
    finally:
        sys.modules.pop("lazy_widgets_builtin", None)
        sys.modules.pop("test_registry_target", None)


def _plugin_distribution(root: Path, group: str, module_name: str, body: str) -> None:
    """A real installed distribution: dist-info with an entry point, and its module."""
    info = root / "safeturn_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: safeturn-plugin-demo\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[{group}]\ndemo = {module_name}\n")
    (root / f"{module_name}.py").write_text(textwrap.dedent(body))


def test_a_plugin_package_adds_a_member_through_its_entry_point(
    tmp_path: Path, monkeypatch: Any
) -> None:
    reg = _registry()
    monkeypatch.setitem(sys.modules, "widget_registry_under_test", type(sys)("w"))
    sys.modules["widget_registry_under_test"].REG = reg  # type: ignore[attr-defined]
    _plugin_distribution(
        tmp_path,
        reg.group,
        "widget_plugin_demo",
        """
        from widget_registry_under_test import REG

        @REG.register("from-plugin", summary="added by another package")
        def from_plugin() -> str:
            return "plugged"
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert reg.group == "safeturn.widgets"
        assert reg.create("from-plugin") == "plugged"
        assert reg.get("from-plugin").origin == "widget_plugin_demo"
        assert reg.names()[:3] == ["plain", "wrap", "opt"]
    finally:
        sys.modules.pop("widget_plugin_demo", None)


def test_a_broken_plugin_is_named_in_the_error(tmp_path: Path, monkeypatch: Any) -> None:
    reg = _registry()
    _plugin_distribution(tmp_path, reg.group, "widget_plugin_broken", "raise ImportError('x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(RegistryError, match=r"plugin 'demo' \(widget_plugin_broken\)"):
            reg.names()
        with pytest.raises(RegistryError, match="widget_plugin_broken"):  # every time
            reg.create("plain")
    finally:
        sys.modules.pop("widget_plugin_broken", None)


def test_a_run_records_which_registered_members_its_specs_name(tmp_path: Path) -> None:
    from safeturn.run.engine import BUILT_FROM, EvalSettings, run_settings, start_run
    from safeturn.run.store import RunStore
    from safeturn.schema import Dialogue, Message, Sample

    settings = EvalSettings(model="scripted:refuse", judges=["refusal", "ensemble:refusal+refusal"])
    sample = Sample(id="s1", source="test", dialogue=Dialogue(messages=[Message.user("hi")]))
    store = RunStore(tmp_path / "runs.db")
    try:
        run_id = start_run(store, [sample], settings)
        config = store.get_run(run_id).config
        assert run_settings(store, run_id) == settings
    finally:
        store.close()
    records = config[BUILT_FROM]
    assert [(r["kind"], r["name"], r["spec"]) for r in records] == [
        ("backend", "scripted", "scripted:refuse"),
        ("judge", "refusal", "refusal"),
        ("judge", "ensemble", "ensemble:refusal+refusal"),
    ]
    assert records[0]["origin"] == "safeturn.models.backends.scripted"
    assert all(r["safeturn"] for r in records)


def test_plugins_command_lists_every_kind_and_refuses_an_unknown_one() -> None:
    from typer.testing import CliRunner

    from safeturn.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["plugins"])
    assert listed.exit_code == 0, listed.output
    for group in ("safeturn.backends", "safeturn.judges", "safeturn.trainers", "safeturn.attacks"):
        assert group in listed.output
    one = runner.invoke(app, ["plugins", "--kind", "moderator"])
    assert one.exit_code == 0
    assert "embedded" in one.output
    assert "safeturn.judges" not in one.output
    bad = runner.invoke(app, ["plugins", "--kind", "nope"])
    assert bad.exit_code == 1
    assert "unknown kind 'nope'" in bad.output


def test_a_run_of_a_model_object_records_its_name_without_a_member(tmp_path: Path) -> None:
    from safeturn.run.engine import BUILT_FROM, EvalSettings, start_run
    from safeturn.run.store import RunStore
    from safeturn.schema import Dialogue, Message, Sample

    sample = Sample(id="s1", source="test", dialogue=Dialogue(messages=[Message.user("hi")]))
    store = RunStore(tmp_path / "runs.db")
    try:
        run_id = start_run(store, [sample], EvalSettings(model="comply", judges=["refusal"]))
        records = store.get_run(run_id).config[BUILT_FROM]
    finally:
        store.close()
    assert records[0]["kind"] == "backend"
    assert (records[0]["name"], records[0]["spec"]) == (None, "comply")
    assert records[1]["name"] == "refusal"


def test_names_member_reads_the_head_as_split_does() -> None:
    reg = _registry()
    assert reg.names_member("wrap:openai:http://h/v1#m")
    assert reg.names_member(" wrap[a,b]:x")
    assert reg.names_member("plain")
    assert not reg.names_member("runs/guard/model.npz")
    assert not reg.names_member("nope:wrap")
