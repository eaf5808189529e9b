"""cfg/outbound.yaml validation and flow-token key loading."""

from pathlib import Path

import pytest
import yaml

from outbound.config import DEFAULTS, Config, load_keys, parse_config
from outbound.errors import ConfigError
from outbound.tokens import parse_key

SOURCE = "/etc/kemi-outbound/outbound.yaml"
SHIPPED = Path(__file__).resolve().parents[2] / "cfg" / "outbound.yaml"
# 32 random bytes each (made once with secrets), as an operator writes them
KEY_A = "hex:ea1c59c87bf0b1b2087ebdc3d2d3d8bc6bea26e281d2dfbaf7e63a49cb6c0bfc"
KEY_B = "base64:bpLzlUSn4P6g9J1p6rLg+ndgyBUOEtXLM47kzoIzm0M="
KEY_C = "hex:680bbc1eb02cd297ec78719039a3184bd7d83adad877c9f72c64731830b7a1a1"
A, B, C = (parse_key(text) for text in (KEY_A, KEY_B, KEY_C))


def config(**sections) -> Config:
    return parse_config(sections, SOURCE)


def no_file(path: str) -> str:
    raise AssertionError(f"no file should be read, asked for {path}")


@pytest.mark.parametrize("document", [None, {}, {"edge": None}], ids=["none", "empty", "empty-section"])
def test_defaults_when_document_is_empty(document):
    cfg = parse_config(document, SOURCE)

    assert cfg == Config(
        source=SOURCE,
        keys_env="KO_FLOW_KEYS",
        keys_file="",
        registrar_uri="",
        force_outbound=False,
        location_table="location",
        default_expires=3600,
        flow_timer=25,
        fault_injection_header="",
    )


def test_file_values_replace_defaults():
    cfg = config(
        edge={"registrar": "sip:registrar.example.com:5070;transport=tcp", "force_outbound": True},
        registrar={"flow_timer": 0, "default_expires": 600, "location_table": "location_ob"},
        testing={"fault_injection_header": "X-Fault"},
    )

    assert cfg.registrar_uri == "sip:registrar.example.com:5070;transport=tcp"
    assert cfg.force_outbound is True
    assert (cfg.flow_timer, cfg.default_expires, cfg.location_table) == (0, 600, "location_ob")
    assert cfg.fault_injection_header == "x-fault"


def test_defaults_table_is_not_mutated_by_parsing():
    config(registrar={"flow_timer": 99})

    assert DEFAULTS["registrar"]["flow_timer"] == 25


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"edgy": {}}, "edgy"),
        ({"edge": {"registar": "sip:r"}}, "edge.registar"),
        ({"registrar": {"flowtimer": 25}}, "registrar.flowtimer"),
    ],
    ids=["unknown-section", "unknown-edge-key", "unknown-registrar-key"],
)
def test_unknown_names_are_errors_naming_key_and_file(document, key):
    with pytest.raises(ConfigError) as info:
        parse_config(document, SOURCE)

    assert key in str(info.value)
    assert SOURCE in str(info.value)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"registrar": {"flow_timer": "25"}}, "registrar.flow_timer"),
        ({"registrar": {"default_expires": True}}, "registrar.default_expires"),
        ({"edge": {"force_outbound": 1}}, "edge.force_outbound"),
        ({"edge": {"force_outbound": "yes"}}, "edge.force_outbound"),
        ({"edge": {"registrar": 5070}}, "edge.registrar"),
        ({"registrar": {"flow_timer": 2.5}}, "registrar.flow_timer"),
        ({"edge": ["registrar"]}, "edge"),
        (["edge"], "(top level)"),
    ],
    ids=["string-for-int", "bool-for-int", "int-for-bool", "string-for-bool", "int-for-string", "float-for-int",
         "section-not-mapping", "document-not-mapping"],
)
def test_wrong_types_are_errors_naming_key_and_file(document, key):
    with pytest.raises(ConfigError) as info:
        parse_config(document, SOURCE)

    assert key in str(info.value)
    assert SOURCE in str(info.value)


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"registrar": {"flow_timer": 1000}}, "registrar.flow_timer"),
        ({"registrar": {"flow_timer": -1}}, "registrar.flow_timer"),
        ({"registrar": {"default_expires": 0}}, "registrar.default_expires"),
        ({"registrar": {"location_table": "location; drop"}}, "registrar.location_table"),
        ({"edge": {"registrar": "registrar.example.com"}}, "edge.registrar"),
        ({"edge": {"registrar": "sip:registrar.example.com:99999"}}, "edge.registrar"),
        ({"edge": {"registrar": "http://registrar.example.com"}}, "edge.registrar"),
    ],
    ids=["flow-timer-1000", "flow-timer-negative", "expires-0", "bad-table", "registrar-no-scheme",
         "registrar-bad-port", "registrar-not-sip"],
)
def test_out_of_range_values_are_errors_naming_key_and_file(document, key):
    with pytest.raises(ConfigError) as info:
        parse_config(document, SOURCE)

    assert key in str(info.value)
    assert SOURCE in str(info.value)


