"""Pure core of kemi-outbound: no KSR, no sockets, no clocks (RFC 5626, RFC 3263)."""
