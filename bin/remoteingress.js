#!/usr/bin/env node
'use strict'
// remoteingress command line: run a hub or an edge, make or read tokens, or run the demo.
// Every flag has an environment twin: --tunnel-port is REMOTEINGRESS_TUNNEL_PORT, and so on.
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')

const USAGE = {
  main: `usage: remoteingress <command> [options]

commands:
  hub     run a hub: accept edges and forward their connections to the target host
  edge    run an edge: connect to a hub and listen on the ports it assigns
  token   encode or decode a connection token
  demo    start a hub, an edge and a target on loopback, send traffic through, print it

Run 'remoteingress <command> --help' for the options of a command.`,
  hub: `usage: remoteingress hub --edges edges.json [options]

  --edges FILE            JSON array of {id, secret, listenPorts, listenPortsUdp, stunIntervalSecs};
                          reloaded when the file changes and on SIGHUP (a bad file keeps the last good list)
  --tunnel-port N         port edges connect to (default 8443)
  --target-host HOST      where connections go: HOST:<edge port> (default 127.0.0.1)
  --bind ADDR             address the tunnel listener binds (default 0.0.0.0)
  --cert FILE --key FILE  certificate chain and key, PEM
  --state-dir DIR         keep a generated key in DIR so pinned edges trust the hub after restarts
  --proxy-protocol v1|v2|none                       header to the target (default v1)
  --udp-proxy-header everyDatagram|firstDatagram|none
  --max-edges N           edges connected at once (default 1024)
  --max-tunnels-per-edge N  tunnels one edge id may hold at once (default 16)
  --max-streams-per-edge N, --max-udp-sessions-per-edge N   (defaults 65536, 4096)
  --handshake-timeout-ms N  TLS/QUIC handshake plus login (default 10000)
  --max-pending-handshakes N, --max-pending-handshakes-per-source N
                          connections whose login is not decided yet (defaults 512, 8); when
                          full, the oldest that has sent nothing is closed for a newcomer
  --no-quic               do not listen for QUIC on the tunnel port (UDP); TCP+TLS only
  --refuse-4-13           refuse edges that speak the 4.13 protocol (TCP+TLS without ALPN)
  --instance-id ID        this process's name to edges (default: random at each start)
  --grace-period S        on SIGTERM/SIGINT, drain for up to S seconds: GOAWAY to edges, open
                          connections finish (default 30; 0 = close at once; a second signal
                          stops at once)
  --heartbeat-interval-ms N  how often the hub pings each edge (default 15000)
  --heartbeat-timeout-ms N   an edge silent this long is dropped (default 45000)
  --tunnel-buffer-bytes N bytes one edge's tunnel buffers for its connections, per direction
                          (default 209715200, 200 MiB)
  --metrics-port N        serve /metrics (Prometheus), /healthz and /readyz on http://127.0.0.1:N
  --metrics-bind ADDR     address for --metrics-port (default 127.0.0.1; 0.0.0.0 for a pod's probes)
  --log-level debug|info|warn|error   debug adds a line per connection (default info)
  --log-format text|json
  -h, --help`,
  edge: `usage: remoteingress edge (--token T | (--hub-host H [--hub-port P] | --hub H[:P]...) --edge-id ID --secret S) [options]

  --token T               connection token from the hub operator
  --hub-host H            hub address; --hub-port P (default 8443)
  --hub HOST[:PORT]       a hub (repeatable: a tunnel to each); [v6]:PORT for IPv6
  --connections-per-hub N tunnels through each hub address, to distinct hub processes (default 1)
  --lanes N|auto          tunnels to each hub process, 1-8 (default auto: 8 once a TCP+TLS
                          round trip is 20 ms or longer, else 1)
  --edge-id ID --secret S edge credentials
  --transport MODE        tcpTls (default), quic, or quicWithFallback (QUIC, else TCP+TLS after 5 s)
  --bind ADDR             address the edge's listeners bind (default 0.0.0.0)
  --hub-fingerprint F     accept only a hub with this key fingerprint (sha256/...)
  --ca FILE               accept only a hub with a certificate from this CA (PEM)
  --stun HOST:PORT        STUN server for public-IP discovery (repeatable); --no-stun turns it off
  --tunnel-buffer-bytes N bytes the tunnel buffers for its connections, per direction (default 200 MiB)
  --heartbeat-timeout-ms N  reconnect after hearing nothing from the hub this long (default 45000;
                          keep it above the hub's ping interval)
  --connect-wait-ms N     how long a client waits for a tunnel while none is up (default 10000; 0 = reset)
  --metrics-port N        serve /metrics (Prometheus), /healthz and /readyz on http://127.0.0.1:N
  --metrics-bind ADDR     address for --metrics-port (default 127.0.0.1; 0.0.0.0 for a pod's probes)
  --log-level debug|info|warn|error, --log-format text|json
  -h, --help`,
  token: `usage: remoteingress token encode (--hub-host H [--hub-port P] | --hub H[:P]...) --edge-id ID --secret S [--fingerprint F]
       remoteingress token decode TOKEN`,
  demo: `usage: remoteingress demo [--seconds N]

Starts a target server (TCP and UDP), a hub and an edge on loopback (the edge on 127.0.0.2),
sends TCP requests and UDP datagrams through the tunnel for N seconds (default: one round),
prints what the target saw, including the client address from the PROXY headers, and exits 0.`,
}

