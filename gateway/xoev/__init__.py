"""XÖV: offline schema registry, hardened XML parsing, message identification, XML signatures.

Public entry points (see docs/xoev.md):

* :func:`gateway.xoev.config.parse_xoev_config` -> :class:`~gateway.xoev.config.XoevConfig`
* :class:`gateway.xoev.registry.SchemaRegistry` (``SchemaRegistry.open(config)``)
* :class:`gateway.xoev.validator.XoevValidator` (async, worker processes) and the synchronous
  :func:`gateway.xoev.decode.validate_xml` / :func:`gateway.xoev.decode.decode_to_dict`
* :func:`gateway.xoev.parsing.parse_xml` raising :class:`~gateway.xoev.parsing.XmlRejected`
* :func:`gateway.xoev.understanding.identify` and the built-in standards plugin
  :mod:`gateway.xoev.standards`
* :func:`gateway.xoev.signatures.verify_policy` / :func:`gateway.xoev.signatures.sign_xml`
"""
