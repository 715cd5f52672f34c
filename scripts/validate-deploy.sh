#!/usr/bin/env bash
# Validates the container image, the Kubernetes files and the production nginx
# configuration offline (neither Docker nor a cluster runs on the build machines):
#   - the kustomizations name files that exist (base and overlay);
#   - every manifest against the Kubernetes API schemas (kubernetes-validate, strict:
#     unknown fields fail) for the oldest and newest versions we support;
#   - the ConfigMap's footfall.toml with `footfall config` (it must load and validate);
#   - deploy/nginx/footfall.conf with `nginx -t` (a throwaway certificate in place);
#   - the manifests and the Dockerfile against checkov's policies. A finding is either
#     fixed or waived in the file that has it, with its reason
#     (`checkov.io/skipN: CHECK=reason` annotations; `# checkov:skip=CHECK:reason`).
# Tools come from PyPI, pinned, into target/deploy-venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/target/deploy-venv"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q '1.37.0' \
    || ! "$venv/bin/checkov" --version 2>/dev/null | grep -q '3.3.30'; then
  echo "validate-deploy: installing kubernetes-validate and checkov into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "kubernetes-validate==1.37.0" "checkov==3.3.30"
fi

echo "== kustomizations"
"$venv/bin/python" - <<'PY'
import os, sys, yaml
bad = []
for k in ["deploy/k8s/base/kustomization.yaml", "deploy/k8s/overlays/example/kustomization.yaml"]:
    d = os.path.dirname(k)
    spec = yaml.safe_load(open(k))
    for r in spec.get("resources", []):
        if not os.path.exists(os.path.join(d, r)):
            bad.append(f"{k}: resource {r} does not exist")
    for g in spec.get("secretGenerator", []):
        for e in g.get("envs", []):
            if not os.path.exists(os.path.join(d, e + ".example")):
                bad.append(f"{k}: {e} has no {e}.example to copy")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
mapfile -t manifests < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)

echo "== Kubernetes schemas (${#manifests[@]} files)"
for v in 1.29.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}"
  echo "kubernetes $v: ok"
done

echo "== the ConfigMap's footfall.toml is a valid Footfall configuration"
[ -x target/debug/footfall ] || cargo build -q --locked -p footfall
"$venv/bin/python" - <<'PY' >"$root/target/k8s-footfall.toml"
import yaml
print(yaml.safe_load(open("deploy/k8s/base/configmap.yaml"))["data"]["footfall.toml"])
PY
target/debug/footfall --config "$root/target/k8s-footfall.toml" config >/dev/null
echo "footfall config: ok"

echo "== nginx -t: deploy/nginx/footfall.conf"
if ! command -v nginx >/dev/null; then
  echo "validate-deploy: installing nginx (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tls" "$tmp/logs"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=analytics.example.com" \
  -keyout "$tmp/tls/analytics.example.com.key" -out "$tmp/tls/analytics.example.com.crt" 2>/dev/null
# The file as shipped, with its machine paths (certificate, pid, log) moved into $tmp.
sed -e "s|/etc/nginx/tls/|$tmp/tls/|g" -e "s|/run/nginx-footfall.pid|$tmp/nginx.pid|" \
  -e "s|/var/log/nginx/|$tmp/logs/|" deploy/nginx/footfall.conf >"$tmp/footfall.conf"
nginx -t -q -c "$tmp/footfall.conf" -p "$tmp/"
echo "nginx -t: ok"

echo "== checkov: Kubernetes manifests and the Dockerfile"
"$venv/bin/checkov" -d deploy/k8s --framework kubernetes --compact --quiet --skip-download
"$venv/bin/checkov" -f Dockerfile --framework dockerfile --compact --quiet --skip-download
echo "validate-deploy: ok"
