"""Fork planning and flow failover at the authoritative proxy (RFC 5626 §7, §9.3; RFC 3261 §16.6)."""

import random

import pytest

from outbound.bindings import (
    Binding,
    EdgeAddresses,
    ForkPlan,
    InstanceQueue,
    PathHop,
    Target,
    Unusable,
    first_hop,
    normalize_instance,
    other_flows,
    plan_forks,
)

PHONE = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
LAPTOP = "urn:uuid:11111111-0000-1000-8000-000a95a0e128"
TABLET = "urn:uuid:22222222-0000-1000-8000-000a95a0e128"


def binding(ruid: str, instance: str = "", reg_id: int = 0, q: float = 1.0, modified: int = 0) -> Binding:
    return Binding(
        ruid=ruid,
        contact=f"sip:{ruid}@198.51.100.7",
        instance=instance,
        reg_id=reg_id,
        q=q,
        modified=modified,
        outbound=bool(instance and reg_id),
    )


def waves(plan: ForkPlan) -> list[list[str]]:
    """The plan as ruids of the first flow of each queue, wave by wave."""
    return [[queue.first.ruid for queue in wave] for wave in plan.waves]


def flows(queue: InstanceQueue) -> list[str]:
    return [flow.ruid for flow in queue.flows]


# --- plan_forks (RFC 5626 §7, RFC 3261 §16.6) --------------------------------------------------

def test_group_is_the_instance_or_else_the_ruid():
    """Flows of one device share the key; a binding without +sip.instance is alone (RFC 5626 §7)."""
    assert binding("r1", PHONE, 1).group == f"instance:{PHONE}"
    assert binding("r1").group == "ruid:r1"
    assert binding("r1", PHONE, 1).group == binding("r2", PHONE, 2).group
    assert binding("r1").group != binding("r2").group


def test_one_instance_with_three_flows_is_one_queue_most_recent_first_ties_by_reg_id():
    """RFC 5626 §7: one flow of the instance at a time; the others wait, newest first (§15)."""
    old = binding("old", PHONE, reg_id=1, modified=100)
    tie_high = binding("tie-high", PHONE, reg_id=3, modified=300)
    tie_low = binding("tie-low", PHONE, reg_id=2, modified=300)

    plan = plan_forks([old, tie_high, tie_low], max_parallel=4)

    assert len(plan.waves) == 1
    assert len(plan.waves[0]) == 1
    queue = plan.waves[0][0]
    assert queue.group == f"instance:{PHONE}"
    assert flows(queue) == ["tie-low", "tie-high", "old"]
    assert queue.first is tie_low


def test_never_two_flows_of_one_instance_in_a_wave():
    """RFC 5626 §7: the target set holds at most one flow per (AOR, instance)."""
    bindings = [
        binding("phone-1", PHONE, 1, modified=10),
        binding("laptop-1", LAPTOP, 1, modified=20),
        binding("phone-2", PHONE, 2, modified=30),
        binding("laptop-2", LAPTOP, 2, modified=5),
    ]

    plan = plan_forks(bindings, max_parallel=10)

    assert waves(plan) == [["phone-2", "laptop-1"]]
    assert [flows(queue) for queue in plan.waves[0]] == [["phone-2", "phone-1"], ["laptop-1", "laptop-2"]]


def test_bindings_without_instance_each_fork_in_parallel_with_instances_of_the_same_q():
    bindings = [
        binding("plain-1", modified=30),
        binding("phone-1", PHONE, 1, modified=20),
        binding("plain-2", modified=10),
    ]

    plan = plan_forks(bindings, max_parallel=10)

    assert waves(plan) == [["plain-1", "phone-1", "plain-2"]]
    assert [queue.group for queue in plan.waves[0]] == ["ruid:plain-1", f"instance:{PHONE}", "ruid:plain-2"]
    assert [len(queue.flows) for queue in plan.waves[0]] == [1, 1, 1]


