#!/usr/bin/env bash
# Self-test of the test sink (test/sink/sink.js) with curl: every format, the validation rules,
# every fault kind and the control API. Prints "N passed, M failed"; exits 0 only if all passed.
# Needs node and curl (no jq: JSON is checked with node -e). Bounded: every curl has --max-time.
#   bash test/sink/selftest.sh            (NODE=/path/to/node to pick another node binary)
set -u
cd "$(dirname "$0")/../.."
NODE=${NODE:-node}
TMP=$(mktemp -d)
SINK=
cleanup() { [ -n "$SINK" ] && kill "$SINK" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

"$NODE" test/sink/sink.js --partitions 4 --log-file "$TMP/log" >"$TMP/out" 2>"$TMP/err" &
SINK=$!
for _ in $(seq 100); do grep -q '^SINK CONTROL' "$TMP/out" && break; sleep 0.1; done
P=$(awk '/^SINK LISTENING/{print $3}' "$TMP/out")
C=$(awk '/^SINK CONTROL/{print $3}' "$TMP/out")
if [ -z "$P" ] || [ -z "$C" ]; then echo "sink did not start:"; cat "$TMP/err"; exit 1; fi
B=http://127.0.0.1:$P
K=http://127.0.0.1:$C

pass=0 fail=0
ok()   { pass=$((pass + 1)); }
bad()  { fail=$((fail + 1)); echo "FAIL: $1 (expected '$2', got '$3')"; }
check() { if [ "$2" = "$3" ]; then ok; else bad "$1" "$2" "$3"; fi; }

# req METHOD URL CONTENT-TYPE BODY [curl args...]: sets CODE (000 on connection failure), RC
# (curl's exit code) and TIME; BODY "@file" sends a file. The response body lands in $TMP/body, the headers in $TMP/hdr.
req() {
  local m=$1 u=$2 ct=$3 body=$4; shift 4
  local args=(-s -o "$TMP/body" -D "$TMP/hdr" --max-time 10 -w '%{http_code} %{time_total}' -X "$m")
  [ -n "$ct" ] && args+=(-H "Content-Type: $ct")
  [ -n "$body" ] && args+=(--data-binary "$body")
  local out; out=$(curl "${args[@]}" "$@" "$u"); RC=$?
  CODE=${out%% *}; TIME=${out#* }
}
# js EXPR: evaluate EXPR with b = parsed JSON of the last response body.
js() { "$NODE" -e 'const b=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")||"null");
  const v=new Function("b","return ("+process.argv[2]+")")(b); console.log(typeof v==="object"?JSON.stringify(v):String(v))' "$TMP/body" "$1"; }
stat() { curl -s --max-time 5 -o "$TMP/body" "$K/_sink/stats"; js "b.$1"; }
ctl()  { curl -s --max-time 5 -o "$TMP/body" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' ${3:+--data-binary "$3"} "$K$2"; }
hdr()  { tr -d '\r' <"$TMP/hdr" | awk -v h="$(echo "$1" | tr A-Z a-z)" -F': ' 'tolower($1)==h{print $2}'; }

CE=application/cloudevents+json
CEB=application/cloudevents-batch+json
KJ=application/vnd.kafka.json.v2+json
KB=application/vnd.kafka.binary.v2+json
ev() { # ev ID [extra json members]
  printf '{"specversion":"1.0","id":"%s","source":"/pg_courier/db/outbox","type":"orders","subject":"k1","time":"2024-05-01T12:00:00.123456Z","datacontenttype":"application/json","data":{"n":1}%s}' "$1" "${2:-}"
}

echo "== CloudEvents structured"
req POST "$B/hook" "$CE" "$(ev e1)" -H 'Idempotency-Key: "e1"';            check "ce valid" 200 "$CODE"
check "ce empty body" 0 "$(wc -c <"$TMP/body" | tr -d ' ')"
req POST "$B/hook" "$CE; charset=utf-8" "$(ev e2)" -H 'Idempotency-Key: "e2"'; check "ce charset=utf-8" 200 "$CODE"
req POST "$B/hook" "$CE" "$(ev e3)";                                         check "ce no Idempotency-Key" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev e3)" -H 'Idempotency-Key: "e4"';              check "ce mismatched key" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev e3)" -H 'Idempotency-Key: e3';                check "ce unquoted key" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev 'a\"b')" -H 'Idempotency-Key: "a\"b"';        check "ce sf-string escape" 200 "$CODE"
req POST "$B/hook" "$CE" '{"specversion":"0.3","id":"x","source":"/s","type":"t"}' -H 'Idempotency-Key: "x"'
check "ce specversion 0.3" 400 "$CODE"; check "ce error body" true "$(js 'typeof b.error === "string"')"
req POST "$B/hook" "$CE" '{"specversion":"1.0","id":"x","type":"t"}' -H 'Idempotency-Key: "x"'; check "ce no source" 400 "$CODE"
req POST "$B/hook" "$CE" '{"specversion":"1.0","id":"","source":"/s","type":"t"}' -H 'Idempotency-Key: ""'; check "ce empty id" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev x ',"time":"2024-13-01T00:00:00Z"')" -H 'Idempotency-Key: "x"'; check "ce bad month" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev x ',"time":"2024-05-01T00:00:00"')" -H 'Idempotency-Key: "x"'; check "ce time w/o offset" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev x ',"Bad_Name":"v"')" -H 'Idempotency-Key: "x"';   check "ce bad attr name" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev x ',"ext":{"a":1}')" -H 'Idempotency-Key: "x"';    check "ce object extension" 400 "$CODE"
req POST "$B/hook" "$CE" "$(ev x ',"partitionkey":"k1","seq":7')" -H 'Idempotency-Key: "x"'; check "ce extensions ok" 200 "$CODE"
req POST "$B/hook" "$CE" "$(ev y ',"data_base64":"AAAA"')" -H 'Idempotency-Key: "y"'; check "ce data+data_base64" 400 "$CODE"
req POST "$B/hook" "$CE" '{"specversion":"1.0","id":"z","source":"/s","type":"t","subject":null}' -H 'Idempotency-Key: "z"'
check "ce null optional = absent" 200 "$CODE"
req POST "$B/hook" "$CE" '{"specversion":"1.0",' -H 'Idempotency-Key: "x"';  check "ce invalid JSON" 400 "$CODE"
req POST "$B/hook" text/plain "$(ev x)" -H 'Idempotency-Key: "x"';          check "ce text/plain" 415 "$CODE"
req POST "$B/hook" application/json "$(ev x)" -H 'Idempotency-Key: "x"';    check "ce application/json" 415 "$CODE"
req POST "$B/hook" "$CE; charset=latin1" "$(ev x)" -H 'Idempotency-Key: "x"'; check "ce charset latin1" 415 "$CODE"
req GET "$B/hook" "" "";                                                     check "ce GET" 405 "$CODE"

