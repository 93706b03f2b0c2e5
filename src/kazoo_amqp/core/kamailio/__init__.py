"""Pure pieces of the Kamailio bridge (issue 6): the ``[kamailio]`` config table and the
generated cfg includes. See ``docs/kamailio-bridge-design.md``."""