class UsageError extends Error {}

/** Seconds a hub drains on SIGTERM unless --grace-period says otherwise. */
const DEFAULT_GRACE_PERIOD_SECONDS = 30

/** parseArgs with environment twins: REMOTEINGRESS_<FLAG> fills a flag not given. */
function parseCommand(command, args, options) {
  const parsed = parseArgs({
    args,
    options: { ...options, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  })
  if (parsed.values.help) {
    console.log(USAGE[command])
    process.exit(0)
  }
  for (const [name, spec] of Object.entries(options)) {
    if (parsed.values[name] !== undefined) continue
    const env = process.env[`REMOTEINGRESS_${name.toUpperCase().replace(/-/g, '_')}`]
    if (env === undefined || env === '') continue
    if (spec.type === 'boolean') parsed.values[name] = env === '1' || env === 'true'
    else parsed.values[name] = spec.multiple ? env.split(',') : env
  }
  return parsed
}

function integer(value, flag) {
  if (value === undefined) return undefined
  if (!/^\d+$/.test(value)) throw new UsageError(`--${flag} must be a whole number, got ${JSON.stringify(value)}`)
  return Number(value)
}

/** `--lanes`: 'auto' or a whole number (the addon checks the range). */
function lanes(value) {
  if (value === undefined || value === 'auto') return value
  if (!/^\d+$/.test(value)) throw new UsageError(`--lanes must be auto or a whole number, got ${JSON.stringify(value)}`)
  return Number(value)
}

/** `host`, `host:port` or `[v6 address]:port` as a hub entry. */
function hubAddress(text) {
  const port = (digits) => {
    if (digits === undefined) return undefined
    if (!/^\d+$/.test(digits)) throw new UsageError(`--hub ${text}: the port must be a whole number`)
    return Number(digits)
  }
  const bracketed = /^\[([^\]]+)\](?::(.*))?$/.exec(text)
  if (bracketed) return { host: bracketed[1], port: port(bracketed[2]) }
  const colon = text.indexOf(':')
  // More than one colon and no brackets: an IPv6 address without a port.
  if (colon < 0 || colon !== text.lastIndexOf(':')) return { host: text }
  return { host: text.slice(0, colon), port: port(text.slice(colon + 1)) }
}