echo "== CloudEvents batch"
req POST "$B/hooks/batch" "$CEB" "[$(ev b1),$(ev b2)]";                      check "batch valid" 200 "$CODE"
check "batch recorded" 2 "$(stat 'formats["ce-batch"]')"
req POST "$B/hooks/batch" "$CEB" '[]';                                       check "batch empty" 400 "$CODE"
req POST "$B/hooks/batch" "$CEB" "[$(ev b3),{\"id\":\"b4\"}]"
check "batch invalid member" 400 "$CODE"; check "batch error names index" true "$(js 'b.error.startsWith("event 1")')"
req POST "$B/hooks/batch" "$CEB" "$(ev b5)";                                 check "batch not array" 400 "$CODE"
check "ce accepted so far" 7 "$(stat accepted)"

echo "== Kafka REST v2"
KR='{"records":[{"key":"ka","value":{"n":1}},{"key":"ka","value":{"n":2}},{"key":null,"value":"v"},{"key":{"x":1},"value":3,"partition":2}]}'
req POST "$B/kafka/topics/orders" "$KJ" "$KR" -H 'Accept: application/vnd.kafka.v2+json'
check "kafka valid" 200 "$CODE"; check "kafka content type" application/vnd.kafka.v2+json "$(hdr Content-Type)"
check "kafka 4 offsets" 4 "$(js 'b.offsets.length')"
check "kafka schema ids null" "null null" "$(js 'b.key_schema_id + " " + b.value_schema_id')"
check "kafka same key same partition" true "$(js 'b.offsets[0].partition === b.offsets[1].partition')"
check "kafka offsets increase" 1 "$(js 'b.offsets[1].offset - b.offsets[0].offset')"
check "kafka explicit partition" 2 "$(js 'b.offsets[3].partition')"
check "kafka error fields null" true "$(js 'b.offsets.every(o => o.error_code === null && o.error === null)')"
req POST "$B/topics/orders" "$KJ" '{"records":[{"key":"ka","value":{"n":3}}]}'
check "kafka no prefix" 200 "$CODE"; check "kafka offset continues" 2 "$(js 'b.offsets[0].offset')"
req POST "$B/kafka/topics/orders" "$KJ" '{"records":[{"value":1,"partition":99}]}'
check "kafka bad partition" 404 "$CODE"; check "kafka 40402" 40402 "$(js 'b.error_code')"
req POST "$B/kafka/topics/orders" application/json "$KR"
check "kafka wrong ctype" 415 "$CODE"; check "kafka 415 body" 415 "$(js 'b.error_code')"
check "kafka 415 ctype" application/vnd.kafka.v2+json "$(hdr Content-Type)"
req POST "$B/kafka/topics/orders" "$KJ" "$KR" -H 'Accept: text/html';       check "kafka Accept text/html" 406 "$CODE"
req POST "$B/kafka/topics/orders" "$KJ" "$KR" -H 'Accept: */*';             check "kafka Accept */*" 200 "$CODE"
req POST "$B/kafka/topics/orders" "$KJ" '{"records":[';
check "kafka invalid JSON" 400 "$CODE"; check "kafka 400 body" 400 "$(js 'b.error_code')"
req POST "$B/kafka/topics/orders" "$KJ" '{"records":[]}'
check "kafka empty records" 422 "$CODE"; check "kafka 42201" 42201 "$(js 'b.error_code')"
req POST "$B/kafka/topics/orders" "$KJ" '{"recs":[{"value":1}]}';           check "kafka unknown field" 422 "$CODE"
req POST "$B/kafka/topics/orders" "$KJ" '{"records":[{"key":"a"}]}';        check "kafka record w/o value" 422 "$CODE"
req POST "$B/kafka/topics/bad%20topic" "$KJ" "$KR"
check "kafka invalid topic" 404 "$CODE"; check "kafka 40401" 40401 "$(js 'b.error_code')"
req POST "$B/kafka/topics/bin" "$KB" "{\"records\":[{\"key\":\"$(printf kb | base64)\",\"value\":\"$(printf '{"n":5}' | base64)\"}]}"
check "kafka binary" 200 "$CODE"
req POST "$B/kafka/topics/bin" "$KB" '{"records":[{"value":"not base64!"}]}'; check "kafka binary bad base64" 422 "$CODE"
req GET "$B/kafka/topics/orders" "" "";                                      check "kafka GET" 405 "$CODE"
curl -s -o "$TMP/body" "$K/_sink/events?from=1&limit=100000"
check "binary decoded" '{"key":"kb","data":{"n":5}}' "$(js 'JSON.stringify((({key,data})=>({key,data}))(b.find(e => e.topic === "bin")))')"
check "ctl topics" 200 "$(ctl POST /_sink/config '{"topics":["orders"]}')"
req POST "$B/kafka/topics/other" "$KJ" "$KR";                               check "kafka unknown topic" 404 "$CODE"
ctl POST /_sink/config '{"topics":null}' >/dev/null

