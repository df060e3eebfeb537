#!/usr/bin/env python3
"""Parse a network-config (version 2) file with cloud-init's own code, the
way the installed system does, and render it for ifupdown (ENI): fails on
anything cloud-init rejects or reads differently from what was meant."""
import sys

import yaml
from cloudinit.net import eni, network_state

with open(sys.argv[1]) as f:
    doc = yaml.safe_load(f)  # PyYAML: YAML 1.1, as cloud-init reads it
if doc.get("version") != 2:
    sys.exit("version is not 2")
want = set()
for kind in ("ethernets", "bonds", "vlans"):
    for name, cfg in (doc.get(kind) or {}).items():
        want.add(name)
        mac = (cfg.get("match") or {}).get("macaddress")
        if kind == "ethernets" and not isinstance(mac, str):
            sys.exit(f"{name}: macaddress read as {type(mac).__name__} {mac!r}")
ns = network_state.parse_net_config_data(doc, skip_broken=False)
got = {i["name"] for i in ns.iter_interfaces()}
if got != want:
    sys.exit(f"interfaces {sorted(got)}, want {sorted(want)}")
print(eni.network_state_to_eni(ns))
