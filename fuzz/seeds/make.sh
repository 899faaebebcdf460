#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/seeds/<target>/ from the repository's fixtures and openssl.
# The seeds are committed (the replay test and run.sh start from them); rerun this only to change
# them. Crash inputs found by a long run are added by hand as crash-<sha1> next to them.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
rm -rf ingest_xml ingest_json allowed_peers cert_inspect jwks jwt duration acl_compile
mkdir -p ingest_xml ingest_json allowed_peers cert_inspect jwks jwt duration acl_compile

# --- ingest: the IEC 61968-9 documents of the services' tests, and hostile shapes -------------
cat >ingest_xml/readings.xml <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<m:MeterReadings xmlns:m="http://iec.ch/TC57/2011/MeterReadings#">
  <m:MeterReading>
    <m:Meter><m:mRID>b1c2</m:mRID><m:Names><m:name>MTR-0001</m:name></m:Names></m:Meter>
    <m:Readings>
      <m:ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:timeStamp>2026-11-22T10:00:00Z</m:timeStamp>
      <m:value>12.5</m:value>
    </m:Readings>
    <m:IntervalBlocks>
      <m:ReadingType ref="0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:IntervalReadings><m:timeStamp>2026-11-22T10:15:00+01:00</m:timeStamp><m:value>1.25</m:value></m:IntervalReadings>
      <m:IntervalReadings><m:timeStamp>2026-11-22T10:30:00Z</m:timeStamp><m:value>1.5</m:value></m:IntervalReadings>
    </m:IntervalBlocks>
  </m:MeterReading>
</m:MeterReadings>
EOF
cat >ingest_xml/end-device-events.xml <<'EOF'
<EndDeviceEvents xmlns="http://iec.ch/TC57/2011/EndDeviceEvents#">
  <EndDeviceEvent><mRID>evt-1</mRID><createdDateTime>2026-11-22T10:00:00Z</createdDateTime>
    <reason>cover opened &amp; closed</reason>
    <Assets><mRID>MTR-0002</mRID></Assets><EndDeviceEventType ref="3.26.0.185"/></EndDeviceEvent>
</EndDeviceEvents>
EOF
printf '<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]><a>&x;&x;</a>' >ingest_xml/doctype.xml
printf '<a b="1" c="2" d="3" e="4" f="5"><![CDATA[text]]><?pi x?><!-- c --></a>' >ingest_xml/attributes.xml
python3 -c 'import sys; sys.stdout.write("<a>"*200 + "</a>"*200)' >ingest_xml/nested.xml
cat >ingest_json/end-device-events.json <<'EOF'
{"EndDeviceEvents": {"EndDeviceEvent": [{"mRID": "e2",
  "createdDateTime": "2026-11-22T10:00:00Z", "Assets": {"mRID": "MTR-0003"},
  "EndDeviceEventType": {"ref": "3.26.0.185"}, "reason": "tamper"}]}}
EOF
cat >ingest_json/normalized.json <<'EOF'
{"kind":"reading","serialNumber":"S1","timestamp":"2026-11-22T10:00:00Z",
 "readingType":"0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0","value":3}