def test_flow_timer_bounds_are_inclusive():
    assert config(registrar={"flow_timer": 0}).flow_timer == 0
    assert config(registrar={"flow_timer": 999}).flow_timer == 999


def test_overrides_are_coerced_and_win_over_the_file():
    document = {"edge": {"registrar": "sip:file.example.com", "force_outbound": False},
                "registrar": {"flow_timer": 25}}
    overrides = {"edge.registrar": "sip:define.example.com:5070", "registrar.flow_timer": " 90 ",
                 "edge.force_outbound": "yes"}

    cfg = parse_config(document, SOURCE, overrides)

    assert cfg.registrar_uri == "sip:define.example.com:5070"
    assert cfg.flow_timer == 90
    assert cfg.force_outbound is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("Off", False)],
)
def test_boolean_override_spellings(text, expected):
    cfg = parse_config({"edge": {"force_outbound": not expected}}, SOURCE, {"edge.force_outbound": text})

    assert cfg.force_outbound is expected


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"registrar.flow_timer": "often"}, "registrar.flow_timer"),
        ({"registrar.flow_timer": "--5"}, "registrar.flow_timer"),
        ({"registrar.flow_timer": "\u00b2"}, "registrar.flow_timer"),
        ({"registrar.flow_timer": "5000"}, "registrar.flow_timer"),
        ({"edge.force_outbound": "maybe"}, "edge.force_outbound"),
        ({"edge.registrar": "registrar.example.com"}, "edge.registrar"),
        ({"edge.registar": "sip:r"}, "edge.registar"),
        ({"registrar": "25"}, "registrar"),
    ],
    ids=["int-word", "int-double-minus", "int-superscript", "int-out-of-range", "bool-word", "bad-uri",
         "unknown-key", "no-dot"],
)
def test_bad_override_is_an_error_naming_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        parse_config({}, SOURCE, overrides)

    assert key in str(info.value)
    assert SOURCE in str(info.value)


def test_keys_from_env_comma_separated_first_key_first():
    cfg = config()

    keys = load_keys(cfg, {"KO_FLOW_KEYS": f" {KEY_A} , {KEY_B},"}, no_file)

    assert keys == [A, B]


def test_keys_env_variable_name_is_configurable():
    cfg = config(flow_tokens={"keys_env": "EDGE_KEYS"})

    assert load_keys(cfg, {"EDGE_KEYS": KEY_B, "KO_FLOW_KEYS": KEY_A}, no_file) == [B]


def test_keys_from_file_skip_comments_and_blank_lines():
    cfg = config(flow_tokens={"keys_file": "/run/secrets/flow-keys"})
    content = f"# new key first\n\n{KEY_C}\n   \n  # old key\n{KEY_A}\n"
    asked = []

    def read_text(path: str) -> str:
        asked.append(path)
        return content

    keys = load_keys(cfg, {}, read_text)

    assert asked == ["/run/secrets/flow-keys"]
    assert keys == [C, A]


def test_file_keys_come_before_env_keys():
    cfg = config(flow_tokens={"keys_file": "/keys"})

    assert load_keys(cfg, {"KO_FLOW_KEYS": KEY_B}, lambda path: KEY_A) == [A, B]


def test_unreadable_key_file_is_an_error_naming_the_key():
    cfg = config(flow_tokens={"keys_file": "/missing/keys"})

    def read_text(path: str) -> str:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(ConfigError) as info:
        load_keys(cfg, {"KO_FLOW_KEYS": KEY_A}, read_text)

    assert info.value.key == "flow_tokens.keys_file"
    assert "/missing/keys" in str(info.value)
    assert SOURCE in str(info.value)


