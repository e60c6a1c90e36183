"""The VM agent's POSTGRESconfig.xml: which data directory belongs to which instance owner.

Parsed with defusedxml (entity expansion and external entities refused). Commented-out
``POSTGRESinstance`` elements, as the sample ships them, are ignored like any comment.
"""

from __future__ import annotations

from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import ConfigError

ROOT = "POSTGRESConfig"
INSTANCE = "POSTGRESinstance"


def data_directory_from_xml(path: str, instance_id: str) -> str:
    """Return the <data_directory> of the <POSTGRESinstance id=INSTANCE_ID> in PATH, or raise ConfigError."""
    try:
        tree = SafeET.parse(path)
    except FileNotFoundError:
        raise ConfigError(path, "configfile", "file does not exist") from None
    except PermissionError:
        raise ConfigError(path, "configfile", "file is not readable") from None
    except IsADirectoryError:
        raise ConfigError(path, "configfile", "is a directory, expected an XML file") from None
    except ParseError as exc:
        raise ConfigError(path, None, f"malformed XML: {exc}") from None
    except DefusedXmlException as exc:
        raise ConfigError(path, None, f"refused unsafe XML: {exc}") from None
    root = tree.getroot()
    if root.tag != ROOT:
        raise ConfigError(path, f"<{root.tag}>", f"root element must be <{ROOT}>")
    ids = []
    for element in root.iter(INSTANCE):
        ids.append(element.get("id", ""))
        if element.get("id") != instance_id:
            continue
        node = element.find("data_directory")
        value = (node.text or "").strip() if node is not None else ""
        where = f'<{INSTANCE} id="{instance_id}">/<data_directory>'
        if not value:
            raise ConfigError(path, where, "is empty; set the instance's data directory")
        if not value.startswith("/"):
            raise ConfigError(path, where, f"must be an absolute path, got {value!r}")
        return value
    known = ", ".join(repr(i) for i in ids) or "none"
    raise ConfigError(
        path, f'<{INSTANCE} id="{instance_id}">', f"no such instance (instancename); ids in file: {known}"
    )