echo "== recording, dedup, ordering, latency"
check "reset" 200 "$(ctl POST /_sink/reset)"
check "reset clears" 0 "$(stat accepted)"
check "config" 200 "$(ctl POST /_sink/config '{"order_field":"n","id_field":"event_id","record_data":true}')"
NOW=$("$NODE" -e 'console.log(Date.now())')
req POST "$B/kafka/topics/orders" "$KJ" "{\"records\":[
  {\"key\":\"kA\",\"value\":{\"event_id\":\"a1\",\"n\":1,\"ts\":$NOW}},{\"key\":\"kA\",\"value\":{\"event_id\":\"a3\",\"n\":3,\"ts\":$NOW}},
  {\"key\":\"kA\",\"value\":{\"event_id\":\"a2\",\"n\":2,\"ts\":$NOW}},{\"key\":\"kA\",\"value\":{\"event_id\":\"a1\",\"n\":1,\"ts\":$NOW}},
  {\"key\":\"kB\",\"value\":{\"event_id\":\"b1\",\"n\":\"10\",\"ts\":$NOW}},{\"key\":\"kB\",\"value\":{\"event_id\":\"b2\",\"n\":\"9\",\"ts\":$NOW}}]}"
check "kafka dedup batch" 200 "$CODE"
check "accepted" 6 "$(stat accepted)"; check "unique" 5 "$(stat unique)"; check "duplicates" 1 "$(stat duplicates)"
check "order violations (dup ignored, bigint strings)" 2 "$(stat order_violations)"
check "violation example" '{"key":"kA","id":"a2","value":"2","after":"3"}' "$(stat 'violation_examples.map(({key,id,value,after})=>({key,id,value,after}))[0]')"
curl -s -o "$TMP/body" "$K/_sink/count?id=a1";  check "count a1" 2 "$(js b.count)"
curl -s -o "$TMP/body" "$K/_sink/count?id=zz";  check "count unknown" 0 "$(js b.count)"
curl -s -o "$TMP/body" "$K/_sink/ids";          check "ids" a1,a3,a2,b1,b2 "$(js 'b.join()')"
curl -s -o "$TMP/body" "$K/_sink/events?from=2&limit=2"
check "events paging" 2,3 "$(js 'b.map(e => e.seq).join()')"
check "event shape" 'a3 kA orders kafka true true' "$(js '[b[0].id,b[0].key,b[0].topic,b[0].format,b[0].t>1e12,b[0].data.n===3].join(" ")')"
curl -s -o "$TMP/body" "$K/_sink/latency?field=ts"
check "latency count" 5 "$(js b.count)"; check "latency sane" true "$(js 'b.p50 >= 0 && b.p99 < 60000 && b.max >= b.p90')"
ctl POST /_sink/config '{"latency_field":"ts","record_data":false}' >/dev/null
req POST "$B/kafka/topics/orders" "$KJ" "{\"records\":[{\"key\":\"kC\",\"value\":{\"event_id\":\"c1\",\"n\":1,\"ts\":$NOW}}]}"
curl -s -o "$TMP/body" "$K/_sink/events?from=7";  check "record_data off" false "$(js '"data" in b[0]')"
curl -s -o "$TMP/body" "$K/_sink/latency";        check "latency_field samples" 1 "$(js b.count)"
check "config bad key" 400 "$(ctl POST /_sink/config '{"nope":1}')"
ctl POST /_sink/config '{"order_field":null,"id_field":null,"latency_field":null,"record_data":true}' >/dev/null
curl -s -o "$TMP/body" "$K/_sink/requests"; check "recent requests keep headers" application/vnd.kafka.json.v2+json "$(js 'b[b.length-1].headers["content-type"]')"
check "control on protocol port" 200 "$(curl -s -o /dev/null -w '%{http_code}' "$B/_sink/stats")"

echo "== faults"
ctl POST /_sink/reset >/dev/null
check "plan status" 200 "$(ctl POST /_sink/faults '{"status":{"code":503,"count":1,"retry_after":"2"}}')"
req POST "$B/hook" "$CE" "$(ev f1)" -H 'Idempotency-Key: "f1"'
check "status fault" 503 "$CODE"; check "Retry-After" 2 "$(hdr Retry-After)"
req POST "$B/hook" "$CE" "$(ev f1)" -H 'Idempotency-Key: "f1"';             check "status count exhausted" 200 "$CODE"
check "status fault not recorded" 1 "$(stat accepted)"; check "faults_injected.status" 1 "$(stat faults_injected.status)"
ctl POST /_sink/faults '{"status":{"code":429,"retry_after":"Wed, 21 Oct 2015 07:28:00 GMT","match":{"format":"kafka"}}}' >/dev/null
req POST "$B/hook" "$CE" "$(ev f2)" -H 'Idempotency-Key: "f2"';             check "match skips ce" 200 "$CODE"
req POST "$B/kafka/topics/orders" "$KJ" "$KR"
check "match hits kafka" 429 "$CODE"; check "kafka fault body" 42901 "$(js b.error_code)"
check "Retry-After date" "Wed, 21 Oct 2015 07:28:00 GMT" "$(hdr Retry-After)"
ctl POST /_sink/faults '{"status":{"code":500,"match":{"topic":"payments"}}}' >/dev/null
req POST "$B/kafka/topics/orders" "$KJ" "$KR";                              check "topic match miss" 200 "$CODE"
req POST "$B/kafka/topics/payments" "$KJ" "$KR";                            check "topic match hit" 500 "$CODE"
ctl POST /_sink/faults '{"delay_ms":{"ms":300,"count":1}}' >/dev/null
req POST "$B/hook" "$CE" "$(ev f3)" -H 'Idempotency-Key: "f3"'
check "delay status" 200 "$CODE"; check "delay >= 0.3s" true "$("$NODE" -e "console.log($TIME >= 0.3)")"
ctl POST /_sink/reset >/dev/null
ctl POST /_sink/faults '{"reset":{"count":1}}' >/dev/null
req POST "$B/hook" "$CE" "$(ev f4)" -H 'Idempotency-Key: "f4"'
check "reset: no response" 000 "$CODE"; check "reset: curl error" true "$([ "$RC" = 52 ] || [ "$RC" = 56 ] && echo true || echo "rc=$RC")"
check "reset: nothing recorded" 0 "$(stat accepted)"
ctl POST /_sink/faults '{"accept_then_fail":{"code":500,"count":1}}' >/dev/null
req POST "$B/hook" "$CE" "$(ev f5)" -H 'Idempotency-Key: "f5"';             check "accept_then_fail" 500 "$CODE"
check "accept_then_fail recorded" 1 "$(stat accepted)"
req POST "$B/hook" "$CE" "$(ev f5)" -H 'Idempotency-Key: "f5"';             check "redelivery ok" 200 "$CODE"
check "redelivery is a duplicate" 1 "$(stat duplicates)"
ctl POST /_sink/faults '{"kafka_record_errors":{"code":2,"count":2,"scope":"record"}}' >/dev/null
req POST "$B/kafka/topics/orders" "$KJ" '{"records":[{"key":"a","value":1},{"key":"a","value":2},{"key":"a","value":3}]}'
check "record errors: 200" 200 "$CODE"
check "record errors: codes" '2,2,null' "$(js 'b.offsets.map(o => String(o.error_code)).join()')"
check "record errors: failed have null offset" true "$(js 'b.offsets[0].offset === null && typeof b.offsets[0].error === "string" && b.offsets[2].offset >= 0')"
check "record errors: only ok recorded" 3 "$(stat accepted)"
check "faults_injected kinds" '{"reset":1,"accept_then_fail":1,"kafka_record_errors":2}' "$(stat faults_injected)"
# scope "partition" (the default): a failed record takes the later records of its partition (in
# this request) with it. Partitions of 4 (json keys): "a" and "e" -> 2, "b" -> 1; v3 STRING keys:
# "a" and "h" -> 1, "b" -> 3. ids picks the record the plan hits.
ctl POST /_sink/reset >/dev/null
ctl POST /_sink/config '{"id_field":"id"}' >/dev/null
KP='{"records":[{"key":"a","value":{"id":"a0"}},{"key":"a","value":{"id":"a1"}},{"key":"b","value":{"id":"b1"}},{"key":"a","value":{"id":"a2"}},{"key":"e","value":{"id":"e1"}},{"key":"b","value":{"id":"b2"}}]}'
ctl POST /_sink/faults '{"kafka_record_errors":{"code":50003,"ids":["a1"]}}' >/dev/null
req POST "$B/kafka/topics/orders" "$KJ" "$KP"
check "partition scope: codes" 'null,50003,null,50003,50003,null' "$(js 'b.offsets.map(o => String(o.error_code)).join()')"
check "partition scope: recorded" 'a0,b1,b2' "$(curl -s --max-time 5 "$K/_sink/events" | "$NODE" -e 'console.log(JSON.parse(require("fs").readFileSync(0)).map(e => e.id).join())')"
check "partition scope: one request number" true "$(curl -s --max-time 5 "$K/_sink/events" | "$NODE" -e 'const e = JSON.parse(require("fs").readFileSync(0)); console.log(e[0].req > 0 && e.every(x => x.req === e[0].req))')"
check "partition scope: counted" '{"kafka_record_errors":1,"kafka_partition_failed":2}' "$(stat faults_injected)"
ctl POST /_sink/config '{"kafka_shape":"redpanda"}' >/dev/null
ctl POST /_sink/faults '{"kafka_record_errors":{"code":50003,"ids":["a1"]}}' >/dev/null
req POST "$B/kafka/topics/orders" "$KJ" "$KP"
check "redpanda: one entry per partition, the failed one with its code" '2:50003:-1,1::' \
  "$(js 'b.offsets.map(o => [o.partition, o.error_code === undefined ? "" : o.error_code, o.offset === -1 ? -1 : ""].join(":")).join()')"
check "redpanda: the whole partition failed" 5 "$(stat accepted)"
ctl POST /_sink/config '{"kafka_shape":"confluent"}' >/dev/null
ctl POST /_sink/faults '{"kafka_record_errors":{"code":50003,"ids":["a1"]}}' >/dev/null
V3E() { printf '{"id":"%s","key":{"type":"STRING","data":"%s"},"value":{"type":"JSON","data":{"id":"%s"}}}' "$1" "$2" "$3"; }
req POST "$B/kafka/v3/clusters/sink-cluster-1/topics/orders/records:batch" application/json \
  "{\"entries\":[$(V3E 0 a a0),$(V3E 1 a a1),$(V3E 2 b b1),$(V3E 3 h h1),$(V3E 4 a a2)]}"
check "v3 partition scope: 207" 207 "$CODE"
check "v3 partition scope: failures" '1:50003,3:50003,4:50003' "$(js 'b.failures.map(f => f.id + ":" + f.error_code).join()')"
check "v3 partition scope: successes" '0,2' "$(js 'b.successes.map(s => s.id).join()')"
ctl POST /_sink/config '{"id_field":null}' >/dev/null
check "bad scope rejected" 400 "$(ctl POST /_sink/faults '{"kafka_record_errors":{"scope":"topic"}}')"
check "empty ids rejected" 400 "$(ctl POST /_sink/faults '{"kafka_record_errors":{"ids":[]}}')"
check "scope elsewhere rejected" 400 "$(ctl POST /_sink/faults '{"status":{"scope":"record"}}')"
ctl POST /_sink/faults '{"down":true}' >/dev/null
req POST "$B/kafka/topics/orders" "$KJ" "$KR";                              check "down kafka" 503 "$CODE"
req POST "$B/hook" "$CE" "$(ev f6)" -H 'Idempotency-Key: "f6"';             check "down ce" 503 "$CODE"
check "clear faults" 200 "$(ctl DELETE /_sink/faults)"
req POST "$B/hook" "$CE" "$(ev f6)" -H 'Idempotency-Key: "f6"';             check "after clear" 200 "$CODE"
ctl POST /_sink/faults '{"seed":42,"status":{"code":503,"rate":0.5}}' >/dev/null
n503=0; for i in $(seq 1 20); do req POST "$B/hook" "$CE" "$(ev r$i)" -H "Idempotency-Key: \"r$i\""; [ "$CODE" = 503 ] && n503=$((n503 + 1)); done
check "rate 0.5: some but not all" true "$([ $n503 -gt 2 ] && [ $n503 -lt 18 ] && echo true || echo "n503=$n503")"
ctl DELETE /_sink/faults >/dev/null
check "bad plan rejected" 400 "$(ctl POST /_sink/faults '{"explode":{}}')"
check "bad rate rejected" 400 "$(ctl POST /_sink/faults '{"status":{"rate":2}}')"

echo "== listener stop/start, auth"
check "stop_listening" 200 "$(ctl POST /_sink/stop_listening)"
req POST "$B/hook" "$CE" "$(ev s1)" -H 'Idempotency-Key: "s1"'
check "refused while stopped" "000 7" "$CODE $RC"
check "control still up" false "$(stat listening)"
check "start_listening" 200 "$(ctl POST /_sink/start_listening)"
req POST "$B/hook" "$CE" "$(ev s1)" -H 'Idempotency-Key: "s1"';             check "same port again" 200 "$CODE"
ctl POST /_sink/config '{"require_headers":{"Authorization":"Bearer t0k"}}' >/dev/null
req POST "$B/hook" "$CE" "$(ev s2)" -H 'Idempotency-Key: "s2"';             check "auth missing" 401 "$CODE"
req POST "$B/hook" "$CE" "$(ev s2)" -H 'Idempotency-Key: "s2"' -H 'Authorization: Bearer t0k'; check "auth ok" 200 "$CODE"
ctl POST /_sink/config '{"require_headers":null}' >/dev/null
{ head -c 300000 /dev/zero | tr '\0' ' '; ev big; } >"$TMP/big.json"   # whitespace-padded: many TCP chunks
req POST "$B/hook" "$CE" "@$TMP/big.json" -H 'Idempotency-Key: "big"';       check "large body" 200 "$CODE"
check "no internal errors" 0 "$(stat internal_errors)"

kill -TERM "$SINK"; wait "$SINK"; rc=$?; SINK=
check "SIGTERM exits 0" 0 "$rc"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
