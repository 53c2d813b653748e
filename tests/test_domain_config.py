"""User configuration: group types from YAML/JSON files and from a Python module (issue_platform/config.py)."""
import json
import pickle
import sys
from datetime import timedelta

import pytest

import issue_platform  # noqa: F401  (registers the built-in types)
from issue_platform.config import ConfigError, load_config
from issue_platform.enums import GroupCategory, PriorityLevel
from issue_platform.grouptype import NoiseConfig, registry


@pytest.fixture(autouse=True)
def scoped_registry():
    with registry.scoped():
        yield


def entry(**overrides):
    spec = {"type_id": 900001, "slug": "cron_job_late", "description": "Cron job ran late", "category": "CRON"}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not ...}  # `...` drops a field


def write(tmp_path, document, name="types.yaml"):
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(document))
    else:
        import yaml

        path.write_text(yaml.safe_dump(document) if not isinstance(document, str) else document)
    return str(path)


def attrs_of(tmp_path, name="types.yaml", **overrides):
    config = load_config(write(tmp_path, {"group_types": [entry(**overrides)]}, name))
    ((_, attrs),) = config.group_types
    return attrs


def test_yaml_file_as_in_the_docstring(tmp_path):
    path = write(tmp_path, """\
group_types:
  - type_id: 900001
    slug: cron_job_late
    description: Cron job ran late
    category: CRON            # a GroupCategory name or number
    released: true
    default_priority: high    # low/medium/high or 25/50/75
    noise_config: {ignore_limit: 2, expiry_time: 90m}
""")
    config = load_config(path)
    assert registry.find(900001) is None  # loading registers nothing
    config.install()
    t = registry.get_by_type_id(900001)
    assert (t.slug, t.description, t.category, t.released) == ("cron_job_late", "Cron job ran late", 4, True)
    assert t.default_priority == PriorityLevel.HIGH
    assert t.noise_config == NoiseConfig(2, timedelta(minutes=90))
    assert registry.get_by_slug("cron_job_late") is t


def test_json_file(tmp_path):
    spec = entry(category=7, default_priority=25, noise_config={"ignore_limit": 4, "expiry_time": 3600},
                 enable_auto_resolve=False, enable_escalation_detection=False)
    load_config(write(tmp_path, {"group_types": [spec]}, "types.json")).install()
    t = registry.get_by_type_id(900001)
    assert t.category == GroupCategory.UPTIME
    assert t.default_priority == PriorityLevel.LOW
    assert t.noise_config == NoiseConfig(4, timedelta(hours=1))
    assert (t.enable_auto_resolve, t.enable_escalation_detection, t.released) == (False, False, False)


@pytest.mark.parametrize("value, expected", [
    ("CRON", 4), ("cron", 4), ("Feedback", 6), (4, 4), (18, 18), ("instrumentation", 18),
])
def test_category_by_name_or_number(tmp_path, value, expected):
    assert attrs_of(tmp_path, category=value)["category"] == expected


def test_category_v2(tmp_path):
    assert attrs_of(tmp_path, category="CRON", category_v2="outage")["category_v2"] == GroupCategory.OUTAGE


@pytest.mark.parametrize("value, expected", [
    ("low", 25), ("MEDIUM", 50), ("high", 75), (25, 25), (50, 50), (75, 75),
])
def test_default_priority_by_name_or_number(tmp_path, value, expected):
    assert attrs_of(tmp_path, default_priority=value)["default_priority"] == expected


def test_default_priority_defaults_to_medium(tmp_path):
    load_config(write(tmp_path, {"group_types": [entry()]})).install()
    assert registry.get_by_type_id(900001).default_priority == PriorityLevel.MEDIUM


@pytest.mark.parametrize("expiry, expected", [
    (90, timedelta(seconds=90)), (3600.5, timedelta(seconds=3600.5)), ("120", timedelta(seconds=120)),
    ("45s", timedelta(seconds=45)), ("90m", timedelta(minutes=90)), ("24h", timedelta(hours=24)),
    ("1.5h", timedelta(minutes=90)), ("2d", timedelta(days=2)), ("1w", timedelta(weeks=1)),
    (None, timedelta(hours=24)),
])
def test_noise_config_expiry(tmp_path, expiry, expected):
    noise = attrs_of(tmp_path, noise_config={"ignore_limit": 5, "expiry_time": expiry})["noise_config"]
    assert noise == NoiseConfig(5, expected)


def test_noise_config_fields_default_to_sentry_defaults(tmp_path):
    assert attrs_of(tmp_path, noise_config={})["noise_config"] == NoiseConfig()
    assert attrs_of(tmp_path, noise_config={"expiry_time": "1h"})["noise_config"].ignore_limit == 3


@pytest.mark.parametrize("noise", [None, ...])
def test_noise_config_null_or_absent_means_none(tmp_path, noise):
    assert attrs_of(tmp_path, noise_config=noise)["noise_config"] is None


# --- errors: each names the file, the entry and the field ----------------------------------------

