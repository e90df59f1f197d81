// transport: tcpTls only (the CLI's hubs and edges run in child processes from its own flags, not the run's transport)
// The command line: the demo runs a whole tunnel and exits 0; tokens round-trip; usage errors
// exit 2 with a message; a hub and an edge run from the shell, reload their edge list, and stop
// cleanly on SIGTERM. Each command is a child process with a bounded run time.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import dgram from 'node:dgram'
import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'
import tls from 'node:tls'
import os from 'node:os'
import path from 'node:path'
import {
  PACKAGE_ROOT,
  SECRET,
  behaviours,
  connect,
  echoOnce,
  echoOver,
  edgeConfig,
  GUARD_MS,
  once,
  probeConnect,
  startConnectedEdge,
  startTarget,
  stopQuietly,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const CLI = path.join(PACKAGE_ROOT, 'bin', 'remoteingress.js')

function cli(args, timeoutMs = 30_000) {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs })
  assert.equal(result.error, undefined, `remoteingress ${args.join(' ')} did not finish: ${result.error?.message}`)
  return result
}

test('demo carries TCP and UDP through the tunnel, shows the real client addresses and exits 0', { timeout: 120_000 }, () => {
  const { status, stdout, stderr } = cli(['demo'], 90_000)
  assert.equal(status, 0, stderr)
  const tcpClients = [...stdout.matchAll(/^client {3}127\.0\.0\.1:(\d+) -> 127\.0\.0\.2:(\d+): hello 127\.0\.0\.1:(\d+),/gm)]
  assert.equal(tcpClients.length, 3, stdout)
  for (const [, clientPort, , echoed] of tcpClients) assert.equal(echoed, clientPort, 'the target names the client port')
  for (const [, clientPort, edgePort] of tcpClients) {
    assert.match(stdout, new RegExp(`PROXY TCP4 127\\.0\\.0\\.1 127\\.0\\.0\\.2 ${clientPort} ${edgePort}`))
  }
  const udp = /^client {3}UDP 127\.0\.0\.1:(\d+) -> 127\.0\.0\.2:\d+: hello 127\.0\.0\.1:(\d+),/m.exec(stdout)
  assert.ok(udp, stdout)
  assert.equal(udp[2], udp[1])
  assert.match(stdout, /UDP PROXY v2 0d0a0d0a000d0a515549540a2112000c7f0000017f000002/)
  assert.match(stdout, /^throughput: \d+\.\d\d MB through the tunnel in \d+\.\d\d s \(\d+\.\d MB\/s/m)
})

test('token encode and decode round-trip; bad input exits non-zero with a message', { timeout: 30_000 }, () => {
  const encoded = cli(['token', 'encode', '--hub-host', 'hub.example.net', '--hub-port', '9443', '--edge-id', 'e1', '--secret', 'top-secret'])
  assert.equal(encoded.status, 0, encoded.stderr)
  const token = encoded.stdout.trim()
  assert.match(token, /^[A-Za-z0-9_-]+$/)
  const decoded = cli(['token', 'decode', token])
  assert.equal(decoded.status, 0, decoded.stderr)
  assert.deepEqual(JSON.parse(decoded.stdout), {
    hubHost: 'hub.example.net',
    hubPort: 9443,
    hubs: [{ host: 'hub.example.net', port: 9443 }],
    edgeId: 'e1',
    secret: 'top-secret',
  })

  // Several hubs: `--hub HOST[:PORT]`, repeated; IPv6 in brackets.
  const several = cli(['token', 'encode', '--hub', 'hub-a.example.net', '--hub', '[2001:db8::7]:443', '--edge-id', 'e1', '--secret', 'top-secret'])
  assert.equal(several.status, 0, several.stderr)
  const hubs = JSON.parse(cli(['token', 'decode', several.stdout.trim()]).stdout).hubs
  assert.deepEqual(hubs, [{ host: 'hub-a.example.net', port: 8443 }, { host: '2001:db8::7', port: 443 }])
  const badPort = cli(['token', 'encode', '--hub', 'hub-a:https', '--edge-id', 'e1', '--secret', 's'])
  assert.equal(badPort.status, 2)
  assert.match(badPort.stderr, /--hub hub-a:https: the port must be a whole number/)
  const both = cli(['token', 'encode', '--hub', 'a', '--hub-host', 'b', '--edge-id', 'e1', '--secret', 's'])
  assert.equal(both.status, 2)
  assert.match(both.stderr, /give either --hub or --hub-host\/--hub-port, not both/)

  const bad = cli(['token', 'decode', 'not a token'])
  assert.equal(bad.status, 1)
  assert.match(bad.stderr, /ERR_INVALID_TOKEN/)

  const unknownFlag = cli(['hub', '--no-such-flag'])
  assert.equal(unknownFlag.status, 2)
  assert.match(unknownFlag.stderr, /no-such-flag/)

  const missing = cli(['hub'])
  assert.equal(missing.status, 2)
  assert.match(missing.stderr, /--edges is required/)

  const edgeFlags = ['edge', '--hub-host', '127.0.0.1', '--hub-port', '1', '--edge-id', 'e1', '--secret', 's', '--no-stun']
  const wordLanes = cli([...edgeFlags, '--lanes', 'many'])
  assert.equal(wordLanes.status, 2)
  assert.match(wordLanes.stderr, /--lanes must be auto or a whole number, got "many"/)
  const tooManyLanes = cli([...edgeFlags, '--lanes', '9'])
  assert.notEqual(tooManyLanes.status, 0)
  assert.match(tooManyLanes.stderr, /lanes: must be 'auto' or an integer from 1 to 8/)
})

/** A CLI child with JSON logs; `waitForLog` resolves with the first log line matching. */
function startCli(args) {
  const child = spawn(process.execPath, [CLI, ...args, '--log-format', 'json'], { stdio: ['ignore', 'ignore', 'pipe'] })
  const lines = []
  const waiters = new Set()
  let buffered = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    buffered += chunk
    let end
    while ((end = buffered.indexOf('\n')) >= 0) {
      const text = buffered.slice(0, end)
      buffered = buffered.slice(end + 1)
      let line
      try {
        line = JSON.parse(text)
      } catch {
        line = { event: 'unparsed', text }
      }
      lines.push(line)
      for (const waiter of waiters) if (waiter.match(line)) waiter.resolve(line)
    }
  })
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  return {
    child,
    lines,
    exited,
    waitForLog(match, what, timeoutMs = GUARD_MS) {
      const seen = lines.find(match)
      if (seen) return Promise.resolve(seen)
      let waiter
      const promise = new Promise((resolve) => {
        waiter = { match, resolve }
        waiters.add(waiter)
      })
      return withTimeout(promise, timeoutMs, `${what} in the ${args[0]} log`).finally(() => waiters.delete(waiter))
    },
  }
}

