// Restarts and failures that clients do not see: hub processes from the CLI on 127.0.0.1,
// 127.0.0.3 and 127.0.0.4 (one tunnel port), an edge on all of them, and a steady load of short
// requests (each checked end to end) plus long-lived streams while hubs are rolled, killed or
// restarted.
import test from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import {
  behaviours,
  connect,
  echoOnce,
  echoOver,
  edgeConfig,
  findExecutable,
  GUARD_MS,
  metric,
  once,
  PACKAGE_ROOT,
  probeConnect,
  RemoteIngressEdge,
  SECRET,
  startTarget,
  stopQuietly,
  TEST_TRANSPORT,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const CLI = path.join(PACKAGE_ROOT, 'bin', 'remoteingress.js')
const HUB_ADDRESSES = ['127.0.0.1', '127.0.0.3', '127.0.0.4']
/** Requests per second the load issues, on the clock (a late timer issues the ones it owes). */
const RATE = 120
/** Fast reconnects (the CLI hubs ping at their default interval, so the silence bound stays too). */
const EDGE_KNOBS = { reconnectMinMs: 20, reconnectMaxMs: 200, connectTimeoutMs: 2000 }

/** Every CLI hub this file started that has not exited; cleanup kills them by pid. */
const children = new Set()
test.after(() => {
  for (const child of children) child.kill('SIGKILL')
})

/** A port free for TCP and UDP on every hub address. */
async function freePortOnAll() {
  for (let attempt = 0; attempt < 50; attempt++) {
    const probe = net.createServer()
    await new Promise((resolve) => probe.listen(0, HUB_ADDRESSES[0], resolve))
    const port = probe.address().port
    probe.close()
    const free = await Promise.all(
      HUB_ADDRESSES.flatMap((host) => [
        new Promise((resolve) => {
          const server = net.createServer().once('error', () => resolve(false))
          server.listen(port, host, () => server.close(() => resolve(true)))
        }),
        new Promise((resolve) => {
          const socket = dgram.createSocket('udp4').once('error', () => resolve(false))
          socket.bind(port, host, () => socket.close(() => resolve(true)))
        }),
      ]),
    )
    if (free.every(Boolean)) return port
  }
  throw new Error('no port free on every hub address')
}

/** Whether a TCP connection to `host:port` is accepted now. */
async function accepts(host, port) {
  return (await probeConnect(port, host)) === 'connected'
}

/**
 * A CLI hub on `address:port` with the edges in `edgesFile`. Resolves once it listens; returns
 * { child, address, instanceId, exited, lines }.
 */
async function startCliHub(address, port, edgesFile, { grace = 10, args = [] } = {}) {
  const instanceId = `hub-${address}-${Date.now()}`
  const child = spawn(
    process.execPath,
    [CLI, 'hub', '--edges', edgesFile, '--tunnel-port', String(port), '--bind', address, '--grace-period', String(grace),
      '--instance-id', instanceId, '--log-format', 'json', '--log-level', 'warn', ...args],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  children.add(child)
  const lines = []
  let buffered = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (chunk) => {
    buffered += chunk
    for (let end; (end = buffered.indexOf('\n')) !== -1; buffered = buffered.slice(end + 1)) {
      try {
        lines.push(JSON.parse(buffered.slice(0, end)))
      } catch {
        lines.push({ event: 'unparsed', text: buffered.slice(0, end) })
      }
    }
  })
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))).finally(() => children.delete(child))
  // --log-level warn keeps `started` out; listening shows as a TCP connect that succeeds.
  await waitFor(() => accepts(address, port), { what: `the hub on ${address}:${port} to listen` })
  return { child, address, instanceId, exited, lines }
}

/**
 * Clients come from these addresses in turn, as real ones come from many: the edge holds at most
 * 64 connections per source while no tunnel is up.
 */
const CLIENT_SOURCES = Array.from({ length: 50 }, (_, i) => `127.0.1.${i + 1}`)

/**
 * A steady load through the edge to an echo target on `port`: RATE short requests a second, each
 * a connection (from CLIENT_SOURCES in turn) that sends a unique text and checks the echo, and
 * `longStreams` connections that each exchange a line every 100 ms for `longMs` and start again.
 * `stop()` waits for all of it.
 */
