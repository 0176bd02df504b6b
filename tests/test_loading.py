"""Persona and scenario files: shipped content, layering, and errors that name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delib.errors import FileFormatError, UnknownIdError
from delib.library.files import builtin_dir, load_file
from delib.library.personas import Persona, persona_library
from delib.library.scenarios import Protocol, Scenario, cast_for, scenario_library

REQUIRED_PERSONAS = {
    "philosopher",
    "oversight",
    "interpretability",
    "societal-impacts",
    "value-learning-skeptic",
    "inner-alignment-skeptic",
}
SEEDS = {"000_a45e5f8f8f9dd3ec.txt", "002_78b28a3bfd3101c9.txt", "004_4b04207254bd80f5.txt"}


def test_shipped_personas_and_scenarios_are_valid_and_consistent():
    personas = persona_library()
    assert REQUIRED_PERSONAS <= set(personas.ids())
    scenarios = scenario_library()
    assert len(scenarios.ids()) >= 6
    assert "alignment-difficulty" in scenarios.ids()
    protocols = set()
    for loaded in scenarios.all():
        scenario = loaded.item
        assert scenario.source_seed in SEEDS
        cast_for(scenario, loaded.path, personas)  # every named persona exists
        protocols.add(scenario.protocol)
    assert protocols == set(Protocol)  # every protocol has a shipped example


def test_working_directory_files_add_and_override(isolated: Path):
    (isolated / "personas").mkdir()
    (isolated / "personas" / "mine.yaml").write_text(
        "id: philosopher\nname: Local Philosopher\nrole: overridden\nprompt: Be brief.\n"
    )
    (isolated / "personas" / "extra.yaml").write_text(
        "id: newcomer\nname: Newcomer\nrole: new voice\nprompt: Ask questions.\n"
    )
    personas = persona_library()
    assert personas.get("philosopher").item.name == "Local Philosopher"
    assert personas.get("newcomer").item.role == "new voice"
    assert "oversight" in personas.ids()


def test_flag_folder_overrides_working_directory(isolated: Path, tmp_path: Path):
    flag_dir = tmp_path / "flagged"
    flag_dir.mkdir()
    (flag_dir / "o.yaml").write_text("id: oversight\nname: Flagged\nrole: r\nprompt: p\n")
    assert persona_library(flag_dir).get("oversight").item.name == "Flagged"


def test_missing_flag_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileFormatError, match="folder does not exist"):
        persona_library(tmp_path / "nope")


def test_yaml_syntax_error_names_file_and_line(isolated: Path):
    (isolated / "personas").mkdir()
    bad = isolated / "personas" / "broken.yaml"
    bad.write_text("id: broken\nname: [unclosed\nrole: r\n")
    with pytest.raises(FileFormatError) as info:
        persona_library().ids()
    assert str(bad) in str(info.value)
    assert "line" in str(info.value)


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ("id: x\nname: X\nrole: r\nprompt: p\ncolour: red\n", "colour", "unknown field"),
        ("id: x\nname: X\nrole: r\n", "prompt", "required field is missing"),
        ("id: x\nname: X\nrole: r\nprompt: p\ntemperature: 9\n", "temperature", "less than"),
        ("id: Bad Id\nname: X\nrole: r\nprompt: p\n", "id", "pattern"),
    ],
)
def test_bad_persona_field_is_named(tmp_path: Path, body: str, field: str, reason: str):
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(FileFormatError) as info:
        load_file(path, Persona)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_scenario_rules(tmp_path: Path):
    base = {
        "id": "s",
        "title": "T",
        "question": "Q?",
        "source_seed": "000_a45e5f8f8f9dd3ec.txt",
        "participants": ["philosopher", "oversight"],
    }
    path = tmp_path / "s.yaml"
    for bad, message in [
        ({"participants": ["philosopher"]}, "at least 2"),
        ({"participants": ["philosopher", "philosopher"]}, "must not repeat"),
        ({"moderator": "philosopher"}, "cannot also be a participant"),
        ({"protocol": "shouting"}, "round_robin"),
        ({"limits": {"token_budget": 5}}, "greater than or equal"),
    ]:
        path.write_text(yaml.safe_dump({**base, **bad}))
        with pytest.raises(FileFormatError, match=message):
            load_file(path, Scenario)


def test_scenario_naming_unknown_persona(isolated: Path):
    (isolated / "scenarios").mkdir()
    path = isolated / "scenarios" / "s.yaml"
    path.write_text(
        "id: s\ntitle: T\nquestion: Q\nsource_seed: x\nparticipants: [philosopher, ghost]\n"
    )
    loaded = scenario_library().get("s")
    with pytest.raises(UnknownIdError) as info:
        cast_for(loaded.item, loaded.path, persona_library())
    assert "ghost" in str(info.value) and "philosopher" in str(info.value)
    assert str(path) in str(info.value)


def test_duplicate_ids_in_one_folder(isolated: Path):
    (isolated / "personas").mkdir()
    for name in ("a.yaml", "b.yaml"):
        (isolated / "personas" / name).write_text("id: twin\nname: T\nrole: r\nprompt: p\n")
    with pytest.raises(FileFormatError, match="also used by"):
        persona_library().ids()


def test_unknown_id_lists_known_ones():
    with pytest.raises(UnknownIdError) as info:
        scenario_library().get("no-such-scenario")
    assert "alignment-difficulty" in str(info.value)


def test_builtin_dir_points_at_shipped_files():
    assert (builtin_dir("personas") / "philosopher.yaml").is_file()
    assert (builtin_dir("scenarios") / "alignment-difficulty.yaml").is_file()


# --- fuzzing: any file either loads or fails with FileFormatError ----------------------------
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
persona_keys = st.sampled_from(
    ["id", "name", "role", "prompt", "model", "endpoint", "temperature", "max_tokens", "x"]
)
scenario_keys = st.sampled_from(
    [
        "id",
        "title",
        "question",
        "background",
        "source_seed",
        "moderator",
        "participants",
        "protocol",
        "rounds",
        "limits",
        "interjections",
        "extra",
    ]
)


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(data=st.dictionaries(persona_keys, yaml_values, max_size=9))
def test_fuzz_persona_files(tmp_path: Path, data: dict):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_file(path, Persona)
    except FileFormatError as exc:
        assert str(path) in str(exc)


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(data=st.dictionaries(scenario_keys, yaml_values, max_size=12))
def test_fuzz_scenario_files(tmp_path: Path, data: dict):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_file(path, Scenario)
    except FileFormatError as exc:
        assert str(path) in str(exc)


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(text=st.text(max_size=200))
def test_fuzz_raw_text(tmp_path: Path, text: str):
    path = tmp_path / "raw.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_file(path, Scenario)
    except FileFormatError:
        pass