/** `--hub` entries as `hubs`, or `--hub-host`/`--hub-port`. */
function hubConnection(values) {
  if (values.hub === undefined) {
    return { hubHost: values['hub-host'], hubPort: integer(values['hub-port'], 'hub-port') }
  }
  if (values['hub-host'] !== undefined || values['hub-port'] !== undefined) {
    throw new UsageError('give either --hub or --hub-host/--hub-port, not both')
  }
  return { hubs: values.hub.map(hubAddress) }
}

function required(values, flag) {
  if (values[flag] === undefined) throw new UsageError(`--${flag} is required`)
  return values[flag]
}

const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 }
/** Level of each event: per-connection events are debug, so a busy hub logs little by default. */
const EVENT_LEVEL = {
  streamOpened: 'debug',
  streamClosed: 'debug',
  warning: 'warn',
  edgesReloadFailed: 'warn',
  stopFailed: 'error',
}
const logging = { threshold: LEVELS.info, json: false }

function configureLogging(values) {
  const level = values['log-level'] ?? 'info'
  if (!(level in LEVELS)) throw new UsageError(`--log-level must be one of ${Object.keys(LEVELS).join(', ')}`)
  const format = values['log-format'] ?? 'text'
  if (format !== 'text' && format !== 'json') throw new UsageError('--log-format must be text or json')
  logging.threshold = LEVELS[level]
  logging.json = format === 'json'
}

/** One line per event on stderr: time, level, source, event, fields (or the same as JSON). */
function log(source, event, payload = {}) {
  const level = EVENT_LEVEL[event] ?? 'info'
  if (LEVELS[level] < logging.threshold) return
  const time = new Date().toISOString()
  if (logging.json) {
    process.stderr.write(`${JSON.stringify({ time, level, source, event, ...payload })}\n`)
    return
  }
  const fields = Object.entries(payload)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ')
  process.stderr.write(`${time} ${level} ${source} ${event}${fields ? ' ' + fields : ''}\n`)
}

/** Logs the named events; events below the log level get no listener at all (none is free). */
function logEvents(emitter, source, events) {
  for (const event of events) {
    if (LEVELS[EVENT_LEVEL[event] ?? 'info'] < logging.threshold) continue
    emitter.on(event, (payload) => log(source, event, payload))
  }
}

/**
 * Serves, on `bind`:port (127.0.0.1 unless --metrics-bind says otherwise), `runner.getMetrics()` at
 * /metrics, /healthz (200 while the process serves) and /readyz (200 when `ready()` resolves true,
 * else 503), for Prometheus and an orchestrator's probes.
 */
function serveMetrics(runner, { port, bind = '127.0.0.1' }, source, ready) {
  const http = require('node:http')
  const answer = (res, promise, type = 'text/plain') =>
    promise.then(
      ({ status, body }) => res.writeHead(status, { 'content-type': type }).end(body),
      (err) => res.writeHead(500).end(`${err.message}\n`),
    )
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET') return res.writeHead(405).end('GET only\n')
    switch (req.url) {
      case '/metrics':
        return answer(res, runner.getMetrics().then((body) => ({ status: 200, body })), 'text/plain; version=0.0.4')
      case '/healthz':
        return res.writeHead(200).end('ok\n')
      case '/readyz':
        return answer(res, ready().then((isReady) => (isReady ? { status: 200, body: 'ready\n' } : { status: 503, body: 'not ready\n' })))
      default:
        return res.writeHead(404).end('not found; try /metrics, /healthz or /readyz\n')
    }
  })
  return new Promise((resolve, reject) => {
    server.once('error', (err) => reject(new UsageError(`--metrics-port ${port}: ${err.message}`)))
    server.listen(port, bind, () => {
      const { address, port: bound } = server.address()
      const host = address.includes(':') ? `[${address}]` : address
      log(source, 'metricsListening', { url: `http://${host}:${bound}/metrics` })
      resolve(server)
    })
  })
}

/** The --metrics-port and --metrics-bind flags, for serveMetrics; null without a port. */
function metricsEndpoint(values) {
  if (values['metrics-port'] === undefined) {
    if (values['metrics-bind'] !== undefined) throw new UsageError('--metrics-bind needs --metrics-port')
    return null
  }
  return { port: integer(values['metrics-port'], 'metrics-port'), bind: values['metrics-bind'] }
}

