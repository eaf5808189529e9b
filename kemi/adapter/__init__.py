"""KEMI adapter: the only code that talks to Kamailio's KSR module."""