@pytest.mark.parametrize(
    ("environ", "file_text", "key", "where", "problem"),
    [
        ({"KO_FLOW_KEYS": "correct horse battery staple, really long"}, None,
         "flow_tokens.keys_env", "entry 1 of $KO_FLOW_KEYS", "a passphrase is not a key"),
        ({"KO_FLOW_KEYS": f"{KEY_A},my-old-passphrase-0123456789-abcdef"}, None,
         "flow_tokens.keys_env", "entry 2 of $KO_FLOW_KEYS", "a passphrase is not a key"),
        ({"KO_FLOW_KEYS": "hex:00ff"}, None, "flow_tokens.keys_env", "entry 1 of $KO_FLOW_KEYS", "2 bytes"),
        ({"KO_FLOW_KEYS": "hex:not-hex"}, None, "flow_tokens.keys_env", "entry 1 of $KO_FLOW_KEYS", "not hex"),
        ({"KO_FLOW_KEYS": "hex:" + "5eed" * 16}, None,
         "flow_tokens.keys_env", "entry 1 of $KO_FLOW_KEYS", "not random"),
        ({}, "base64:!!!!", "flow_tokens.keys_file", "line 1 of /keys", "not base64"),
        ({}, f"# new\n{KEY_A}\n\nshort passphrase\n", "flow_tokens.keys_file", "line 4 of /keys",
         "a passphrase is not a key"),
        ({"KO_FLOW_KEYS": "a passphrase in the environment"}, KEY_A,
         "flow_tokens.keys_env", "entry 1 of $KO_FLOW_KEYS", "a passphrase is not a key"),
    ],
    ids=["passphrase-env", "passphrase-second-entry", "short-hex", "unreadable-hex", "pattern-hex",
         "unreadable-base64", "passphrase-in-file-line-4", "good-file-bad-env"],
)
def test_bad_key_is_an_error_naming_its_source_and_entry(environ, file_text, key, where, problem):
    cfg = config(flow_tokens={"keys_file": "/keys" if file_text is not None else ""})

    with pytest.raises(ConfigError) as info:
        load_keys(cfg, environ, lambda path: file_text)

    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: {key}: {where}: ")
    assert problem in message


def test_refused_passphrase_is_not_quoted_in_the_error():
    passphrase = "TopSecretWords-that-must-stay-out-of-logs"
    cfg = config()

    with pytest.raises(ConfigError) as info:
        load_keys(cfg, {"KO_FLOW_KEYS": passphrase}, no_file)

    assert "TopSecret" not in str(info.value)
    assert "secrets.token_hex(32)" in str(info.value), "the error says how to make a key"


def test_rotation_order_is_kept_new_key_first_old_keys_after():
    """The first key signs, every key verifies (outbound.tokens): the order of
    the file, then of the variable, is the order of the list."""
    cfg = config(flow_tokens={"keys_file": "/keys"})

    keys = load_keys(cfg, {"KO_FLOW_KEYS": f"{KEY_B}"}, lambda path: f"{KEY_C}\n# old\n{KEY_A}\n")

    assert keys == [C, A, B]


@pytest.mark.parametrize(
    ("environ", "file_text"),
    [({}, None), ({"KO_FLOW_KEYS": ""}, None), ({"KO_FLOW_KEYS": " , "}, None), ({}, "# only a comment\n\n")],
    ids=["nothing", "empty-env", "only-commas", "file-without-keys"],
)
def test_no_key_at_all_is_an_error(environ, file_text):
    """There is no built-in key: an edge without one must refuse to start."""
    cfg = config(flow_tokens={"keys_file": "/keys" if file_text is not None else ""})

    with pytest.raises(ConfigError) as info:
        load_keys(cfg, environ, lambda path: file_text)

    assert info.value.key == "flow_tokens"
    assert "flow_tokens" in str(info.value)
    assert SOURCE in str(info.value)


def test_shipped_config_parses():
    cfg = parse_config(yaml.safe_load(SHIPPED.read_text(encoding="utf-8")), str(SHIPPED))

    assert cfg.registrar_uri == "sip:127.0.0.1:5070"
    assert cfg.keys_env == "KO_FLOW_KEYS"
    assert (cfg.flow_timer, cfg.default_expires, cfg.location_table) == (25, 3600, "location")
    assert cfg.force_outbound is False
