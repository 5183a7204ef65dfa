#!/usr/bin/env python3
"""Regenerates devices_crds.json: the CustomResourceDefinitions of devices.kubeedge.io (Device,
DeviceModel, DeviceStatus; versions v1alpha2 and v1beta1, as upstream serves them), reduced to the
API's facts: names, versions and structural schemas (types, required fields, enums, bounds),
without upstream's field descriptions.

usage: python3 devices_crds.py [upstream crds/devices directory]   (needs PyYAML)"""
import glob, json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../../shared/upstream/crds/devices")
import yaml


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


out = []
for path in sorted(glob.glob(os.path.join(src, "*.yaml"))):
    crd = yaml.safe_load(open(path))
    spec = crd["spec"]
    out.append({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd["metadata"]["name"]},
        "spec": strip({k: spec[k] for k in ("group", "names", "scope", "versions")}),
    })
order = {"devices.devices.kubeedge.io": 0, "devicemodels.devices.kubeedge.io": 1}
out.sort(key=lambda c: order.get(c["metadata"]["name"], 2))
with open(os.path.join(here, "devices_crds.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"), sort_keys=True)
    f.write("\n")
print(f"wrote {len(out)} CRDs from {src}")
