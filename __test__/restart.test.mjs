// Processes that die: a hub killed with SIGKILL (once under open connections, then 100 times in
// a row) and replaced by a new process on the same port with the same key, an edge that starts
// before its hub exists, and edge processes killed with SIGKILL under an open connection. The
// killed side runs in a child process (__test__/fixtures), the side that survives in this one.
import test from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import path from 'node:path'
import { spawn } from 'node:child_process'
import {
  behaviours,
  connect,
  countsComeBack,
  EDGE_ADDRESS,
  echoOnce,
  edgeConfig,
  freeUdpAndTcpPort,
  GUARD_MS,
  once,
  PACKAGE_ROOT,
  processCounts,
  readBytes,
  recordEvents,
  remoteingress,
  RemoteIngressEdge,
  SECRET,
  socketEnding,
  startConnectedEdge,
  startHub,
  startTarget,
  stopQuietly,
  waitFor,
  withTimeout,
  TEST_TRANSPORT,
} from './helpers.mjs'

/** Transports the edge is tested over; a second one (QUIC) is added here when it exists. */
const TRANSPORTS = [TEST_TRANSPORT]

/** Fast reconnects, so a restart costs tens of milliseconds, not seconds. */
const FAST_EDGE = { reconnectMinMs: 20, reconnectMaxMs: 100, connectTimeoutMs: 2000, heartbeatTimeoutMs: 5000 }
/**
 * QUIC has no RST: a killed peer is noticed only by its silence (a hub that is not up yet only
 * by a connect timeout), so over QUIC the edge's heartbeatTimeoutMs, which is also the QUIC
 * connection's idle timeout, is short: a killed hub or edge is noticed after 1 s. Not shorter:
 * a live peer on a loaded machine must never be silent that long (the hub pings ten times a
 * second), or a tunnel is dropped that was not killed and the exact counts below are off. The
 * hub's own heartbeat timeout is longer, so a killed edge, too, is noticed by the idle timeout.
 */
const QUICK_SILENCE = {
  edge: { heartbeatTimeoutMs: 1000 },
  hub: { heartbeatIntervalMs: 100, heartbeatTimeoutMs: 2000 },
}
const edgeKnobs = (transportMode) => (transportMode === 'quic' ? { ...FAST_EDGE, ...QUICK_SILENCE.edge } : FAST_EDGE)
const hubKnobs = () => (TEST_TRANSPORT === 'quic' ? QUICK_SILENCE.hub : {})
/**
 * An edge process that gets killed, against a hub that is always up: its connect attempts get
 * 10 s, as a handshake cut off on a loaded machine would cost the hub a session it counts.
 */
const killedEdgeKnobs = (transportMode) => ({ ...edgeKnobs(transportMode), connectTimeoutMs: 10000 })

const FIXTURES = path.join(PACKAGE_ROOT, '__test__', 'fixtures')

/** Every child this file started and that has not closed yet; cleanup kills them by pid. */
const children = new Set()

/**
 * Runs a fixture (`hub-process.mjs` or `edge-process.mjs`) with its JSON config in the
 * environment variable `envName`. Returns { child, pid, messages, message(), go(), kill(),
 * exited }: `messages` are the parsed stdout lines, `exited` resolves with { code, signal }
 * once the process has exited and its pipes are closed.
 */
