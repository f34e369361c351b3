"""The gateway's route table and template.yaml describe the same API, handler for handler."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from gateway.routes import ROUTES

ROOT = Path(__file__).resolve().parents[2]


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, ...) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node)


_CfnLoader.add_multi_constructor("!", _any_tag)


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    return loaded


def api_events() -> set[tuple[str, str, str, str]]:
    found = set()
    for name, resource in template()["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        module = props["CodeUri"].strip("/").replace("/", ".") + "." + props["Handler"].rsplit(".", 1)[0]
        for event in props.get("Events", {}).values():
            if event["Type"] == "HttpApi":
                found.add((event["Properties"]["Method"].upper(), event["Properties"]["Path"], name, module))
    return found


def test_gateway_routes_match_the_template() -> None:
    assert {(r.method, r.path, r.function, r.module) for r in ROUTES} == api_events()


def test_every_handler_exposes_lambda_handler() -> None:
    for route in ROUTES:
        assert callable(importlib.import_module(route.module).lambda_handler)