/** The status code and body of a GET. */
function httpStatus(url) {
  return withTimeout(
    new Promise((resolve, reject) => {
      http.get(url, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk) => (body += chunk))
        res.on('end', () => resolve({ status: res.statusCode, body }))
      }).on('error', reject)
    }),
    GUARD_MS,
    `GET ${url}`,
  )
}

/** The body of a GET that must answer 200. */
async function httpGet(url) {
  const { status, body } = await httpStatus(url)
  if (status !== 200) throw new Error(`${url}: HTTP ${status}`)
  return body
}

/** Parses Prometheus text strictly enough to catch a malformed line: name{labels} -> value. */
function parsePrometheus(text) {
  const samples = new Map()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})?) (\d+(?:\.\d+)?)$/.exec(line)
    assert.ok(match, `not a Prometheus sample line: ${JSON.stringify(line)}`)
    samples.set(match[1], Number(match[2]))
  }
  return samples
}

const echoes = async (port, text) => (await echoOnce(port, text)) === text

test('hub and edge from the command line: traffic, edges.json hot reload, SIGHUP, SIGTERM', { timeout: 180_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-cli-'))
  const edgesFile = path.join(dir, 'edges.json')
  // The first target also records what arrives, to check the per-port byte counters.
  const first = await startTarget((socket, record) => {
    socket.on('data', (chunk) => record.received.push(chunk))
    socket.pipe(socket)
  })
  const second = await startTarget(behaviours.echo)
  const writeEdges = (ports) =>
    fs.writeFileSync(edgesFile, JSON.stringify([{ id: 'cli-edge', secret: SECRET, listenPorts: ports }]))
  let hub, edge
  try {
    writeEdges([first.port])
    hub = startCli(['hub', '--edges', edgesFile, '--tunnel-port', '0', '--bind', '127.0.0.1', '--state-dir', path.join(dir, 'state'),
      '--metrics-port', '0'])
    const { url: metricsUrl } = await hub.waitForLog((l) => l.event === 'metricsListening', 'metricsListening')
    const { tunnelPort, certFingerprint } = await hub.waitForLog((l) => l.event === 'started', 'started')
    assert.match(certFingerprint, /^sha256\/[A-Za-z0-9_-]{43}$/)
    const hint = await hub.waitForLog((l) => l.event === 'tokenHint', 'tokenHint')
    assert.match(hint.command, new RegExp(`token encode .*--hub-port ${tunnelPort} .*--fingerprint ${certFingerprint.replace('/', '\\/')}`))

    edge = startCli(['edge', '--hub-host', '127.0.0.1', '--hub-port', String(tunnelPort), '--edge-id', 'cli-edge', '--secret', SECRET,
      '--bind', '127.0.0.2', '--no-stun', '--hub-fingerprint', certFingerprint, '--metrics-port', '0'])
    const { url: edgeMetricsUrl } = await edge.waitForLog((l) => l.event === 'metricsListening', 'metricsListening')
    await edge.waitForLog((l) => l.event === 'portsAssigned', 'portsAssigned')
    await waitFor(() => echoes(first.port, 'through the CLI tunnel'), { what: 'traffic through the CLI tunnel' })
    assert.match(first.connections.at(-1).raw.toString(), /^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.2 \d+ \d+\r\n$/)
    // Every byte the target received came through the hub (the PROXY header is not payload).
    const toTarget = first.connections.reduce((sum, c) => sum + Buffer.concat(c.received).length, 0)
    assert.ok(toTarget >= 'through the CLI tunnel'.length)
    // The byte counters are bumped by the hub's and the edge's own threads just after the bytes
    // moved, not in step with the echo: read each side until its count of them is in.
    const settled = async (url, key) => {
      let samples
      await waitFor(async () => (samples = parsePrometheus(await httpGet(url))).get(key) >= toTarget, { what: `${key} to reach ${toTarget}` }).catch(() => {})
      return samples
    }
    const metrics = await settled(metricsUrl, `remoteingress_hub_port_bytes_total{edge="cli-edge",port="${first.port}",direction="to_target"}`)
    assert.equal(metrics.get('remoteingress_hub_edges_connected'), 1)
    assert.equal(metrics.get(`remoteingress_hub_streams_total{edge="cli-edge",port="${first.port}"}`), first.connections.length)
    assert.ok(metrics.get('remoteingress_hub_received_bytes_total{edge="cli-edge"}') > 'through the CLI tunnel'.length)
    assert.equal(metrics.get('remoteingress_hub_handshake_failures_total{reason="auth"}'), 0)
    assert.equal(metrics.get(`remoteingress_hub_port_bytes_total{edge="cli-edge",port="${first.port}",direction="to_target"}`), toTarget)
    const edgeMetrics = await settled(edgeMetricsUrl, `remoteingress_edge_port_bytes_total{port="${first.port}",direction="from_clients"}`)
    assert.equal(edgeMetrics.get('remoteingress_edge_connected'), 1)
    assert.equal(edgeMetrics.get('remoteingress_edge_connects_total'), 1)
    assert.equal(edgeMetrics.get(`remoteingress_edge_streams_total{port="${first.port}"}`), first.connections.length)
    assert.equal(edgeMetrics.get(`remoteingress_edge_listening{protocol="tcp",port="${first.port}"}`), 1)
    assert.ok(edgeMetrics.get('remoteingress_edge_sent_bytes_total') > 'through the CLI tunnel'.length)
    assert.equal(edgeMetrics.get(`remoteingress_edge_port_bytes_total{port="${first.port}",direction="from_clients"}`), toTarget)
    // Probes on the metrics port: alive, and ready (the hub while it serves, the edge while its
    // tunnel is up).
    const probe = (metrics, path) => httpStatus(metrics.replace(/\/metrics$/, path))
    for (const url of [metricsUrl, edgeMetricsUrl]) {
      assert.deepEqual(await probe(url, '/healthz'), { status: 200, body: 'ok\n' })
      assert.deepEqual(await probe(url, '/readyz'), { status: 200, body: 'ready\n' })
      assert.equal((await probe(url, '/nothing')).status, 404)
    }

    writeEdges([first.port, second.port])
    await hub.waitForLog((l) => l.event === 'edgesReloaded', 'edgesReloaded after a file change')
    await edge.waitForLog((l) => l.event === 'portsUpdated' && l.listenPorts.includes(second.port), 'portsUpdated with the new port')
    await waitFor(() => echoes(second.port, 'new port'), { what: 'traffic on the added port' })

    fs.writeFileSync(edgesFile, '[{"id": "cli-edge", broken')
    await hub.waitForLog((l) => l.event === 'edgesReloadFailed', 'edgesReloadFailed for a broken file')
    assert.ok(await echoes(first.port, 'still the last good list'))
    assert.ok(await echoes(second.port, 'still the last good list'))

    // Client rules in edges.json reach the edge: the second port turns loopback away.
    const denied = { [second.port]: { clients: { deny: ['127.0.0.0/8'] } } }
    fs.writeFileSync(edgesFile, JSON.stringify([{ id: 'cli-edge', secret: SECRET, listenPorts: [first.port, second.port], ports: denied }]))
    await waitFor(async () => !(await echoes(second.port, 'denied').catch(() => false)), { what: 'the deny list from edges.json at the edge' })
    assert.ok(await echoes(first.port, 'the other port still serves'))
    const refused = `remoteingress_edge_clients_refused_total{reason="denied",protocol="tcp",port="${second.port}"}`
    await waitFor(async () => parsePrometheus(await httpGet(edgeMetricsUrl)).get(refused) >= 1, { what: 'the denial counted' })

    writeEdges([second.port])
    hub.child.kill('SIGHUP')
    await edge.waitForLog((l) => l.event === 'portsUpdated' && !l.listenPorts.includes(first.port), 'portsUpdated without the removed port')
    await hub.waitForLog((l) => l.event === 'edgesReloaded' && l.why === 'SIGHUP', 'edgesReloaded on SIGHUP')
    await waitFor(async () => (await probeConnect(first.port)) === 'ECONNREFUSED', { what: 'the removed port to refuse' })

    // The hub goes first, draining: not ready, its open connection still served, and it exits
    // once that connection is done. The edge, alive, is then not ready without its tunnel.
    const open = await connect(second.port)
    assert.equal(await echoOver(open, 'before the drain'), 'before the drain')
    hub.child.kill('SIGTERM')
    await hub.waitForLog((l) => l.event === 'stopping' && l.graceMs === 30000, 'stopping with the default grace')
    await waitFor(async () => (await probe(metricsUrl, '/readyz')).status === 503, { what: 'the draining hub to say not ready' })
    assert.equal((await probe(metricsUrl, '/healthz')).status, 200, 'alive while it drains')
    assert.equal(await echoOver(open, 'during the drain'), 'during the drain')
    assert.equal(hub.child.exitCode, null, 'the drain waits for the open connection')
    open.destroy()
    assert.deepEqual(await withTimeout(hub.exited, GUARD_MS, 'the hub to exit'), { code: 0, signal: null })
    await edge.waitForLog((l) => l.event === 'tunnelDisconnected', 'tunnelDisconnected')
    assert.deepEqual(await probe(edgeMetricsUrl, '/readyz'), { status: 503, body: 'not ready\n' })
    assert.equal((await probe(edgeMetricsUrl, '/healthz')).status, 200)
    edge.child.kill('SIGTERM')
    assert.deepEqual(await withTimeout(edge.exited, GUARD_MS, 'the edge to exit'), { code: 0, signal: null })
    assert.equal(await probeConnect(second.port), 'ECONNREFUSED', 'the edge freed its port')
    await new Promise((resolve, reject) => {
      const server = net.createServer().once('error', reject)
      server.listen(tunnelPort, '127.0.0.1', () => server.close(resolve))
    })
  } finally {
    for (const cli of [edge, hub]) if (cli && cli.child.exitCode === null) cli.child.kill('SIGKILL')
    await stopQuietly(first, second)
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test("hub reload sees a Kubernetes Secret update: the mount's ..data symlink swapped to a new directory", { timeout: 60_000 }, async () => {
  // The layout kubelet writes: edges.json -> ..data/edges.json, ..data -> ..<timestamp>, and an
  // update makes a new directory and renames a new ..data symlink over the old one.
  const mount = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-secret-'))
  const publish = (version, edges) => {
    const dir = path.join(mount, `..2026_12_07_00_00_0${version}.000000000`)
    fs.mkdirSync(dir)
    fs.writeFileSync(path.join(dir, 'edges.json'), JSON.stringify(edges))
    fs.symlinkSync(path.basename(dir), path.join(mount, '..data_tmp'))
    fs.renameSync(path.join(mount, '..data_tmp'), path.join(mount, '..data'))
    return dir
  }
  const target = await startTarget(behaviours.echo)
  const added = await startTarget(behaviours.echo)
  let hub, edge
  try {
    const first = publish(1, [{ id: 'k8s-edge', secret: SECRET, listenPorts: [target.port] }])
    fs.symlinkSync('..data/edges.json', path.join(mount, 'edges.json'))
    hub = startCli(['hub', '--edges', path.join(mount, 'edges.json'), '--tunnel-port', '0', '--bind', '127.0.0.1'])
    const { tunnelPort } = await hub.waitForLog((l) => l.event === 'started', 'started')
    ;({ edge } = await startConnectedEdge(edgeConfig(tunnelPort, 'k8s-edge')))
    const updated = once(edge, 'portsUpdated')
    publish(2, [{ id: 'k8s-edge', secret: SECRET, listenPorts: [target.port, added.port] }])
    fs.rmSync(first, { recursive: true })
    await hub.waitForLog((l) => l.event === 'edgesReloaded', 'edgesReloaded after the swap')
    assert.deepEqual((await updated).listenPorts.sort((a, b) => a - b), [target.port, added.port].sort((a, b) => a - b))
    assert.ok(await echoes(added.port, 'through the port the new Secret added'))
  } finally {
    await stopQuietly(edge)
    if (hub && hub.child.exitCode === null) hub.child.kill('SIGKILL')
    await stopQuietly(target, added)
    fs.rmSync(mount, { recursive: true, force: true })
  }
})

test('hub --no-quic leaves the UDP twin of the tunnel port alone; pending-handshake flags and --refuse-4-13 reach the hub', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-cli-'))
  const edgesFile = path.join(dir, 'edges.json')
  fs.writeFileSync(edgesFile, JSON.stringify([{ id: 'cli-edge', secret: SECRET }]))
  let hub
  try {
    hub = startCli(['hub', '--edges', edgesFile, '--tunnel-port', '0', '--bind', '127.0.0.1', '--no-quic', '--refuse-4-13',
      '--max-pending-handshakes', '2', '--max-pending-handshakes-per-source', '1', '--metrics-port', '0'])
    const { url: metricsUrl } = await hub.waitForLog((l) => l.event === 'metricsListening', 'metricsListening')
    const { tunnelPort } = await hub.waitForLog((l) => l.event === 'started', 'started')
    // Nothing holds the UDP port: this process can bind it.
    const udp = dgram.createSocket('udp4')
    await new Promise((resolve, reject) => udp.once('error', reject).bind(tunnelPort, '127.0.0.1', resolve))
    udp.close()
    // One pending place per source: a second idle connection from 127.0.0.7 evicts the first.
    const first = net.connect({ host: '127.0.0.1', port: tunnelPort, localAddress: '127.0.0.7' })
    first.on('error', () => {})
    const firstClosed = new Promise((resolve) => first.once('close', resolve))
    await new Promise((resolve) => first.once('connect', resolve))
    await waitFor(async () => parsePrometheus(await httpGet(metricsUrl)).get('remoteingress_hub_handshakes_pending') === 1, {
      timeoutMs: 15000,
      what: 'the first connection pending',
    })
    const second = net.connect({ host: '127.0.0.1', port: tunnelPort, localAddress: '127.0.0.7' })
    second.on('error', () => {})
    await withTimeout(firstClosed, 15000, 'the first connection evicted')
    second.destroy()
    const metrics = parsePrometheus(await httpGet(metricsUrl))
    assert.equal(metrics.get('remoteingress_hub_handshake_failures_total{reason="evicted"}'), 1)
    // --refuse-4-13: a TLS connection that offers no ALPN (the 4.13 protocol) is closed unanswered.
    const legacy = tls.connect({ host: '127.0.0.1', port: tunnelPort, rejectUnauthorized: false })
    legacy.on('error', () => {})
    const legacyAnswer = []
    legacy.on('data', (chunk) => legacyAnswer.push(chunk))
    const legacyClosed = new Promise((resolve) => legacy.once('close', resolve))
    legacy.once('secureConnect', () => legacy.write(`EDGE cli-edge ${SECRET}\n`))
    await hub.waitForLog((l) => l.event === 'warning' && l.code === 'handshakeFailed' && l.message.includes('4.13'), 'the 4.13 refusal')
    await withTimeout(legacyClosed, 15000, 'the 4.13 connection closed')
    assert.equal(Buffer.concat(legacyAnswer).length, 0, 'no answer to a refused 4.13 edge')
    hub.child.kill('SIGTERM')
    assert.deepEqual(await withTimeout(hub.exited, 15000, 'the hub to exit'), { code: 0, signal: null })
  } finally {
    if (hub && hub.child.exitCode === null) hub.child.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