function spawnFixture(script, envName, config) {
  const child = spawn(process.execPath, [path.join(FIXTURES, script)], {
    env: { ...process.env, [envName]: JSON.stringify(config) },
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  children.add(child)
  const messages = []
  const waiters = new Set()
  let stderr = ''
  let pending = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk) => {
    pending += chunk
    for (let newline = pending.indexOf('\n'); newline !== -1; newline = pending.indexOf('\n')) {
      const line = pending.slice(0, newline)
      pending = pending.slice(newline + 1)
      let message
      try {
        message = JSON.parse(line)
      } catch {
        message = { type: 'unparsed', line }
      }
      messages.push(message)
      for (const waiter of waiters) {
        if (waiter.filter(message)) {
          waiters.delete(waiter)
          waiter.resolve(message)
        }
      }
    }
  })
  child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
  child.stdin.on('error', () => {})
  const exited = new Promise((resolve) =>
    child.once('close', (code, signal) => {
      children.delete(child)
      resolve({ code, signal })
    }),
  )
  const fixture = {
    child,
    pid: child.pid,
    messages,
    exited,
    stderr: () => stderr,
    /** The first stdout message (already received or not) that passes `filter`. Bounded. */
    message(filter, timeoutMs = GUARD_MS, what = 'a message') {
      const found = messages.find(filter)
      if (found) return Promise.resolve(found)
      let waiter
      const arrived = new Promise((resolve) => {
        waiter = { filter, resolve }
        waiters.add(waiter)
      })
      const died = exited.then(({ code, signal }) => {
        throw new Error(`${script} (pid ${child.pid}) exited with ${code ?? signal} before ${what}; stderr: ${stderr}`)
      })
      return withTimeout(Promise.race([arrived, died]), timeoutMs, `${what} from ${script} (pid ${child.pid})`).finally(() =>
        waiters.delete(waiter),
      )
    },
    /** An event the fixture printed: { event, payload }. */
    event(name, timeoutMs = GUARD_MS, filter = () => true) {
      return fixture.message((m) => m.type === 'event' && m.event === name && filter(m.payload), timeoutMs, `event '${name}'`)
    },
    /** Lets a hub started with waitForGo start. */
    go() {
      child.stdin.write('go\n')
    },
    /** Sends `signal` to this child, by its pid, if it is still running. */
    kill(signal) {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, signal)
    },
  }
  return fixture
}

/** Resolves with the fixture's 'ready' message; throws if it reported a failed start. */
async function ready(fixture, timeoutMs = GUARD_MS) {
  const message = await fixture.message((m) => m.type === 'ready' || m.type === 'failed', timeoutMs, "'ready'")
  if (message.type === 'failed') throw new Error(`fixture failed to start: ${message.code} ${message.message}`)
  return message
}

/** A hub process on 127.0.0.1:`port` (0 = any) with the given key and allowed edges. */
function spawnHub({ port, cert, edges, waitForGo = false }) {
  const start = { tunnelPort: port, bindAddress: '127.0.0.1', targetHost: '127.0.0.1', tls: { certPem: cert.certPem, keyPem: cert.keyPem }, ...hubKnobs() }
  return spawnFixture('hub-process.mjs', 'REMOTEINGRESS_TEST_HUB', { start, edges, waitForGo })
}

async function startHubProcess(options) {
  const hub = spawnHub(options)
  hub.ready = await ready(hub)
  return hub
}

function spawnEdge(start) {
  return spawnFixture('edge-process.mjs', 'REMOTEINGRESS_TEST_EDGE', { start })
}

/** Kills every child still running (SIGKILL, by pid) and waits, bounded, for each to exit. */
async function killChildren() {
  const pending = [...children]
  for (const child of pending) {
    try {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL')
    } catch {}
  }
  await withTimeout(
    Promise.all(pending.map((child) => new Promise((resolve) => (children.has(child) ? child.once('close', resolve) : resolve())))),
    5000,
    'killed children to exit',
  ).catch((err) => console.error(`cleanup: ${err.message}`))
}

/**
 * One connection to the edge's `port` while no tunnel is up. The edge keeps listening and
 * resets what it accepts: 'accepted, then reset', or 'reset during connect' when the reset
 * overtakes Node's connect callback. Anything else (ECONNREFUSED from a closed port, a FIN,
 * data, no answer) is returned as it is and fails the caller's assertion.
 */
