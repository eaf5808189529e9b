"""Locating SIP servers by DNS (RFC 3263, RFC 2782).

``records`` holds the plain values that travel between the pure planner
(``plan``, ``srv``, ``failover``, ``peers``) and the dnspython adapter
(``dns``). Only ``dns`` touches the network; only ``adapter.locator_glue``
talks to Kamailio.
"""