@pytest.mark.parametrize("overrides, field", [
    ({"colour": "red"}, "colour"),
    ({"noise_config": {"ignore_limit": 2, "window": "1h"}}, "window"),
    ({"category": "NOT_A_CATEGORY"}, "category"),
    ({"category": 99}, "category"),
    ({"category_v2": "bogus"}, "category_v2"),
    ({"default_priority": "urgent"}, "default_priority"),
    ({"default_priority": 40}, "default_priority"),
    ({"noise_config": {"ignore_limit": -1}}, "ignore_limit"),
    ({"noise_config": {"ignore_limit": "3"}}, "ignore_limit"),
    ({"noise_config": [3, "24h"]}, "noise_config"),
    ({"type_id": ...}, "type_id"),
    ({"slug": ...}, "slug"),
    ({"description": ...}, "description"),
    ({"category": ...}, "category"),
])
def test_bad_entry_names_file_entry_and_field(tmp_path, overrides, field):
    spec = entry(**overrides)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"group_types": [entry(type_id=900002, slug="other"), spec]}))
    message = str(err.value)
    assert "types.yaml" in message and "group_types[1]" in message and field in message


@pytest.mark.parametrize("expiry", ["soon", "24x", "-5", "0", 0, -3, "h", "", True, [1]])
def test_bad_duration(tmp_path, expiry):
    with pytest.raises(ConfigError, match=r"types\.yaml: group_types\[0\]\.noise_config\.expiry_time"):
        load_config(write(tmp_path, {"group_types": [entry(noise_config={"expiry_time": expiry})]}))


def test_unknown_section(tmp_path):
    path = write(tmp_path, {"group_types": [], "pipelines": {}})
    with pytest.raises(ConfigError, match=r"types\.yaml: unknown section\(s\) pipelines"):
        load_config(path)


@pytest.mark.parametrize("document", ["- a\n- b\n", "group_types: {a: 1}\n", "group_types:\n  - just a string\n"])
def test_malformed_documents(tmp_path, document):
    with pytest.raises(ConfigError, match=r"types\.yaml"):
        load_config(write(tmp_path, document))


def test_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "types.json"
    bad.write_text('{"group_types": [')
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.yaml"))


def test_empty_file_and_no_file_give_no_types(tmp_path):
    assert load_config(write(tmp_path, "")).group_types == ()
    assert load_config().group_types == ()


def test_duplicate_slug_with_a_builtin_is_refused_at_install(tmp_path):
    config = load_config(write(tmp_path, {"group_types": [entry(slug="performance_n_plus_one_db_queries")]}))
    with pytest.raises(ConfigError, match=r"types\.yaml: group_types\[0\]: .*slug 'performance_n_plus_one_db_queries'"):
        config.install()
    assert registry.find(900001) is None


def test_duplicate_type_id_with_a_builtin_is_refused_at_install(tmp_path):
    config = load_config(write(tmp_path, {"group_types": [entry(type_id=6001)]}))
    with pytest.raises(ConfigError, match=r"group_types\[0\]: .*type_id 6001"):
        config.install()
    assert registry.get_by_slug("cron_job_late") is None


def test_install_is_idempotent(tmp_path):
    config = load_config(write(tmp_path, {"group_types": [
        entry(noise_config={"ignore_limit": 2, "expiry_time": "1h"}),
        entry(type_id=900002, slug="cron_job_missed"),
    ]}))
    config.install()
    config.install()
    pickle.loads(pickle.dumps(config)).install()  # as a worker would after unpickling
    assert {900001, 900002} <= registry.get_all_group_type_ids()
    assert registry.get_by_type_id(900001).noise_config == NoiseConfig(2, timedelta(hours=1))


def test_install_registers_nothing_outside_the_scope(tmp_path):
    with registry.scoped():
        load_config(write(tmp_path, {"group_types": [entry()]})).install()
        assert registry.find(900001) is not None
    assert registry.find(900001) is None


# --- --group_types_module -----------------------------------------------------------------------

@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(name, source):
        (tmp_path / f"{name}.py").write_text(source)
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


MODULE_SOURCE = """\
from dataclasses import dataclass
from datetime import timedelta
from issue_platform.enums import GroupCategory
from issue_platform.grouptype import GroupType, NoiseConfig

@dataclass(frozen=True)
class QueueBacklog(GroupType):
    type_id = 900100
    slug = "queue_backlog"
    description = "Queue backlog"
    category = GroupCategory.PERFORMANCE.value
    noise_config = NoiseConfig(5, timedelta(days=2))
"""


def test_group_types_module_is_imported_and_registers_its_types(module_dir):
    name = module_dir("my_domain_types_ok", MODULE_SOURCE)
    config = load_config(modules=(name,))
    assert registry.find(900100) is None
    config.install()
    t = registry.get_by_type_id(900100)
    assert t.slug == "queue_backlog" and t.noise_config == NoiseConfig(5, timedelta(days=2))
    config.install()  # idempotent: the module is imported once
    assert registry.get_by_slug("queue_backlog") is t


@pytest.mark.parametrize("source", [None, "raise RuntimeError('boom')\n", "this is not python\n",
                                    MODULE_SOURCE.replace("900100", "1006")])
def test_unimportable_group_types_module(module_dir, source):
    name = "my_domain_types_bad" if source is None else module_dir("my_domain_types_bad", source)
    with pytest.raises(ConfigError, match=f"--group_types_module {name}: cannot import it"):
        load_config(modules=(name,)).install()