@pytest.mark.parametrize(
    ("qs", "expected"),
    [
        ((1.0, 1.0, 0.5), [["a", "b"], ["c"]]),
        ((0.5, 1.0, 1.0), [["b", "c"], ["a"]]),
        ((0.1, 0.5, 1.0), [["c"], ["b"], ["a"]]),
        ((0.7, 0.7, 0.7), [["a", "b", "c"]]),
    ],
    ids=["two-high-one-low", "low-first-in-input", "three-levels", "all-equal-one-wave"],
)
def test_q_values_fork_in_parallel_within_and_serially_across_highest_first(qs, expected):
    """RFC 3261 §16.6: equal q in parallel, decreasing q in sequence."""
    bindings = [
        binding(ruid, instance, 1, q=q, modified=modified)
        for ruid, instance, q, modified in zip("abc", (PHONE, LAPTOP, TABLET), qs, (300, 200, 100), strict=True)
    ]

    assert waves(plan_forks(bindings, max_parallel=10)) == expected


def test_q_of_an_instance_is_the_q_of_its_most_recent_flow():
    bindings = [
        binding("phone-old", PHONE, 1, q=1.0, modified=100),
        binding("phone-new", PHONE, 2, q=0.5, modified=200),
        binding("laptop", LAPTOP, 1, q=0.8, modified=50),
    ]

    plan = plan_forks(bindings, max_parallel=10)

    assert waves(plan) == [["laptop"], ["phone-new"]]
    assert plan.waves[1][0].q == 0.5
    assert flows(plan.waves[1][0]) == ["phone-new", "phone-old"]


def test_equal_q_instances_most_recent_first_within_a_wave():
    bindings = [binding(f"i{n}", f"urn:uuid:{n}", 1, modified=n) for n in (5, 9, 1)]

    assert waves(plan_forks(bindings, max_parallel=10)) == [["i9", "i5", "i1"]]


