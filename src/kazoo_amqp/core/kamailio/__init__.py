"""Pure pieces of the Kamailio bridge (issue 6, ``docs/kamailio-bridge-design.md``).

* ``lexer``, ``preproc``, ``convert``, ``toml_writer``: ``kazoo-amqp kamailio-convert``;
* ``settings``: the ``[kamailio]`` table of the daemon config (the one parser of it);
* ``bridge_cfg``: the generated cfg includes and app_python3 script.

Nothing is imported here, so ``core.config`` can import ``settings`` without the converter.
"""