EOF
cat >ingest_json/readings.json <<'EOF'
{"MeterReadings": {"MeterReading": [{"Meter": {"mRID": "b1", "Names": {"name": "MTR-9"}},
  "Readings": [{"ReadingType": {"ref": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"},
  "timeStamp": "2026-11-22T10:00:00Z", "value": "7.25"}]}]}}
EOF
python3 -c 'import sys; sys.stdout.write("["*200 + "]"*200)' >ingest_json/nested.json
printf '[{"kind":"event","serialNumber":"S\\u0000","timestamp":"x"},1e999,-0,"\\ud800"]' >ingest_json/edge.json

# --- allowed-peers.json: the contract's example, the operator's output, and the case table -----
cat >allowed_peers/two-rules.json <<'EOF'
{
  "version": 1,
  "service": "device-hub",
  "peers": [
    { "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
      "methods": ["GET"], "pathPrefixes": ["/v1/meters/"] },
    { "spiffeId": "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector",
      "methods": ["DELETE"], "pathPrefixes": ["/v1/admin/", "/v1/meters/SN-1"] },
    { "spiffeId": "spiffe://cluster.local/ns/mpm-system/sa/mpm-operator" }
  ]
}
/v1/meters/SN-1
/v1/meters/SN-10
/v1/meters:batchDelete
EOF
cat >allowed_peers/methods-only.json <<'EOF'
{"version":1,"service":"smoc-service","peers":[{"spiffeId":"spiffe://cluster.local/ns/park/sa/demo-device-hub","methods":["PUT","POST","DELETE"],"pathPrefixes":["/v1/devices/","/v1/readings","/v1/batch"]}]}
EOF
python3 - "$ROOT/docs/allowed-peers-cases.json" <<'EOF'
import json, sys
cases = json.load(open(sys.argv[1]))
lines = [c["prefix"] for c in cases.get("prefixes", [])] + [c.get("path", "") for c in cases.get("paths", [])]
open("allowed_peers/case-table.txt", "w").write("\n".join(lines) + "\n")
EOF

# --- certificates: SVIDs (one URI SAN, two, none), a CA, DNS names; PEM and DER ---------------
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/ca.key" \
  -out "$tmp/ca.crt" -days 30 -subj "/CN=mpm hub CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
leaf() { # name, SAN list
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/$1.key" \
    -out "$tmp/$1.csr" -subj "/CN=$1" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$2" >"$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 7 -extfile "$tmp/$1.ext" -out "$tmp/$1.crt" 2>/dev/null
  cp "$tmp/$1.crt" "cert_inspect/$1.pem"
  openssl x509 -in "$tmp/$1.crt" -outform der -out "cert_inspect/$1.der"
}
leaf svid "URI:spiffe://cluster.local/ns/park/sa/demo-device-hub,DNS:demo-device-hub.park.svc"
leaf two-uris "URI:spiffe://cluster.local/ns/park/sa/demo-device-hub,URI:spiffe://cluster.local/ns/mpm-system/sa/mpm-operator"
leaf dns-only "DNS:device-hub.park.svc.cluster.local"
leaf bad-spiffe "URI:spiffe://Cluster.Local/ns/../sa/x?y"
cp "$tmp/ca.crt" cert_inspect/ca.pem
openssl x509 -in "$tmp/ca.crt" -outform der -out cert_inspect/ca.der
cat "$tmp/svid.crt" "$tmp/ca.crt" >cert_inspect/chain.pem

# --- JWKS: the test fixture, and the kinds of keys an IdP publishes ---------------------------
fixture=$(cat "$ROOT/services/tests/fixtures/rsa-test-jwk.json")
printf '{"keys": [%s]}\n' "$fixture" >jwks/rsa.json
printf '{"keys": [{"kty":"EC","crv":"P-256","kid":"ec1","use":"sig","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}, {"kty":"oct","k":"c2VjcmV0","kid":"hs"}, {"kty":"RSA","use":"enc","kid":"enc","n":"AQAB","e":"AQAB"}]}\n' >jwks/mixed.json
printf '{"keys": []}' >jwks/empty.json

# --- JWT: tokens signed with the fixture key, all expired (none may ever verify) --------------
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
token() { # header-json, claims-json
  local h c s
  h=$(printf '%s' "$1" | b64url); c=$(printf '%s' "$2" | b64url)
  s=$(printf '%s.%s' "$h" "$c" | openssl dgst -sha256 -sign "$ROOT/services/tests/fixtures/rsa-test-key.pem" | b64url)
  printf 'Bearer %s.%s.%s' "$h" "$c" "$s"
}
claims='{"iss":"https://idp.example/realms/mpm","aud":"smoc-service","sub":"asset-manager","exp":1700000000,"realm_access":{"roles":["reader"]}}'
token '{"alg":"RS256","typ":"JWT","kid":"rsa1"}' "$claims" >jwt/expired-reader.txt
token '{"alg":"RS256","typ":"JWT"}' "$claims" >jwt/no-kid.txt
token '{"alg":"RS256","typ":"JWT","kid":"rsa1"}' '{"iss":"https://other","aud":"x","exp":1700000000}' >jwt/wrong-issuer.txt
printf 'Bearer %s.%s.' "$(printf '{"alg":"none"}' | b64url)" "$(printf '%s' "$claims" | b64url)" >jwt/alg-none.txt
printf 'Bearer %s.%s.c2ln' "$(printf '{"alg":"HS256","kid":"rsa1"}' | b64url)" "$(printf '%s' "$claims" | b64url)" >jwt/hs256.txt

# --- durations ----------------------------------------------------------------------------------
for d in 24h 90m 1h30m 45s 1.5h 8760h 0 250ms 00 .5s 1e3s -1h 9999999999999999999h; do
  printf '%s' "$d" >"duration/d_$(printf '%s' "$d" | tr -c 'A-Za-z0-9.\n-' '_')"
done

# --- ServiceACL specs (JSON, as the API server hands them over) -------------------------------
cat >acl_compile/meter-park.json <<'EOF'
{"hubRef": {"name": "demo"}, "defaultAction": "Deny",
 "allow": [
  {"name": "connector-forwards-events", "from": "iec61968-connector", "to": "device-hub",
   "http": {"methods": ["POST"], "pathPrefixes": ["/v1/events"]}},
  {"name": "hub-provisions-and-forwards", "from": "device-hub", "to": "smoc-service",
   "http": {"methods": ["PUT", "POST", "DELETE"], "pathPrefixes": ["/v1/devices/", "/v1/readings", "/v1/batch"]}}],
 "deny": [{"name": "connector-never-reaches-the-store", "from": "iec61968-connector", "to": "smoc-service"}],
 "ingress": [{"name": "hes-delivers-meter-events", "to": "iec61968-connector",
   "from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"port": 8090, "protocol": "TCP"}]}]}
EOF
cat >acl_compile/two-rules.json <<'EOF'
[{"hubRef": {"name": "demo"},
  "allow": [
   {"name": "read-meters", "from": "iec61968-connector", "to": "device-hub", "http": {"methods": ["GET"], "pathPrefixes": ["/v1/meters/"]}},
   {"name": "admin-delete", "from": "iec61968-connector", "to": "device-hub", "http": {"methods": ["DELETE"], "pathPrefixes": ["/v1/admin/"]}},
   {"name": "all", "from": "smoc-service", "to": "device-hub"}]},
 {"hubRef": {"name": "demo"},
  "deny": [{"name": "never", "from": "smoc-service", "to": "iec61968-connector"}],
  "egress": [{"name": "idp", "from": "smoc-service", "to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.7/32"]}}], "ports": [{"port": 443}]}]}]
EOF
printf '{"hubRef":{"name":"demo"},"allow":[{"name":"x","from":"device-hub","to":"device-hub","http":{"methods":[],"pathPrefixes":[""]}}]}' >acl_compile/empty-lists.json
echo "seeds: $(find . -type f ! -name make.sh | wc -l) files, $(du -sh --exclude=make.sh . | cut -f1)"
