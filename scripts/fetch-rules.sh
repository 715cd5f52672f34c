#!/usr/bin/env bash
# Fetches the enrichment rules Footfall embeds at build time, from npm, pinned:
#   ua-parser-builtins  the uap-core user-agent rules (browser, OS, device) as the
#                       ua-parser project publishes them on PyPI, Apache-2.0; npm's
#                       uap-core package (0.18.0) lags the rules by two years
#   crawler-user-agents bot patterns, MIT (npm)
#   referer-parser      known referrer hosts by medium, Apache-2.0 (PyPI, sdist)
# They land in target/rules/ (not committed). crates/footfall-enrich/build.rs reads them.
# Idempotent: does nothing when the pinned versions are already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/target/rules"
want="ua-parser-builtins==202610 crawler-user-agents@1.60.0 referer-parser==0.4.1"
if [ -f "$dest/VERSIONS" ] && [ "$(cat "$dest/VERSIONS")" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-rules: npm is required (Node 20)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent crawler-user-agents@1.60.0 >/dev/null 2>"$tmp/npm.log" || { cat "$tmp/npm.log" >&2; exit 1; })
mkdir -p "$dest"
tar -xzf "$tmp"/crawler-user-agents-*.tgz -C "$tmp"
cp "$tmp/package/crawler-user-agents.json" "$dest/crawler-user-agents.json"
cp "$tmp/package/LICENSE" "$dest/LICENSE.crawler-user-agents" 2>/dev/null || true
rm -rf "$tmp/package"
command -v pip3 >/dev/null || { echo "fetch-rules: pip3 is required (Python 3)" >&2; exit 1; }
pip3 download -q --no-deps --no-binary :all: -d "$tmp" referer-parser==0.4.1
pip3 download -q --no-deps --only-binary :all: -d "$tmp" ua-parser-builtins==202610
python3 - "$tmp"/ua_parser_builtins-202610-*.whl "$dest/regexes.yaml" <<'PY'
# The wheel holds the uap-core rules as Python constructor calls; record their arguments
# and write them back in regexes.yaml's field names (as JSON, which is YAML).
import json, sys, types, zipfile
src = zipfile.ZipFile(sys.argv[1]).read("ua_parser_builtins/regexes.py").decode()
fields = {
    "UserAgentParser": ["regex", "family_replacement", "v1_replacement", "v2_replacement"],
    "OSParser": ["regex", "os_replacement", "os_v1_replacement", "os_v2_replacement",
                 "os_v3_replacement", "os_v4_replacement"],
    "DeviceParser": ["regex", "regex_flag", "device_replacement", "brand_replacement",
                     "model_replacement"],
}
mod = types.ModuleType("ua_parser.user_agent_parser")
for name, names in fields.items():
    def make(names=names):
        return lambda *a, **k: {n: v for n, v in {**dict(zip(names, a)), **k}.items() if v is not None}
    setattr(mod, name, make())
sys.modules["ua_parser"] = types.ModuleType("ua_parser")
sys.modules["ua_parser.user_agent_parser"] = mod
ns = {}
exec(src, ns)
out = {"user_agent_parsers": ns["USER_AGENT_PARSERS"], "os_parsers": ns["OS_PARSERS"],
       "device_parsers": ns["DEVICE_PARSERS"]}
json.dump(out, open(sys.argv[2], "w"), indent=0)
PY
tar -xzf "$tmp"/referer-parser-0.4.1.tar.gz -C "$tmp"
cp "$tmp"/referer-parser-0.4.1/referer_parser/data/referers.json "$dest/referers.json"
echo "$want" > "$dest/VERSIONS"
echo "fetch-rules: $want -> $dest"
