# Sourced by bench/cpu_ab.sh and bench/ir_ab.sh: the wrk request and the 1-worker gateway config they measure.
#   ab_setup DIR MODE CHAIN LIMIT PORT UPSTREAM_PORT
# writes DIR/req.lua (a chat request, streamed when MODE is "stream") and DIR/gw.yaml (one openai target on the
# mock upstream; CHAIN non-empty: bench run's fastgw-redact chain, pii-detector redact + safety-filter; LIMIT
# non-empty: bench run's fastgw-limit-local limits on `state.backend: local`, its table in DIR/state).
ab_setup() {
  local dir=$1 mode=$2 chain=$3 limit=$4 port=$5 upstream=$6 stream pricing
  stream=$([ "$mode" = stream ] && echo true || echo false)
  cat > "$dir/req.lua" <<L
wrk.method = "POST"
wrk.body = '{"model":"bench-model","stream":$stream,"messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
L
  pricing=$([ -n "$limit" ] && echo ", pricing: {input: 0.15, output: 0.6}" || true)
  cat > "$dir/gw.yaml" <<Y
pack: {name: ab, version: 1.0.0, enabled: true}
server: {bind: ["127.0.0.1:$port"], workers: 1}
providers:
  targets:
    - {id: up, provider: openai, model: bench-model, base_url: "http://127.0.0.1:$upstream/v1"$pricing}
Y
  if [ -n "$chain" ]; then cat >> "$dir/gw.yaml" <<Y
policies: {chain: [pii-detector, safety-filter]}
policy:
  pii-detector: {action: redact}
  safety-filter: {action: redact, terms: [forbidden fruit, secret sauce]}
Y
  fi
  if [ -n "$limit" ]; then cat >> "$dir/gw.yaml" <<Y
state: {backend: local, path: "$dir/state"}
policies: {chain: [rate-limiter]}
policy:
  rate-limiter:
    limits:
      - {name: per-key, per: key, requests_per_minute: 1000000000, tokens_per_minute: 1000000000000,
         concurrent: 100000}
    budgets:
      - {name: monthly, per: key, usd: 1000000000, period: month}
Y
  fi
}