async function probeWhileDown(port) {
  const socket = net.connect({ port, host: EDGE_ADDRESS })
  let connected = false
  socket.once('connect', () => (connected = true))
  try {
    const { how, bytes } = await socketEnding(socket, 10_000)
    if (bytes > 0) return `${bytes} bytes received`
    if (how === 'reset') return connected ? 'accepted, then reset' : 'reset during connect'
    return how
  } catch (err) {
    return err.message
  } finally {
    socket.destroy()
  }
}

/** A port on 127.0.0.1 with nothing on it right now, TCP and UDP (a QUIC hub binds both). */
const deadPort = freeUdpAndTcpPort

const EDGE_ID = 'restarted-hub-edge'

for (const transportMode of TRANSPORTS) {
  test(`[${transportMode}] hub killed with SIGKILL under open connections: clients are reset, the edge port stays bound, the edge reconnects to a new hub process`, { timeout: 120000 }, async () => {
    const target = await startTarget(behaviours.echo)
    const cert = remoteingress.generateHubCertificate()
    const allowed = [{ id: EDGE_ID, secret: SECRET, listenPorts: [target.port] }]
    let edge, firstHub, secondHub
    const clients = []
    try {
      firstHub = await startHubProcess({ port: 0, cert, edges: allowed })
      const hubPort = firstHub.ready.port
      assert.equal(firstHub.ready.fingerprint, cert.fingerprint, 'the hub process uses the key it was given')
      // Pinned: the edge talks only to a hub with this key, so the new process must reuse it.
      // connectWaitMs 0: clients that find no tunnel are reset at once (lifecycle.test.mjs has
      // them wait for one).
      ;({ edge } = await startConnectedEdge(
        edgeConfig(hubPort, EDGE_ID, SECRET, { ...edgeKnobs(transportMode), transportMode, hubFingerprint: cert.fingerprint, connectWaitMs: 0 }),
      ))
      const edgeEvents = recordEvents(edge, ['tunnelConnected', 'tunnelDisconnected', 'portsAssigned', 'warning'])

      for (let i = 0; i < 3; i++) {
        const client = await connect(target.port)
        clients.push(client)
        const echoed = readBytes(client, 7)
        client.write(`before${i}`)
        assert.equal((await echoed).toString(), `before${i}`)
      }
      const endings = clients.map((client) => socketEnding(client))
      const disconnected = once(edge, 'tunnelDisconnected')
      firstHub.kill('SIGKILL')
      assert.deepEqual(await withTimeout(firstHub.exited, GUARD_MS, 'the killed hub to exit'), { code: null, signal: 'SIGKILL' })
      const { reason } = await disconnected
      assert.match(reason, transportMode === 'quic' ? /connection lost|peer closed|heartbeat timeout/ : /connection lost|peer closed/, `tunnelDisconnected reason: ${reason}`)
      // The tunnel is gone, so each tunneled connection is aborted: a reset, never a clean end
      // that a client could take for a complete answer.
      assert.deepEqual(await Promise.all(endings), clients.map(() => ({ how: 'reset', bytes: 0 })))

      // While the hub is down the edge keeps its listener and turns clients away with a reset.
      const down = await edge.getStatus()
      assert.equal(down.connected, false)
      assert.equal(down.activeStreams, 0)
      assert.deepEqual(down.listenPorts, [target.port], 'the edge still listens while its hub is down')
      const outcomes = []
      for (let i = 0; i < 10; i++) outcomes.push(await probeWhileDown(target.port))
      for (const outcome of outcomes) assert.ok(['accepted, then reset', 'reset during connect'].includes(outcome), `probes while down: ${outcomes}`)
      await waitFor(() => edgeEvents.of('warning').filter((w) => w.code === 'connectFailed').length >= 2, {
        what: 'the edge to keep trying (two connectFailed warnings)',
      })
      assert.equal(target.connections.length, 3, 'nothing reached the target while the hub was down')

      const reconnected = once(edge, 'tunnelConnected')
      secondHub = await startHubProcess({ port: hubPort, cert, edges: allowed })
      assert.equal(secondHub.ready.port, hubPort)
      await reconnected
      for (let i = 0; i < 3; i++) assert.equal(await echoOnce(target.port, `after restart ${i}`), `after restart ${i}`)
      await waitFor(() => target.connections.length === 6 && target.connections.every((c) => c.source?.address === '127.0.0.1'), {
        what: 'three new connections at the target, each with the client address in its PROXY header',
      })

      assert.deepEqual(edgeEvents.of('portsAssigned'), [{ listenPorts: [target.port], listenPortsUdp: [] }])
      assert.equal(edgeEvents.of('tunnelDisconnected').length, 1)
      assert.deepEqual(edgeEvents.of('warning').filter((w) => w.code !== 'connectFailed'), [], 'no other warning (no listenFailed)')
      const up = await edge.getStatus()
      assert.equal(up.connected, true)
      assert.deepEqual(up.listenPorts, [target.port])

      // The fixture's own contract: SIGTERM stops the hub and exits 0.
      const lost = once(edge, 'tunnelDisconnected')
      secondHub.kill('SIGTERM')
      assert.deepEqual(await withTimeout(secondHub.exited, GUARD_MS, 'the hub process to exit on SIGTERM'), { code: 0, signal: null })
      await lost
    } finally {
      for (const client of clients) client.destroy()
      await stopQuietly(edge, target)
      await killChildren()
    }
  })

  test(`[${transportMode}] an edge started before its hub exists retries, and connects once the hub process starts`, { timeout: 90000 }, async () => {
    const target = await startTarget(behaviours.echo)
    const cert = remoteingress.generateHubCertificate()
    const hubPort = await deadPort()
    const edge = new RemoteIngressEdge()
    const events = recordEvents(edge, ['tunnelConnected', 'warning'])
    try {
      await withTimeout(edge.start(edgeConfig(hubPort, EDGE_ID, SECRET, { ...edgeKnobs(transportMode), transportMode, hubFingerprint: cert.fingerprint })), GUARD_MS, 'edge.start()')
      await waitFor(() => events.of('warning').filter((w) => w.code === 'connectFailed').length >= 3, {
        what: 'three failed connection attempts',
      })
      for (const warning of events.of('warning')) {
        assert.equal(warning.code, 'connectFailed')
        assert.match(warning.message, new RegExp(`127\\.0\\.0\\.1:${hubPort}`), 'the warning names the hub address')
      }
      const waiting = await edge.getStatus()
      assert.equal(waiting.connected, false)
      assert.deepEqual(waiting.listenPorts, [])
      assert.equal(events.of('tunnelConnected').length, 0)

      const connected = once(edge, 'tunnelConnected')
      const assigned = once(edge, 'portsAssigned')
      const hub = await startHubProcess({ port: hubPort, cert, edges: [{ id: EDGE_ID, secret: SECRET, listenPorts: [target.port] }] })
      await Promise.all([connected, assigned])
      await hub.event('edgeConnected', GUARD_MS, (e) => e.edgeId === EDGE_ID)
      assert.equal(await echoOnce(target.port, 'late hub'), 'late hub')
    } finally {
      await stopQuietly(edge, target)
      await killChildren()
    }
  })

  const RESTARTS = 100
  test(`[${transportMode}] ${RESTARTS} hub restarts in a row with SIGKILL: the edge reconnects each time and ends with its descriptors and threads as before`, { timeout: transportMode === 'quic' ? 600000 : 300000 }, async () => {
    const target = await startTarget(behaviours.echo)
    const cert = remoteingress.generateHubCertificate()
    const allowed = [{ id: EDGE_ID, secret: SECRET, listenPorts: [target.port] }]
    let edge
    try {
      let current = await startHubProcess({ port: 0, cert, edges: allowed })
      const hubPort = current.ready.port
      ;({ edge } = await startConnectedEdge(edgeConfig(hubPort, EDGE_ID, SECRET, { ...edgeKnobs(transportMode), transportMode, hubFingerprint: cert.fingerprint })))
      const events = recordEvents(edge, ['tunnelConnected', 'tunnelDisconnected', 'portsAssigned', 'warning'])
      // The next hub is started ahead and waits for "go", so a restart does not wait for Node
      // to boot; it starts listening once the killed one has exited, without waiting for the
      // edge to notice (over QUIC only the silence tells it), so its reconnect finds a hub up
      // rather than waiting out a connect attempt.
      let next = spawnHub({ port: hubPort, cert, edges: allowed, waitForGo: true })
      let slowest = 0
      const restart = async (n) => {
        const began = Date.now()
        const disconnected = once(edge, 'tunnelDisconnected')
        const reconnected = once(edge, 'tunnelConnected')
        current.kill('SIGKILL')
        await withTimeout(current.exited, GUARD_MS, `restart ${n}: the killed hub to exit`)
        next.go()
        await disconnected
        current = next
        next = spawnHub({ port: hubPort, cert, edges: allowed, waitForGo: true })
        await ready(current)
        await withTimeout(reconnected, GUARD_MS, `restart ${n}: the edge to reconnect`)
        slowest = Math.max(slowest, Date.now() - began)
      }

      // Warm-up: Node's and the runtime's lazily created threads and handles appear first.
      for (let n = 0; n < 3; n++) await restart(n)
      assert.equal(await echoOnce(target.port, 'warm'), 'warm')
      const before = processCounts()
      for (let n = 0; n < RESTARTS; n++) {
        await restart(n)
        if (n % 10 === 9) assert.equal(await echoOnce(target.port, `restart ${n}`), `restart ${n}`)
      }
      assert.equal(await echoOnce(target.port, 'after all restarts'), 'after all restarts')

      // Same state as at `before`: one hub process up, one waiting, the edge connected and idle.
      // No tolerance, after a bounded wait: both moments hold the same descriptors (the two
      // children's pipes, the target's listener, the edge's listener and its one tunnel socket;
      // listing /proc/self/fd shows only new inode numbers), but a socket closed just before
      // may take a loop turn to leave the table. A leak of one per restart would be 100.
      const after = await countsComeBack(before, { fdSlack: 0, threadSlack: 0, what: `the edge's process after ${RESTARTS} hub restarts` })
      console.log(`${RESTARTS} hub restarts: slowest ${slowest} ms; fds ${before.fds} -> ${after.fds}, threads ${before.threads} -> ${after.threads}`)

      assert.equal(events.of('tunnelConnected').length, 3 + RESTARTS, 'one tunnelConnected per restart')
      assert.equal(events.of('tunnelDisconnected').length, 3 + RESTARTS, 'one tunnelDisconnected per restart')
      assert.ok(events.of('portsAssigned').every((p) => p.listenPorts.length === 1 && p.listenPorts[0] === target.port))
      assert.deepEqual(events.of('warning').filter((w) => w.code !== 'connectFailed'), [], 'no warning but connectFailed')
      const status = await edge.getStatus()
      assert.equal(status.connected, true)
      assert.deepEqual(status.listenPorts, [target.port])
    } finally {
      await stopQuietly(edge, target)
      await killChildren()
    }
  })

  const EDGE_KILLS = 20
  test(`[${transportMode}] ${EDGE_KILLS} edge processes killed with SIGKILL under an open connection: the hub notices each at once and ends as it began`, { timeout: 180000 }, async () => {
    const target = await startTarget(behaviours.echo)
    const edgeId = 'killed-edge'
    let hub
    try {
      ;({ hub } = await startHub([{ id: edgeId, secret: SECRET, listenPorts: [target.port] }], hubKnobs()))
      const { tunnelPort: hubPort, certFingerprint } = await hub.getStatus()
      const hubEvents = recordEvents(hub, ['edgeConnected', 'edgeDisconnected', 'streamOpened', 'streamClosed', 'warning'])
      const startEdgeProcess = async () => {
        const connected = once(hub, 'edgeConnected', GUARD_MS, (e) => e.edgeId === edgeId)
        const edgeProcess = spawnEdge(edgeConfig(hubPort, edgeId, SECRET, { ...killedEdgeKnobs(transportMode), transportMode, hubFingerprint: certFingerprint }))
        await ready(edgeProcess)
        await edgeProcess.event('portsAssigned')
        await connected
        return edgeProcess
      }

      let slowest = 0
      const life = async (n) => {
        const edgeProcess = await startEdgeProcess()
        const opened = once(hub, 'streamOpened')
        const client = await connect(target.port)
        const echoed = readBytes(client, 4)
        client.write('live')
        assert.equal((await echoed).toString(), 'live')
        const { streamId } = await opened
        const clientEnding = socketEnding(client)
        const disconnected = once(hub, 'edgeDisconnected', GUARD_MS, (e) => e.edgeId === edgeId)
        const streamClosed = once(hub, 'streamClosed', GUARD_MS, (e) => e.streamId === streamId)
        const killedAt = Date.now()
        edgeProcess.kill('SIGKILL')
        const { reason } = await disconnected
        slowest = Math.max(slowest, Date.now() - killedAt)
        assert.match(reason, /connection lost|peer closed/, `kill ${n}: edgeDisconnected reason ${reason}`)
        await streamClosed
        // Removed from the hub's table before the event was sent.
        assert.deepEqual((await hub.getStatus()).connectedEdges, [], `kill ${n}: no connected edge left`)
        await withTimeout(edgeProcess.exited, GUARD_MS, `kill ${n}: the edge process to exit`)
        assert.ok(['reset', 'end'].includes((await clientEnding).how), `kill ${n}: the client's connection ends with the edge`)
      }

      for (let n = 0; n < 2; n++) await life(n) // warm-up
      await waitFor(() => target.connections.every((c) => c.socket.destroyed), { what: 'the warm-up target connections to close' })
      const before = processCounts()
      for (let n = 0; n < EDGE_KILLS; n++) await life(n)
      assert.equal(hubEvents.of('edgeDisconnected').length, 2 + EDGE_KILLS, `edgeDisconnected: ${JSON.stringify(hubEvents.of('edgeDisconnected').map((e) => e.reason))}; warnings ${JSON.stringify(hubEvents.of('warning'))}`)
      assert.equal(hubEvents.of('streamClosed').length, 2 + EDGE_KILLS)
      assert.deepEqual(hubEvents.of('warning'), [], 'no hub warnings')

      // A fresh edge connects and carries bytes, then stops cleanly on SIGTERM.
      const fresh = await startEdgeProcess()
      assert.equal(await echoOnce(target.port, 'fresh edge'), 'fresh edge')
      const left = once(hub, 'edgeDisconnected', GUARD_MS, (e) => e.edgeId === edgeId)
      fresh.kill('SIGTERM')
      assert.deepEqual(await withTimeout(fresh.exited, GUARD_MS, 'the edge process to exit on SIGTERM'), { code: 0, signal: null })
      await left

      // No edge is connected and no connection is open, as at `before`. No tolerance, after a
      // bounded wait for sockets closed a loop turn late: a leaked tunnel, target socket or
      // session task thread per killed edge would be 20 or more.
      await waitFor(() => target.connections.every((c) => c.socket.destroyed), { what: 'every target connection to close' })
      const after = await countsComeBack(before, { fdSlack: 0, threadSlack: 0, what: `the hub's process after ${EDGE_KILLS} killed edges` })
      console.log(`${EDGE_KILLS} killed edges: slowest edgeDisconnected ${slowest} ms; fds ${before.fds} -> ${after.fds}, threads ${before.threads} -> ${after.threads}`)
      assert.equal((await hub.getStatus()).connectedEdges.length, 0)
    } finally {
      await stopQuietly(hub, target)
      await killChildren()
    }
  })
}