@pytest.mark.parametrize(
    ("max_parallel", "sizes"),
    [(1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (3, [3, 2]), (5, [5]), (9, [5])],
    ids=["one", "two", "three", "exactly-five", "more-than-needed"],
)
def test_max_parallel_spills_a_q_group_into_further_waves(max_parallel, sizes):
    bindings = [binding(f"i{n}", f"urn:uuid:{n}", 1, modified=100 - n) for n in range(5)]

    plan = plan_forks(bindings, max_parallel=max_parallel)

    assert [len(wave) for wave in plan.waves] == sizes
    assert [ruid for wave in waves(plan) for ruid in wave] == ["i0", "i1", "i2", "i3", "i4"]


def test_spill_does_not_mix_q_values_in_a_wave():
    bindings = [binding("a", PHONE, 1, q=1.0), binding("b", LAPTOP, 1, q=0.5), binding("c", TABLET, 1, q=0.5)]

    assert waves(plan_forks(bindings, max_parallel=2)) == [["a"], ["b", "c"]]


@pytest.mark.parametrize(
    ("below_q", "expected"),
    [
        (1.0, [["b"], ["c"]]),
        (0.5, [["c"]]),
        (0.6, [["b"], ["c"]]),
        (0.1, []),
        (2.0, [["a"], ["b"], ["c"]]),
    ],
    ids=["below-top", "equal-q-excluded", "between-levels", "below-lowest-empty", "above-all"],
)
def test_below_q_keeps_only_lower_q(below_q, expected):
    """The next serial wave after the one with q = below_q (RFC 3261 §16.6)."""
    bindings = [binding("a", PHONE, 1, q=1.0), binding("b", LAPTOP, 1, q=0.5), binding("c", TABLET, 1, q=0.1)]

    assert waves(plan_forks(bindings, max_parallel=10, below_q=below_q)) == expected


def test_below_q_uses_the_instance_q_not_the_q_of_an_older_flow():
    bindings = [binding("phone-old", PHONE, 1, q=0.1, modified=1), binding("phone-new", PHONE, 2, q=1.0, modified=2)]

    assert plan_forks(bindings, max_parallel=10, below_q=0.5).empty


def test_skip_groups_drops_instances_and_plain_bindings_already_tried():
    bindings = [
        binding("phone-1", PHONE, 1, modified=3),
        binding("phone-2", PHONE, 2, modified=2),
        binding("plain", modified=1),
        binding("laptop", LAPTOP, 1, modified=0),
    ]

    plan = plan_forks(bindings, max_parallel=10, skip_groups=frozenset({f"instance:{PHONE}", "ruid:plain"}))

    assert waves(plan) == [["laptop"]]


@pytest.mark.parametrize(
    ("bindings", "skip"),
    [
        ([], frozenset()),
        ([binding("phone", PHONE, 1)], frozenset({f"instance:{PHONE}"})),
    ],
    ids=["no-bindings", "everything-skipped"],
)
def test_nothing_to_fork_is_an_empty_plan(bindings, skip):
    plan = plan_forks(bindings, max_parallel=4, skip_groups=skip)

    assert plan.empty
    assert plan.waves == ()


def test_non_empty_plan_is_not_empty():
    assert not plan_forks([binding("plain")], max_parallel=4).empty


def big_aor(count: int, seed: int) -> list[Binding]:
    rng = random.Random(seed)
    instances = [f"urn:uuid:{n:08d}-0000-1000-8000-000a95a0e128" for n in range(80)]
    out = []
    for n in range(count):
        instance = rng.choice(instances) if rng.random() < 0.8 else ""
        out.append(
            binding(
                f"ruid-{n}",
                instance,
                reg_id=rng.randint(1, 4) if instance else 0,
                q=rng.choice((1.0, 0.8, 0.5, 0.1)),
                modified=rng.randrange(1_000_000),
            )
        )
    return out


@pytest.mark.parametrize("max_parallel", [1, 3, 16], ids=["serial", "three", "sixteen"])
def test_large_aor_plan_invariants(max_parallel):
    bindings = big_aor(500, seed=7)

    plan = plan_forks(bindings, max_parallel=max_parallel)

    groups = [queue.group for wave in plan.waves for queue in wave]
    assert len(groups) == len(set(groups)), "an instance appears in two waves"
    assert len(groups) == len({b.group for b in bindings})
    queued = [flow.ruid for wave in plan.waves for queue in wave for flow in queue.flows]
    assert sorted(queued) == sorted(b.ruid for b in bindings)
    for wave in plan.waves:
        assert 1 <= len(wave) <= max_parallel
        assert len({queue.q for queue in wave}) == 1, "a wave mixes q values"
        for queue in wave:
            assert {flow.group for flow in queue.flows} == {queue.group}
            order = [(-flow.modified, flow.reg_id) for flow in queue.flows]
            assert order == sorted(order), "flows are not most recent first"
    wave_qs = [wave[0].q for wave in plan.waves]
    assert wave_qs == sorted(wave_qs, reverse=True)


def test_large_aor_waves_are_full_unless_q_changes():
    """A q-group spills only when it is larger than max_parallel; no wave is short for no reason."""
    plan = plan_forks(big_aor(500, seed=7), max_parallel=3)

    for wave, following in zip(plan.waves, plan.waves[1:], strict=False):
        if wave[0].q == following[0].q:
            assert len(wave) == 3


# --- other_flows (RFC 5626 §7, §9.3) -------------------------------------------------------------

PHONE_FLOWS = [
    binding("phone-1", PHONE, 1, modified=100),
    binding("phone-2", PHONE, 2, modified=300),
    binding("phone-3", PHONE, 3, modified=200),
]
LAPTOP_NEWEST = binding("laptop", LAPTOP, 1, modified=999)
PLAIN = binding("plain", modified=998)
AOR = [*PHONE_FLOWS, LAPTOP_NEWEST, PLAIN]


@pytest.mark.parametrize(
    ("failed", "expected"),
    [("phone-2", "phone-3"), ("phone-3", "phone-2"), ("phone-1", "phone-2")],
    ids=["newest-failed-next-newest", "middle-failed-newest", "oldest-failed-newest"],
)
def test_next_flow_is_the_most_recent_other_flow_of_the_instance(failed, expected):
    chosen = other_flows(AOR, f"instance:{PHONE}", failed)

    assert chosen
    assert chosen[0].ruid == expected
    assert len(chosen) == 2 and failed not in [b.ruid for b in chosen]


def test_next_flow_after_the_failed_one_is_removed():
    remaining = [b for b in AOR if b.ruid != "phone-2"]

    assert [b.ruid for b in other_flows(remaining, f"instance:{PHONE}", "phone-3")] == ["phone-1"]


@pytest.mark.parametrize(
    ("bindings", "group", "failed"),
    [
        ([PHONE_FLOWS[0], LAPTOP_NEWEST, PLAIN], f"instance:{PHONE}", "phone-1"),
        ([PLAIN, LAPTOP_NEWEST], "ruid:plain", "plain"),
        ([], f"instance:{PHONE}", "phone-1"),
        ([LAPTOP_NEWEST, PLAIN], f"instance:{PHONE}", "phone-1"),
    ],
    ids=["only-the-failed-flow-left", "plain-binding-has-no-other-flow", "no-bindings", "instance-gone"],
)
def test_next_flow_none_when_the_instance_has_no_other_flow(bindings, group, failed):
    assert other_flows(bindings, group, failed) == ()


def test_next_flow_never_picks_another_group():
    for failed in ("phone-1", "phone-2", "phone-3"):
        assert {b.group for b in other_flows(AOR, f"instance:{PHONE}", failed)} == {f"instance:{PHONE}"}


# --- normalize_instance (RFC 5626 §4.1) --------------------------------------------------------

@pytest.mark.parametrize(
    "raw",
    ['"<urn:uuid:ABC>"', "<urn:uuid:ABC>", "urn:uuid:abc", ' " <urn:uuid:Abc> " ', "<URN:UUID:abc>"],
    ids=["quoted-bracketed-upper", "bracketed", "bare", "spaces-around", "upper-scheme"],
)
def test_normalize_instance(raw):
    assert normalize_instance(raw) == "urn:uuid:abc"


def test_differently_spelled_instances_are_one_group():
    first = binding("r1", normalize_instance('"<urn:uuid:ABC>"'), 1)
    second = binding("r2", normalize_instance("urn:uuid:abc"), 2)

    plan = plan_forks([first, second], max_parallel=4)

    assert len(plan.waves) == 1
    assert len(plan.waves[0]) == 1
    assert first.group == second.group


@pytest.mark.parametrize(("raw", "normal"), [
    ("<URN:X-Test:Device-A>", "urn:x-test:Device-A"),  # the NSS keeps its case (RFC 8141 §3.1)
    ("<urn:x-test:a%2fb>", "urn:x-test:a%2Fb"),  # %-escapes compare in upper case
    ("<urn:UUID:F81D4FAE-7DEC-11D0-A765-00A0C91E6BF6>", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"),
    ("<sip:Device@Example.com>", "sip:Device@Example.com"),  # no URN: as written
])
def test_only_the_urns_caseless_parts_are_lowered(raw, normal):
    """RFC 5626 §4.1 / RFC 8141 §3.1 (issue 13 item 9): two devices whose
    instance ids differ only in the case of a namespace-specific string are two."""
    assert normalize_instance(raw) == normal


def test_different_instances_stay_different():
    assert normalize_instance("<urn:uuid:abc>") != normalize_instance("<urn:uuid:abd>")


def test_empty_instance_stays_empty():
    assert normalize_instance('""') == ""
    assert normalize_instance("") == ""


# ----- the addresses of an edge named in Path by hostname (RFC 3263 §4.3, B10) -----

DEAD, LIVE, THIRD = "sip:192.0.2.1:5060;transport=udp", "sip:192.0.2.2:5060;transport=udp", "sip:[2001:db8::3]:5060"


def test_edge_addresses_of_the_resolved_list_best_first():
    assert EdgeAddresses.of([DEAD, LIVE, THIRD]) == EdgeAddresses(DEAD, (LIVE, THIRD))
    assert EdgeAddresses.of([LIVE]) == EdgeAddresses(LIVE, ())
    assert EdgeAddresses.of([]) is None


@pytest.mark.parametrize("found", [[DEAD], [DEAD, LIVE], [DEAD, LIVE, THIRD]], ids=["one", "two", "three"])
def test_edge_addresses_all_gives_the_resolved_list_back(found):
    addresses = EdgeAddresses.of(found)
    assert addresses is not None
    assert EdgeAddresses.of(addresses.all) == addresses
    assert list(addresses.all) == found


@pytest.mark.parametrize(("status", "locally"), [(408, True), (503, True)], ids=["408-local", "503-local"])
def test_unreachable_edge_address_gives_every_address_in_order_then_none(status, locally):
    """RFC 3263 §4.3: every address of the edge before the flow counts as failed."""
    addresses = EdgeAddresses.of([DEAD, LIVE, THIRD])
    tried = []
    while addresses is not None:
        tried.append(addresses.current)
        addresses = addresses.after_failure(status, locally)
    assert tried == [DEAD, LIVE, THIRD]


@pytest.mark.parametrize(
    ("status", "locally"),
    [(430, False), (430, True), (408, False), (503, False), (486, False), (500, False), (486, True), (480, True)],
    ids=["430-received", "430-local", "408-received", "503-received", "486", "500", "486-local", "480-local"],
)
def test_an_answer_from_the_edge_never_tries_its_next_address(status, locally):
    """A 430 means the edge answered and the flow is gone there; any received
    reply is an answer: the same edge at another address cannot help."""
    assert EdgeAddresses.of([DEAD, LIVE]).after_failure(status, locally) is None


def test_the_last_address_has_no_next():
    assert EdgeAddresses.of([LIVE]).after_failure(408, True) is None
    assert EdgeAddresses(LIVE, ()).after_failure(503, True) is None


# ----- where a binding's requests go first (RFC 3327 §5, RFC 5626 §6-7) -----

TOKEN_PATH = "<sip:TOKEN@192.0.2.5:5070;transport=tcp;lr;ob>"
SECOND_PATH = "<sip:proxy.example.net;lr>"


def stored(path: str = "", contact: str = "sip:al@198.51.100.7:5060", received: str = "") -> Binding:
    return Binding("r1", contact, path=path, received=received)


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        (stored(received="sip:198.51.100.7:40000;transport=udp"),
         Target("sip:al@198.51.100.7:5060", "sip:198.51.100.7:40000;transport=udp")),
        (stored(), Target("sip:al@198.51.100.7:5060")),
        (stored(contact="sip:al@[2001:db8::7]:5060"), Target("sip:al@[2001:db8::7]:5060")),
    ],
    ids=["first-hop-goes-where-the-register-came-from", "ip-literal-contact-as-it-is", "ipv6-literal-contact"],
)
def test_first_hop_without_path(binding, expected):
    assert first_hop(binding) == expected


