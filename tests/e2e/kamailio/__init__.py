"""Kamailio 5.6 presence server + SIPp watchers for the e2e tests (see harness.py)."""
