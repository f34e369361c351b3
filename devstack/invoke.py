"""Invoke one function of template.yaml with an event file, in process, the way ``sam local invoke`` would
(which needs Docker): handler, code directory and environment are resolved from the template.

    python -m devstack.invoke DepositFunction events/deposit.json --token "$(python -m devstack token carol)"
                              [--parameter RedisUrl=redis://...]

The functions verify the event's bearer token: ``--token`` puts one in the event's Authorization header.
Without AUTH_ISSUER (or AUTH_MODE) in the environment or a template parameter, they trust the local issuer
that ``make run`` starts, as the rest of the local stack does; without REDIS_URL or ``--parameter RedisUrl=``,
they use the Redis ``make run`` uses (127.0.0.1:$DEV_REDIS_PORT, 6379).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

from devstack import local_secrets
from devstack.issuer import LOCAL_AUDIENCE, local_url
from devstack.settings import load_dev_settings
from shared.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NO_VALUE = object()


class Resolver:
    """Enough of CloudFormation's intrinsics for environment variables: Ref, Fn::If, Fn::Equals, Fn::Not,
    Fn::Join and Fn::Sub over parameters and the pseudo parameters (with the values `sam local` gives them:
    the stack is called "local")."""

    def __init__(self, template: dict[str, Any], overrides: dict[str, str]) -> None:
        self.parameters = {"AWS::StackName": "local", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012",
                           "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
        self.parameters.update({name: str(spec.get("Default", ""))
                                for name, spec in template.get("Parameters", {}).items()})
        self.parameters.update(overrides)
        self.conditions = template.get("Conditions", {})
        self.resources = set(template.get("Resources", {}))

    def value(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":  # a resource of the stack does not exist locally: the variable is left out
                return NO_VALUE if arg == "AWS::NoValue" or arg in self.resources else self.parameters.get(arg, arg)
            if key == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return self.value(arg[0]) == self.value(arg[1])
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::Join":
                items = self.value(arg[1])
                return str(arg[0]).join(str(i) for i in (items if isinstance(items, list) else [items]))
            if key == "Fn::Sub":
                text = arg if isinstance(arg, str) else arg[0]
                if any("${" + resource in text for resource in self.resources):  # as with Ref: none locally
                    return NO_VALUE
                for name, val in self.parameters.items():
                    text = text.replace("${" + name + "}", val)
                return text
        if isinstance(node, list):
            return [self.value(n) for n in node]
        return node

    def condition(self, name: str) -> bool:
        return bool(self.value(self.conditions[name]))


def resolve(function: str, template_path: Path, overrides: dict[str, str]) -> tuple[Path, str, dict[str, str]]:
    template, errors = decode(str(template_path))
    if template is None:
        raise SystemExit(f"cannot read {template_path}: {errors}")
    resource = template["Resources"].get(function)
    if resource is None or resource["Type"] != "AWS::Serverless::Function":
        names = [n for n, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"]
        raise SystemExit(f"{function} is not a function of {template_path.name}; try one of {', '.join(names)}")
    resolver = Resolver(template, overrides)
    props = {**template.get("Globals", {}).get("Function", {}), **resource["Properties"]}
    variables: dict[str, Any] = {}
    for scope in (template.get("Globals", {}).get("Function", {}), resource["Properties"]):
        variables.update(scope.get("Environment", {}).get("Variables", {}))
    env = {k: str(v) for k, v in ((k, resolver.value(v)) for k, v in variables.items()) if v is not NO_VALUE}
    return template_path.parent / props["CodeUri"], props["Handler"], env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.invoke", description=__doc__.splitlines()[0])
    parser.add_argument("function", help="logical id in template.yaml, e.g. DepositFunction")
    parser.add_argument("event", type=Path, help="API Gateway event file, e.g. events/deposit.json")
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="template parameter override (repeatable)")
    parser.add_argument("--token", help="bearer token to put in the event's Authorization header")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.parameter):
        parser.error("--parameter takes NAME=VALUE")
    overrides = dict(item.split("=", 1) for item in args.parameter)
    try:
        event = json.loads(args.event.read_text())
    except OSError as exc:
        parser.error(f"cannot read the event file {args.event}: {exc.strerror}")
    except ValueError as exc:
        parser.error(f"the event file {args.event} is not JSON: {exc}")
    if args.token is not None:
        for key in ("headers", "multiValueHeaders"):
            event[key] = {k: v for k, v in (event.get(key) or {}).items() if k.lower() != "authorization"}
        event["headers"]["Authorization"] = f"Bearer {args.token}"
        event["multiValueHeaders"]["Authorization"] = [f"Bearer {args.token}"]
    try:
        dev = load_dev_settings()
    except ConfigError as exc:
        parser.error(str(exc))
    if "RedisUrl" not in overrides and not os.environ.get("REDIS_URL"):
        # The Redis `make run` uses, not the template's placeholder default: one local stack, one store.
        overrides["RedisUrl"] = f"redis://127.0.0.1:{dev.redis_port}/0"
    code_dir, handler, env = resolve(args.function, args.template, overrides)
    # The shell's environment wins, as `sam local invoke --env-vars` would let it.
    os.environ.update({k: v for k, v in env.items() if k not in os.environ and v != ""})
    if not (os.environ.get("AUTH_ISSUER") or os.environ.get("AUTH_MODE")):
        os.environ.update({"AUTH_ISSUER": local_url(dev.issuer_port), "AUTH_AUDIENCE": LOCAL_AUDIENCE})
    local_secrets.provide(os.environ, dev.state_dir)  # the key `make run` signs with, as the stack's secret
    module_name, function_name = handler.rsplit(".", 1)
    spec = importlib.util.spec_from_file_location(module_name, code_dir / f"{module_name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(code_dir))
    spec.loader.exec_module(module)
    # What the function writes (its log, its EMF metric lines) goes to stderr, as `sam local invoke` keeps it
    # apart from the response: stdout carries the response alone, for a pipe to read.
    with contextlib.redirect_stdout(sys.stderr):
        response = getattr(module, function_name)(event, None)
    print(json.dumps(response, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