@pytest.mark.parametrize(
    ("binding", "log"),
    [
        (stored(contact="sip:al@phone.example.com"), "binding r1 names a host in its Contact and no address"),
        (stored(contact="tel:+123"), "binding r1 names a host in its Contact and no address"),
        (stored(path="<sip:[zz;lr>"), "binding r1 has an unusable Path ("),
        (stored(path=" , "), "binding r1 has an unusable Path ("),
        (stored(path="<sip:edge;lr"), "binding r1 has an unusable Path ("),
    ],
    ids=["no-lookup-of-a-name-a-device-wrote", "no-sip-uri", "garbage-path", "empty-path", "unterminated-path"],
)
def test_first_hop_unusable_is_skipped_and_the_binding_kept(binding, log):
    found = first_hop(binding)

    assert isinstance(found, Unusable) and not found.forget
    assert found.log.startswith(log) and "skipped" in found.log


def test_first_hop_of_a_path_is_its_first_entry_and_the_whole_path_the_route():
    hop = first_hop(stored(path=f"{TOKEN_PATH}, {SECOND_PATH}"))

    assert isinstance(hop, PathHop)
    assert (hop.first.user, hop.first.host, hop.first.port) == ("TOKEN", "192.0.2.5", 5070)
    assert hop.dst_uri == "sip:192.0.2.5:5070;transport=tcp"
    assert hop.route == f"{TOKEN_PATH}, {SECOND_PATH}"
    assert hop.route_after_first == SECOND_PATH


@pytest.mark.parametrize(
    ("path", "dst_uri"),
    [("<sip:edge.example.com;lr;ob>", "sip:edge.example.com"),
     ("<sip:t@edge.example.com:5080;lr>", "sip:edge.example.com:5080"),
     ("<sip:[2001:db8::5];transport=udp;lr>", "sip:[2001:db8::5];transport=udp")],
    ids=["hostname-no-port", "hostname-and-port", "ipv6-with-transport"],
)
def test_first_hop_dst_uri_is_host_port_and_transport_only(path, dst_uri):
    hop = first_hop(stored(path=path))

    assert isinstance(hop, PathHop) and hop.dst_uri == dst_uri and hop.route_after_first == ""