const LOG_OPTIONS = {
  'log-level': { type: 'string' },
  'log-format': { type: 'string' },
}

/** Stops `stoppable` on SIGINT/SIGTERM and exits 0 once it has stopped. */
/**
 * SIGINT/SIGTERM stop `stoppable` with `stopOptions` (a hub's grace period); a second signal
 * stops it at once.
 */
function stopOnSignals(stoppable, source, stopOptions) {
  let stopping = false
  const stop = (signal) => {
    if (stopping) {
      log(source, 'stoppingNow', { signal })
      stoppable.stop().catch(() => {})
      return
    }
    stopping = true
    log(source, 'stopping', { signal, ...stopOptions })
    stoppable.stop(stopOptions).then(
      () => process.exit(0),
      (err) => {
        log(source, 'stopFailed', { message: err.message })
        process.exit(1)
      },
    )
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}

/** Certificate for the CLI hub: given files, or a key kept in --state-dir, or none (generated). */
function hubTls(values, api) {
  if (values.cert || values.key) {
    if (!values.cert || !values.key) throw new UsageError('--cert and --key go together')
    return { certPem: fs.readFileSync(values.cert, 'utf8'), keyPem: fs.readFileSync(values.key, 'utf8') }
  }
  if (!values['state-dir']) return undefined
  const dir = values['state-dir']
  const certFile = path.join(dir, 'hub-cert.pem')
  const keyFile = path.join(dir, 'hub-key.pem')
  if (fs.existsSync(certFile) && fs.existsSync(keyFile)) {
    return { certPem: fs.readFileSync(certFile, 'utf8'), keyPem: fs.readFileSync(keyFile, 'utf8') }
  }
  const generated = api.generateHubCertificate()
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  fs.writeFileSync(keyFile, generated.keyPem, { mode: 0o600 })
  fs.writeFileSync(certFile, generated.certPem)
  return { certPem: generated.certPem, keyPem: generated.keyPem }
}

async function runHub(args) {
  const { values } = parseCommand('hub', args, {
    edges: { type: 'string' },
    'tunnel-port': { type: 'string' },
    'target-host': { type: 'string' },
    bind: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'state-dir': { type: 'string' },
    'proxy-protocol': { type: 'string' },
    'udp-proxy-header': { type: 'string' },
    'max-edges': { type: 'string' },
    'max-tunnels-per-edge': { type: 'string' },
    'max-streams-per-edge': { type: 'string' },
    'max-udp-sessions-per-edge': { type: 'string' },
    'handshake-timeout-ms': { type: 'string' },
    'max-pending-handshakes': { type: 'string' },
    'max-pending-handshakes-per-source': { type: 'string' },
    'no-quic': { type: 'boolean' },
    'refuse-4-13': { type: 'boolean' },
    'instance-id': { type: 'string' },
    'grace-period': { type: 'string' },
    'heartbeat-interval-ms': { type: 'string' },
    'heartbeat-timeout-ms': { type: 'string' },
    'tunnel-buffer-bytes': { type: 'string' },
    'metrics-port': { type: 'string' },
    'metrics-bind': { type: 'string' },
    ...LOG_OPTIONS,
  })
  configureLogging(values)
  const gracePeriod = integer(values['grace-period'], 'grace-period') ?? DEFAULT_GRACE_PERIOD_SECONDS
  if (gracePeriod > 3600) throw new UsageError('--grace-period must be at most 3600 seconds')
  const edgesFile = required(values, 'edges')
  const api = require('..')
  const readEdges = () => JSON.parse(fs.readFileSync(edgesFile, 'utf8'))
  const edges = readEdges()
  const hub = new api.RemoteIngressHub()
  logEvents(hub, 'hub', ['edgeConnected', 'edgeDisconnected', 'streamOpened', 'streamClosed', 'warning'])
  await hub.start({
    tunnelPort: integer(values['tunnel-port'], 'tunnel-port'),
    targetHost: values['target-host'],
    bindAddress: values.bind,
    tls: hubTls(values, api),
    proxyProtocol: values['proxy-protocol'],
    udpProxyHeader: values['udp-proxy-header'],
    limits: {
      maxEdges: integer(values['max-edges'], 'max-edges'),
      maxTunnelsPerEdge: integer(values['max-tunnels-per-edge'], 'max-tunnels-per-edge'),
      maxStreamsPerEdge: integer(values['max-streams-per-edge'], 'max-streams-per-edge'),
      maxUdpSessionsPerEdge: integer(values['max-udp-sessions-per-edge'], 'max-udp-sessions-per-edge'),
      handshakeTimeoutMs: integer(values['handshake-timeout-ms'], 'handshake-timeout-ms'),
      maxPendingHandshakes: integer(values['max-pending-handshakes'], 'max-pending-handshakes'),
      maxPendingHandshakesPerSource: integer(values['max-pending-handshakes-per-source'], 'max-pending-handshakes-per-source'),
      tunnelBufferBytes: integer(values['tunnel-buffer-bytes'], 'tunnel-buffer-bytes'),
    },
    quic: values['no-quic'] ? false : undefined,
    accept413: values['refuse-4-13'] ? false : undefined,
    instanceId: values['instance-id'],
    heartbeatIntervalMs: integer(values['heartbeat-interval-ms'], 'heartbeat-interval-ms'),
    heartbeatTimeoutMs: integer(values['heartbeat-timeout-ms'], 'heartbeat-timeout-ms'),
    // Before the port takes logins: an edge reconnecting to a restarted hub is never refused.
    allowedEdges: edges,
  })
  const hubMetrics = metricsEndpoint(values)
  // Ready while it takes edges: not while it drains.
  if (hubMetrics) {
    await serveMetrics(hub, hubMetrics, 'hub', async () => {
      const { running, draining } = await hub.getStatus()
      return running && !draining
    })
  }
  const status = await hub.getStatus()
  log('hub', 'started', { tunnelPort: status.tunnelPort, certFingerprint: status.certFingerprint, edges: edges.length })
  log('hub', 'tokenHint', {
    command: `remoteingress token encode --hub-host <this host's public name> --hub-port ${status.tunnelPort} --edge-id <id> --secret <secret> --fingerprint ${status.certFingerprint}`,
  })
  stopOnSignals(hub, 'hub', { graceMs: gracePeriod * 1000 })

  // Reload on SIGHUP and when the file changes; a bad file keeps the last good list.
  const reload = (why) => {
    let next
    try {
      next = readEdges()
    } catch (err) {
      log('hub', 'edgesReloadFailed', { why, file: edgesFile, message: err.message })
      return
    }
    hub.updateAllowedEdges(next).then(
      () => log('hub', 'edgesReloaded', { why, edges: next.length }),
      (err) => log('hub', 'edgesReloadFailed', { why, file: edgesFile, message: err.message }),
    )
  }
  process.on('SIGHUP', () => reload('SIGHUP'))
  let debounce = null
  fs.watchFile(edgesFile, { interval: 1000 }, () => {
    clearTimeout(debounce)
    debounce = setTimeout(() => reload('file changed'), 200)
  })
}

async function runEdge(args) {
  const { values } = parseCommand('edge', args, {
    token: { type: 'string' },
    'hub-host': { type: 'string' },
    'hub-port': { type: 'string' },
    hub: { type: 'string', multiple: true },
    'connections-per-hub': { type: 'string' },
    lanes: { type: 'string' },
    'edge-id': { type: 'string' },
    secret: { type: 'string' },
    transport: { type: 'string' },
    bind: { type: 'string' },
    'hub-fingerprint': { type: 'string' },
    ca: { type: 'string' },
    stun: { type: 'string', multiple: true },
    'no-stun': { type: 'boolean' },
    'heartbeat-timeout-ms': { type: 'string' },
    'tunnel-buffer-bytes': { type: 'string' },
    'connect-wait-ms': { type: 'string' },
    'metrics-port': { type: 'string' },
    'metrics-bind': { type: 'string' },
    ...LOG_OPTIONS,
  })
  configureLogging(values)
  const api = require('..')
  const connection = values.token
    ? { token: values.token }
    : { ...hubConnection(values), edgeId: values['edge-id'], secret: values.secret }
  const edge = new api.RemoteIngressEdge()
  logEvents(edge, 'edge', ['tunnelConnected', 'tunnelDisconnected', 'publicIpDiscovered', 'portsAssigned', 'portsUpdated', 'warning'])
  await edge.start({
    ...connection,
    transportMode: values.transport,
    bindAddress: values.bind,
    hubFingerprint: values['hub-fingerprint'],
    caPem: values.ca ? fs.readFileSync(values.ca, 'utf8') : undefined,
    stunServers: values['no-stun'] ? [] : values.stun,
    tunnelBufferBytes: integer(values['tunnel-buffer-bytes'], 'tunnel-buffer-bytes'),
    connectWaitMs: integer(values['connect-wait-ms'], 'connect-wait-ms'),
    connectionsPerHub: integer(values['connections-per-hub'], 'connections-per-hub'),
    lanes: lanes(values.lanes),
    heartbeatTimeoutMs: integer(values['heartbeat-timeout-ms'], 'heartbeat-timeout-ms'),
  })
  const edgeMetrics = metricsEndpoint(values)
  // Ready while a tunnel is up.
  if (edgeMetrics) await serveMetrics(edge, edgeMetrics, 'edge', async () => (await edge.getStatus()).connected)
  log('edge', 'started', {})
  stopOnSignals(edge, 'edge')
}

function runToken(args) {
  const [action, ...rest] = args
  const api = require('..')
  if (action === 'decode') {
    const { positionals } = parseCommand('token', rest, {})
    if (positionals.length !== 1) throw new UsageError('token decode takes exactly one TOKEN')
    console.log(JSON.stringify(api.decodeConnectionToken(positionals[0]), null, 2))
    return
  }
  if (action === 'encode') {
    const { values } = parseCommand('token', rest, {
      'hub-host': { type: 'string' },
      'hub-port': { type: 'string' },
      hub: { type: 'string', multiple: true },
      'edge-id': { type: 'string' },
      secret: { type: 'string' },
      fingerprint: { type: 'string' },
    })
    if (values.hub === undefined) required(values, 'hub-host')
    console.log(
      api.encodeConnectionToken({
        ...hubConnection(values),
        edgeId: required(values, 'edge-id'),
        secret: required(values, 'secret'),
        hubFingerprint: values.fingerprint,
      }),
    )
    return
  }
  if (action === '--help' || action === '-h') {
    console.log(USAGE.token)
    return
  }
  throw new UsageError(`token needs 'encode' or 'decode'\n${USAGE.token}`)
}

async function main() {
  const [command, ...args] = process.argv.slice(2)
  switch (command) {
    case 'hub':
      return runHub(args)
    case 'edge':
      return runEdge(args)
    case 'token':
      return runToken(args)
    case 'demo':
      return require('./demo.js').runDemo(parseCommand('demo', args, { seconds: { type: 'string' } }).values, integer)
    case undefined:
    case '-h':
    case '--help':
      console.log(USAGE.main)
      return
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}\n${USAGE.main}`)
  }
}

main().catch((err) => {
  if (err instanceof UsageError || err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    process.stderr.write(`remoteingress: ${err.message}\n`)
    process.exit(2)
  }
  process.stderr.write(`remoteingress: ${err.code ? `[${err.code}] ` : ''}${err.message}\n`)
  process.exit(1)
})
