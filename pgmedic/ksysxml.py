"""The VM agent's POSTGRESconfig.xml: which data directory belongs to which instance owner.

Parsed with defusedxml (entity expansion and external entities refused). Commented-out
``POSTGRESinstance`` elements, as the sample ships them, are ignored like any comment.
"""

from __future__ import annotations

from collections import Counter
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from .errors import ConfigError
from .text import CONTROL_RE, shown

ROOT = "POSTGRESConfig"
MAX_XML_BYTES = 1 << 20
INSTANCE = "POSTGRESinstance"


def data_directory_from_xml(path: str, instance_id: str) -> str:
    """Return the <data_directory> of the <POSTGRESinstance id=INSTANCE_ID> in PATH, or raise ConfigError."""
    elements = _instance_elements(path)
    for element in elements:
        if element.get("id") == instance_id:
            return _data_directory(path, element)
    ids = [element.get("id", "") for element in elements]
    known = shown(", ".join(ids), 200) if ids else "none"
    raise ConfigError(
        path, f'<{INSTANCE} id="{instance_id}">', f"no such instance (instancename); ids in file: {known}"
    )


def instances_in_xml(path: str) -> dict[str, str]:
    """{id: data directory} of every <POSTGRESinstance> in PATH, or raise ConfigError."""
    return {element.get("id", ""): _data_directory(path, element) for element in _instance_elements(path)}


def _instance_elements(path: str) -> list[Element]:
    """The <POSTGRESinstance> elements of PATH, their ids unique; ConfigError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_XML_BYTES + 1)
        if len(data) > MAX_XML_BYTES:
            raise ConfigError(path, None, f"larger than {MAX_XML_BYTES >> 20} MiB: not a POSTGRESconfig.xml")
        root = SafeET.fromstring(data)
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
    except OSError as exc:
        raise ConfigError(path, "configfile", f"cannot read: {exc.strerror}") from None
    if root.tag != ROOT:
        raise ConfigError(path, f"<{root.tag[:80]}>", f"root element must be <{ROOT}>")
    elements = list(root.iter(INSTANCE))
    repeated = [(i, n) for i, n in Counter(e.get("id", "") for e in elements).items() if n > 1]
    if repeated:
        dup, times = repeated[0]
        raise ConfigError(path, f'<{INSTANCE} id="{dup[:80]}">', f"id given {times} times: ids must be unique")
    return elements


def _data_directory(path: str, element: Element) -> str:
    node = element.find("data_directory")
    value = (node.text or "").strip() if node is not None else ""
    where = f'<{INSTANCE} id="{element.get("id", "")}">/<data_directory>'
    if not value:
        raise ConfigError(path, where, "is empty; set the instance's data directory")
    if CONTROL_RE.search(value):
        raise ConfigError(path, where, f"contains a control character: {shown(value)}")
    if not value.startswith("/"):
        raise ConfigError(path, where, f"must be an absolute path, got {shown(value)}")
    return value
