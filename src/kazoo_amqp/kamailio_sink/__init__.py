"""The daemon's side of the Kamailio bridge: events, mod-init and async-query answers go to
Kamailio over HTTP (its xhttp bridge socket) instead of to Python worker processes."""
