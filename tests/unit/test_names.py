"""The names cfg/*.cfg and the Python share (adapter/names.py), checked both ways.

A name spelled differently on one side fails silently inside Kamailio (an
htable that is not declared reads as empty, a callback that is not there is
never called), so these tests read the cfg files themselves.
"""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import pytest

sys.modules.setdefault("KSR", types.ModuleType("KSR"))

from adapter import names  # noqa: E402
from adapter.edge_routes import EdgeRoutes  # noqa: E402
from adapter.registrar_routes import RegistrarRoutes  # noqa: E402
from adapter.single_routes import SingleRoutes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def cfg_text(name: str) -> str:
    """A cfg file with the files it includes (``include_file``) in place, as Kamailio reads it."""
    text = (ROOT / "cfg" / name).read_text()
    return re.sub(r'^include_file "([^"]+)"$', lambda m: cfg_text(m.group(1)), text, flags=re.M)


CFG = {role: cfg_text(f"{role}.cfg") for role in names.ALL_ROLES}
ROLE_CLASSES = {names.EDGE: EdgeRoutes, names.REGISTRAR: RegistrarRoutes, names.SINGLE: SingleRoutes}
# the tm callbacks each role arms (t_on_failure, t_on_branch, ...) and the cfg callbacks it declares
ROLE_CALLBACKS = {
    names.EDGE: (*names.TM_ROUTES[names.EDGE], names.XHTTP_CALLBACK, names.WS_EVENT_CALLBACK,
                 names.TCP_EVENT_CALLBACK, *names.NATIVE_ENTRIES),
    names.REGISTRAR: (*names.TM_ROUTES[names.REGISTRAR], names.XHTTP_CALLBACK, *names.NATIVE_ENTRIES),
    names.SINGLE: (*names.TM_ROUTES[names.SINGLE], names.TCP_EVENT_CALLBACK, names.SWEEP_CALLBACK,
                   names.XHTTP_CALLBACK, names.WS_EVENT_CALLBACK, *names.NATIVE_ENTRIES),
}


def code_lines(text: str) -> str:
    """The cfg without its comment lines (``#!`` preprocessor lines are kept)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#") or
                     line.lstrip().startswith("#!"))


def declared(text: str) -> dict[str, set[str]]:
    """What one cfg declares, by kind."""
    code = code_lines(text)
    return {
        "define": set(re.findall(r"^#!(?:define|trydef|trydefenvs?)\s+(\w+)", code, re.M)),
        "avp": set(re.findall(r"\$avp\((\w+)\)", code)),
        "htable": set(re.findall(r'modparam\("htable",\s*"htable",\s*"(\w+)=>', code)),
        "callback": set(re.findall(r'"(ksr_\w+)"', code)) | set(re.findall(r"route=(ksr_\w+)", code)),
        "timer": set(re.findall(r'modparam\("rtimer",\s*"timer",\s*"name=(\w+);', code)),
    }


@pytest.mark.parametrize("name", names.CFG_NAMES, ids=lambda n: n.name)
def test_every_shared_name_is_declared_by_the_cfgs_of_its_roles(name):
    for role in name.roles:
        assert name.name in declared(CFG[role])[name.kind], f"cfg/{role}.cfg does not declare {name.kind} {name.name}"


@pytest.mark.parametrize("role", names.ALL_ROLES)
def test_every_name_a_cfg_declares_for_the_python_is_in_names(role):
    """The other way round: an avp, htable, callback or ko_ timer of a cfg that
    adapter/names.py does not know is a name nobody on the Python side uses."""
    known = {(n.kind, n.name) for n in names.CFG_NAMES if role in n.roles}
    found = declared(CFG[role])
    for kind in ("avp", "htable", "callback", "timer"):
        for name in found[kind]:
            assert (kind, name) in known, f"cfg/{role}.cfg declares {kind} {name!r}, which adapter/names.py lacks"
    assert "FLB_OUTBOUND" in found["define"]


@pytest.mark.parametrize("role", names.ALL_ROLES)
def test_the_flag_value_is_the_same_on_both_sides(role):
    for name in names.CFG_NAMES:
        if name.value is not None and role in name.roles:
            found = re.search(rf"^#!define\s+{name.name}\s+(\S+)", CFG[role], re.M)
            assert found is not None and found.group(1) == name.value, f"cfg/{role}.cfg {name.name}"


@pytest.mark.parametrize("role", names.ALL_ROLES)
def test_every_callback_a_role_arms_is_a_method_of_its_routes(role):
    for callback in ROLE_CALLBACKS[role]:
        assert callable(getattr(ROLE_CLASSES[role], callback, None)), f"{role}: {callback} names no method"


def test_no_role_class_inherits_from_another():
    """Roles are built from parts (issue 12): the edge, registrar and single
    server share a prologue and parts, never each other's routes."""
    for cls in ROLE_CLASSES.values():
        for other in ROLE_CLASSES.values():
            if other is not cls:
                assert not issubclass(cls, other), f"{cls.__name__} inherits {other.__name__}"


