"""The SAM template as written, and its offline translation to plain CloudFormation."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3.session
from samtranslator.parser.parser import Parser
from samtranslator.public.exceptions import InvalidDocumentException
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

from rowcall_local.aws_clients import ACCESS_KEY_ID, SECRET_ACCESS_KEY

FUNCTION = "AWS::Serverless::Function"
LAYER = "AWS::Serverless::LayerVersion"
_ARTIFACT_PROPERTY = {FUNCTION: "CodeUri", LAYER: "ContentUri"}

Json = dict[str, Any]


class TemplateError(Exception):
    """The template cannot be run locally as written."""


@dataclass(frozen=True)
class SamTemplate:
    """A parsed SAM template; local paths in it are relative to its folder."""

    path: Path
    document: Json

    @classmethod
    def load(cls, path: Path) -> SamTemplate:
        document = yaml_parse(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
            raise TemplateError(f"{path}: not a SAM template (no Resources)")
        return cls(path.resolve(), document)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resources(self, resource_type: str | None = None) -> dict[str, Json]:
        found: dict[str, Json] = self.document["Resources"]
        return {k: v for k, v in found.items() if resource_type in (None, v.get("Type"))}

    def properties(self, logical_id: str) -> Json:
        props: Json = self.document["Resources"][logical_id].get("Properties") or {}
        return props

    def function_property(self, logical_id: str, name: str, default: Any = None) -> Any:
        """A function's property, falling back to `Globals.Function` as SAM does."""
        props = self.properties(logical_id)
        if name in props:
            return props[name]
        return self.globals("Function").get(name, default)

    def globals(self, section: str) -> Json:
        found: Json = (self.document.get("Globals") or {}).get(section) or {}
        return found

    def parameter_default(self, name: str) -> str | None:
        declared = (self.document.get("Parameters") or {}).get(name)
        if declared is None or "Default" not in declared:
            return None
        return str(declared["Default"])

    def declares_parameter(self, name: str) -> bool:
        return name in (self.document.get("Parameters") or {})

    def local_artifacts(self) -> dict[str, Path]:
        """Logical id -> local folder of every function's code and every layer's content."""
        found: dict[str, Path] = {}
        for logical_id, resource in self.resources().items():
            prop = _ARTIFACT_PROPERTY.get(resource.get("Type", ""))
            if prop is None:
                continue
            uri = (
                self.function_property(logical_id, prop)
                if resource["Type"] == FUNCTION
                else self.properties(logical_id).get(prop)
            )
            if isinstance(uri, str) and "://" not in uri:
                found[logical_id] = (self.root / uri).resolve()
        return found

    def code_dir(self, function_id: str) -> Path:
        try:
            return self.local_artifacts()[function_id]
        except KeyError:
            raise TemplateError(f"{function_id}: CodeUri is not a local folder") from None

    def layer_dirs(self, function_id: str) -> list[Path]:
        """Local content folders of the function's layers (Globals' first, as SAM merges them)."""
        refs = [
            *(self.globals("Function").get("Layers") or []),
            *(self.properties(function_id).get("Layers") or []),
        ]
        artifacts = self.local_artifacts()
        dirs: list[Path] = []
        for ref in refs:
            target = ref.get("Ref") if isinstance(ref, dict) else None
            if isinstance(target, str) and target in artifacts:
                dirs.append(artifacts[target])
        return dirs

    def translate(self, code_bucket: str, region: str) -> Json:
        """Plain CloudFormation, local artifact folders swapped for `s3://code_bucket/<LogicalId>`."""
        sam = copy.deepcopy(self.document)
        for logical_id in self.local_artifacts():
            resource = sam["Resources"][logical_id]
            prop = _ARTIFACT_PROPERTY[resource["Type"]]
            resource.setdefault("Properties", {})[prop] = f"s3://{code_bucket}/{logical_id}"
        session = boto3.session.Session(ACCESS_KEY_ID, SECRET_ACCESS_KEY, region_name=region)
        translator = Translator(managed_policy_map={}, sam_parser=Parser(), boto_session=session)
        try:
            cfn: Json = translator.translate(sam_template=sam, parameter_values={})
        except InvalidDocumentException as e:
            causes = "; ".join(str(c.message) for c in e.causes)
            raise TemplateError(f"{self.path}: {causes}") from e
        return cfn
