"""The remediator's HTTP API, described as OpenAPI 3.0 (served at /api/v1/openapi.json)."""

from __future__ import annotations

from typing import Any

from pgmedic import __version__

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_JSON_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document() -> dict[str, Any]:
    alert = {
        "type": "object",
        "required": ["status", "labels", "startsAt"],
        "properties": {
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "startsAt": {"type": "string", "format": "date-time"},
            "endsAt": {"type": "string", "format": "date-time"},
            "generatorURL": {"type": "string"},
            "fingerprint": {"type": "string", "minLength": 1, "maxLength": 128},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "pgmedic remediator", "version": __version__},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
            "schemas": {"Error": _ERROR, "Alert": alert},
        },
        "paths": {
            "/api/v1/alerts": {
                "post": {
                    "summary": "Alertmanager webhook (payload version 4)",
                    "security": [{"bearer": []}, {"basic": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["version", "alerts"],
                                    "properties": {
                                        "version": {"type": "string", "enum": ["4"]},
                                        "status": {"type": "string"},
                                        "receiver": {"type": "string"},
                                        "groupKey": {"type": "string"},
                                        "externalURL": {"type": "string"},
                                        "alerts": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {"description": "Every alert's decision is durably journaled"},
                        "400": {"description": "Not JSON, wrong version or wrong shape", **_JSON_ERROR},
                        "401": {"description": "Missing or wrong credentials", **_JSON_ERROR},
                        "413": {"description": "Body over 1 MiB", **_JSON_ERROR},
                    },
                }
            },
            "/api/v1/status": {
                "get": {
                    "summary": "Each instance: state, budget left, last action",
                    "responses": {"200": {"description": "Status"}},
                }
            },
            "/api/v1/events": {
                "get": {
                    "summary": "The journal's events after an id",
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                        },
                        {"name": "instance", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                    ],
                    "responses": {
                        "200": {"description": "Events"},
                        "400": {"description": "Bad parameter", **_JSON_ERROR},
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness: the journal answers", "responses": {"200": {"description": "OK"}}}
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Metrics"}}}},
        },
    }