def test_no_module_spells_a_shared_name_itself():
    """Outside adapter/names.py no adapter module writes a ko_ name, an AVP or
    an XAVP as a literal: it imports the constant."""
    for path in sorted((ROOT / "kemi" / "adapter").glob("*.py")):
        if path.name == "names.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
                assert not re.search(r"\$x?avp\(|\bko_\w+|\bksr_\w+_(outbound|flow|home|flows)\b|^ipban$", text), \
                    f"{path.name}: literal {text!r} belongs in adapter/names.py"


@pytest.mark.parametrize("role", names.ALL_ROLES)
def test_each_tm_route_of_a_cfg_calls_the_python_method_of_its_own_name(role):
    """Every role runs Kamailio's cfg engine: a tm route the Python arms by name
    (t_on_failure, t_on_reply, t_on_branch, t_on_branch_failure) is a cfg block,
    and a block that called another method than its own name would run the wrong rule."""
    code = code_lines(CFG[role])
    for name in names.TM_ROUTES[role]:
        block = re.search(rf"^(?:failure_route|onreply_route|branch_route|event_route\[tm:branch-failure:)"
                          rf"\[?{name}\]\s*\{{(.*?)^\}}", code, re.M | re.S)
        assert block is not None, f"cfg/{role}.cfg has no tm route {name}"
        assert re.findall(r'python_exec\("(ksr_\w+)"', block.group(1)) == [name], name


@pytest.mark.parametrize("role", names.ALL_ROLES)
def test_every_python_exec_of_a_cfg_names_a_method_of_its_routes(role):
    called = set(re.findall(r'python_exec\("(\w+)"', code_lines(CFG[role])))
    assert called >= set(names.NATIVE_ENTRIES)
    for name in called:
        assert callable(getattr(ROLE_CLASSES[role], name, None)), f"cfg/{role}.cfg calls {name}, which its routes lack"


@pytest.mark.parametrize("role", names.ALL_ROLES)
def test_no_cfg_hands_routing_to_a_kemi_engine(role):
    """With ``cfgengine "python"`` Kamailio would enter Python for every message
    and reply, and the routes object has no ksr_request_route for it."""
    assert not re.search(r"^\s*cfgengine\b", code_lines(CFG[role]), re.M)
    assert not re.search(r'modparam\("\w+",\s*"event_callback"', code_lines(CFG[role]))


def test_the_python_arms_the_branch_failure_route_by_its_event_route_name():
    """tm's t_on_branch_failure under a native cfg looks the name up among the
    event routes as it stands: the bare method name would add an empty route."""
    assert names.BRANCH_FAILURE_EVENT == f"tm:branch-failure:{names.BRANCH_FAILURE_ROUTE}"
    assert "t_on_branch_failure(BRANCH_FAILURE_EVENT)" in (ROOT / "kemi" / "adapter" / "home_proxy.py").read_text()
    for role in names.ALL_ROLES:
        if names.BRANCH_FAILURE_ROUTE in names.TM_ROUTES[role]:
            assert f"event_route[{names.BRANCH_FAILURE_EVENT}]" in code_lines(CFG[role]), role