function startLoad(port, { longStreams = 3, longMs = 3000 } = {}) {
  const results = { requests: 0, ok: 0, failures: [], slowestMs: 0, long: { completed: 0, failures: [] } }
  const inflight = new Set()
  let stopped = false
  const began = Date.now()
  const request = async (id) => {
    const start = Date.now()
    const text = `request ${id} ${'x'.repeat(40)}`
    try {
      const echoed = await echoOnce(port, text, 30_000, { localAddress: CLIENT_SOURCES[id % CLIENT_SOURCES.length] })
      if (echoed !== text) throw new Error(`echo mismatch: ${JSON.stringify(echoed.slice(0, 60))}`)
      results.ok++
      results.slowestMs = Math.max(results.slowestMs, Date.now() - start)
    } catch (err) {
      results.failures.push({ id, at: start, error: err.message })
    }
  }
  const timer = setInterval(() => {
    const owed = Math.floor(((Date.now() - began) * RATE) / 1000) - results.requests
    for (let i = 0; i < owed; i++) {
      const running = request(results.requests++)
      inflight.add(running)
      running.finally(() => inflight.delete(running))
    }
  }, 10)
  const longLoop = async (k) => {
    while (!stopped) {
      const start = Date.now()
      let client
      try {
        client = await connect(port, undefined, 30_000)
        for (let i = 0; Date.now() - start < longMs; i++) {
          const line = `long ${k} line ${i}\n`
          if ((await echoOver(client, line, 30_000)) !== line) throw new Error('long stream echo mismatch')
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
        results.long.completed++
      } catch (err) {
        results.long.failures.push({ stream: k, at: start, error: err.message })
      } finally {
        client?.destroy()
      }
    }
  }
  const longs = Array.from({ length: longStreams }, (_, k) => longLoop(k))
  return {
    results,
    async stop() {
      clearInterval(timer)
      results.seconds = (Date.now() - began) / 1000
      stopped = true
      await Promise.all(longs)
      await Promise.all(inflight)
      return results
    },
  }
}

const summary = (r) =>
  `${r.requests} requests over ${r.seconds.toFixed(1)} s (${(r.requests / r.seconds).toFixed(0)}/s), ${r.failures.length} failed, slowest ${r.slowestMs} ms; ` +
  `${r.long.completed} long streams completed, ${r.long.failures.length} failed`

/**
 * `count` hubs on the hub addresses, an edge (on all of them, or on what `edgeHubs(addresses,
 * port)` returns, with `edgeExtra`), an echo target; `run` gets the parts once `tunnels` tunnels
 * are up (default: one per hub).
 */
async function withHubs(count, run, { edgeHubs, edgeExtra = {}, hubArgs = [], tunnels = count, beforeEdge, afterEdge } = {}) {
  const target = await startTarget(behaviours.echo)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-ha-'))
  const edgesFile = path.join(dir, 'edges.json')
  fs.writeFileSync(edgesFile, JSON.stringify([{ id: 'ha-edge', secret: SECRET, listenPorts: [target.port] }]))
  const port = await freePortOnAll()
  const addresses = HUB_ADDRESSES.slice(0, count)
  const hubs = []
  const edge = new RemoteIngressEdge()
  try {
    for (const address of addresses) hubs.push(await startCliHub(address, port, edgesFile, { args: hubArgs }))
    const extra = (await beforeEdge?.({ port, hubs })) ?? {}
    const { hubHost, hubPort, ...rest } = edgeConfig(0, 'ha-edge', SECRET, { ...EDGE_KNOBS, ...edgeExtra })
    const hubList = edgeHubs ? edgeHubs(addresses, port, extra) : addresses.map((host) => ({ host, port }))
    await edge.start({ ...rest, hubs: hubList })
    const allUp = () => waitFor(async () => (await edge.getStatus()).tunnels.filter((t) => t.connected && !t.draining).length === tunnels, { what: `${tunnels} tunnels up` })
    await allUp()
    await waitFor(async () => (await edge.getStatus()).listenPorts.includes(target.port), { what: 'the edge to listen' })
    await run({ target, port, hubs, edge, edgesFile, allUp, extra })
  } finally {
    await stopQuietly(edge)
    for (const hub of hubs) if (hub.child.exitCode === null && hub.child.signalCode === null) hub.child.kill('SIGKILL')
    await afterEdge?.()
    await stopQuietly(target)
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('rolling restart of three hubs, each drained on SIGTERM: no request fails, long streams complete', { timeout: 180_000 }, async () => {
  await withHubs(3, async ({ port, hubs, edgesFile, allUp, target }) => {
    const load = startLoad(target.port, { longStreams: 3, longMs: 3000 })
    await new Promise((resolve) => setTimeout(resolve, 1000))
    for (let i = 0; i < hubs.length; i++) {
      const old = hubs[i]
      old.child.kill('SIGTERM')
      assert.deepEqual(await withTimeout(old.exited, 30_000, `hub ${old.address} to drain and exit`), { code: 0, signal: null })
      hubs[i] = await startCliHub(old.address, port, edgesFile)
      await allUp()
      await new Promise((resolve) => setTimeout(resolve, 500))
    }
    const results = await load.stop()
    console.log(`# rolling restart (${TEST_TRANSPORT}): ${summary(results)}`)
    assert.deepEqual(results.failures, [], 'no request failed')
    assert.deepEqual(results.long.failures, [], 'no long stream failed')
    assert.ok(results.requests >= RATE * 3, `the load ran: ${results.requests} requests`)
    assert.ok(results.long.completed >= 3, 'long streams completed across the restarts')
  })
})

test('the only hub stopped (SIGTERM) and started again 2 s later: no request fails, those in the gap wait for it', { timeout: 120_000 }, async () => {
  await withHubs(1, async ({ port, hubs, edgesFile, allUp, target }) => {
    const load = startLoad(target.port, { longStreams: 1, longMs: 1000 })
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const [old] = hubs
    old.child.kill('SIGTERM')
    assert.deepEqual(await withTimeout(old.exited, 30_000, 'the hub to drain and exit'), { code: 0, signal: null })
    const stoppedAt = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 2000))
    hubs[0] = await startCliHub(old.address, port, edgesFile)
    await allUp()
    const hubBackAt = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const results = await load.stop()
    console.log(`# single hub stopped, started again 2 s later (${TEST_TRANSPORT}): ${summary(results)}; back ${hubBackAt - stoppedAt} ms after the stop`)
    assert.deepEqual(results.failures, [], 'no request failed')
    assert.deepEqual(results.long.failures, [], 'no long stream failed')
    assert.ok(results.slowestMs >= 1000, `requests made in the gap waited for the hub (slowest ${results.slowestMs} ms)`)
  })
})

// Over QUIC a killed hub is noticed by its silence only (no reset), so there the hubs ping ten
// times a second and the edge gives up on a tunnel after 1 s of silence. What the edge sent to
// the dead hub meanwhile was never acknowledged, so it goes to the other hub.
const QUICK_SILENCE =
  TEST_TRANSPORT === 'quic'
    ? { hubArgs: ['--heartbeat-interval-ms', '100', '--heartbeat-timeout-ms', '3000'], edgeExtra: { heartbeatTimeoutMs: 1000 } }
    : {}
test('kill -9 of one of two hubs: only what was in flight on it fails; every request started after the kill succeeds', { timeout: 120_000 }, async () => {
  await withHubs(2, async ({ hubs, edge, target }) => {
    const load = startLoad(target.port, { longStreams: 2, longMs: 2000 })
    await new Promise((resolve) => setTimeout(resolve, 1000))
    const killed = hubs[0]
    const seen = once(edge, 'tunnelDisconnected', GUARD_MS, (e) => e.address.startsWith(`${killed.address}:`))
    const killedAt = Date.now()
    killed.child.kill('SIGKILL')
    assert.deepEqual(await withTimeout(killed.exited, GUARD_MS, 'the killed hub to exit'), { code: null, signal: 'SIGKILL' })
    // From here the hub is gone: nothing started now can have reached it.
    const goneAt = Date.now()
    await seen
    const seenAt = Date.now()
    await new Promise((resolve) => setTimeout(resolve, 2000))
    const results = await load.stop()
    const carried = metric(await edge.getMetrics(), 'remoteingress_edge_connections_carried_again_total')
    const afterKill = results.failures.filter((f) => f.at >= goneAt)
    const longAfterKill = results.long.failures.filter((f) => f.at >= goneAt)
    console.log(
      `# kill -9 of one of two hubs (${TEST_TRANSPORT}): ${summary(results)}; the edge saw the tunnel end ${seenAt - killedAt} ms after the kill; ` +
        `${carried} connections carried again on the other hub; ${results.failures.length - afterKill.length} failed requests had started before the hub was gone`,
    )
    assert.deepEqual(afterKill, [], 'every request started after the kill succeeded')
    assert.deepEqual(longAfterKill, [], 'every long stream started after the kill succeeded')
    assert.ok(results.ok > 0)
    if (TEST_TRANSPORT === 'quic') {
      // New connections went to both tunnels in turn until the edge noticed the silence.
      assert.ok(carried > 0, 'connections sent to the dead hub were carried again')
    }
  }, QUICK_SILENCE)
})

const haproxy = findExecutable('haproxy')
const requireHaproxy = process.env.REMOTEINGRESS_REQUIRE_HAPROXY === '1'
const haproxySkip =
  TEST_TRANSPORT === 'quic'
    ? 'HAProxy balances TCP; QUIC would need a UDP balancer'
    : !haproxy && !requireHaproxy && 'haproxy not found (set REMOTEINGRESS_REQUIRE_HAPROXY=1 to fail instead)'

test('connectionsPerHub: 2 through HAProxy in front of three hubs: two tunnels, to two distinct hubs', { skip: haproxySkip, timeout: 120_000 }, async () => {
  assert.ok(haproxy, 'REMOTEINGRESS_REQUIRE_HAPROXY=1 but haproxy is not installed')
  let balancer
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-haproxy-'))
  await withHubs(
    3,
    async ({ edge, hubs, target }) => {
      const status = await edge.getStatus()
      const reached = status.tunnels.filter((t) => t.connected).map((t) => t.instanceId)
      assert.equal(reached.length, 2)
      assert.equal(new Set(reached).size, 2, `two distinct hubs: ${reached}`)
      const ids = hubs.map((hub) => hub.instanceId)
      for (const id of reached) assert.ok(ids.includes(id), `${id} is one of ${ids}`)
      for (let i = 0; i < 10; i++) assert.equal(await echoOnce(target.port, `through haproxy ${i}`), `through haproxy ${i}`)
    },
    {
      tunnels: 2,
      edgeExtra: { connectionsPerHub: 2 },
      beforeEdge: async ({ port }) => {
        const lbPort = await freePortOnAll()
        const config = path.join(dir, 'haproxy.cfg')
        fs.writeFileSync(
          config,
          [
            'global',
            '  maxconn 256',
            'defaults',
            '  mode tcp',
            '  timeout connect 2s',
            '  timeout client 1h',
            '  timeout server 1h',
            'frontend hubs',
            `  bind 127.0.0.5:${lbPort}`,
            '  default_backend hubs',
            'backend hubs',
            '  balance roundrobin',
            ...HUB_ADDRESSES.map((address, i) => `  server hub${i} ${address}:${port}`),
            '',
          ].join('\n'),
        )
        balancer = spawn(haproxy, ['-f', config, '-db'], { stdio: ['ignore', 'ignore', 'pipe'] })
        children.add(balancer)
        balancer.once('exit', () => children.delete(balancer))
        await waitFor(() => accepts('127.0.0.5', lbPort), { what: 'HAProxy to listen' })
        return { lbPort }
      },
      edgeHubs: (addresses, port, { lbPort }) => [{ host: '127.0.0.5', port: lbPort }],
      afterEdge: async () => {
        balancer?.kill('SIGKILL')
        fs.rmSync(dir, { recursive: true, force: true })
      },
    },
  )
})
