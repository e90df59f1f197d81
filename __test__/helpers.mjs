// Shared helpers for the end-to-end tests: bounded waiting, a PROXY-header-parsing target
// server, hub+edge setup on loopback, a raw (hand-driven) edge, and small socket utilities.
// Everything talks to 127.0.0.0/8 only: targets on 127.0.0.1, edge listeners on 127.0.0.2.
import net from 'node:net'
import tls from 'node:tls'
import dgram from 'node:dgram'
import crypto from 'node:crypto'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import path from 'node:path'
import fs from 'node:fs'
import os from 'node:os'
import { spawn } from 'node:child_process'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const require = createRequire(import.meta.url)

/** Absolute path of the package root, for child processes that `require` it. */
export const PACKAGE_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const remoteingress = require(PACKAGE_ROOT)
export const { RemoteIngressHub, RemoteIngressEdge } = remoteingress

export const EDGE_ADDRESS = '127.0.0.2'
/** Accept queue of test targets (the kernel caps it at net.core.somaxconn). */
const TARGET_BACKLOG = 4096
export const TARGET_ADDRESS = '127.0.0.1'

// ---------------------------------------------------------------------------------------------
// Bounded waiting

/**
 * How long a bounded wait gives a condition before it fails the test. It only guards against
 * hanging: a loaded or slow machine may need seconds for what takes milliseconds here, so it is
 * generous, and no test asserts that anything happened within it.
 */
export const GUARD_MS = 20_000

/** Rejects with `what` if `promise` has not settled within `timeoutMs`. */
export function withTimeout(promise, timeoutMs, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Polls `predicate` (may be async) until it returns truthy; returns that value. Bounded. */
export async function waitFor(predicate, { timeoutMs = GUARD_MS, intervalMs = 20, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let lastError
  for (let attempt = 0; attempt < 100000; attempt++) {
    try {
      const value = await predicate()
      if (value) return value
      lastError = undefined
    } catch (err) {
      lastError = err
    }
    if (Date.now() >= deadline) break
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
  const detail = lastError ? ` (last error: ${lastError.message})` : ''
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`)
}

/**
 * Resolves with the first payload of `event` (that passes `filter`), rejecting after
 * `timeoutMs` with a message naming the event.
 */
export function once(emitter, event, timeoutMs = GUARD_MS, filter = () => true) {
  let listener
  const fired = new Promise((resolve) => {
    listener = (payload) => {
      if (!filter(payload)) return
      emitter.off(event, listener)
      resolve(payload)
    }
    emitter.on(event, listener)
  })
  return withTimeout(fired, timeoutMs, `event '${event}'`).finally(() => emitter.off(event, listener))
}

/**
 * Watches this process's event loop for stalls (a timer firing late): how late a callback of
 * this process can run on this machine right now. `maxMs()` is the worst delay seen since
 * start; timing checks widen their tolerance by it, so a loaded machine makes them weaker,
 * never red.
 */
export function eventLoopLag() {
  const histogram = monitorEventLoopDelay({ resolution: 10 })
  histogram.enable()
  return {
    maxMs: () => histogram.max / 1e6,
    stop: () => histogram.disable(),
  }
}

/** Records every emitted payload of the named events, in order: [{ event, payload }]. */
export function recordEvents(emitter, events) {
  const log = []
  for (const event of events) emitter.on(event, (payload) => log.push({ event, payload }))
  log.of = (event) => log.filter((e) => e.event === event).map((e) => e.payload)
  return log
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol parser (our own, independent of the product's)

const V1_MAX_LENGTH = 107
export const V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex')

/**
 * Parses a PROXY header at the start of `buffer`.
 * Returns null when more bytes are needed, or { version, length, raw, header, source, destination }
 * where source/destination are { address, port } (null for UNKNOWN / LOCAL). Throws on garbage.
 */
export function parseProxyHeader(buffer) {
  if (buffer.length === 0) return null
  return buffer[0] === V2_SIGNATURE[0] ? parseProxyV2(buffer) : parseProxyV1(buffer)
}

function parseProxyV1(buffer) {
  const prefix = Buffer.from('PROXY ')
  const head = buffer.subarray(0, prefix.length)
  if (!prefix.subarray(0, head.length).equals(head)) throw new Error(`not a PROXY header: ${JSON.stringify(head.toString('latin1'))}`)
  const end = buffer.indexOf('\r\n')
  if (end === -1) {
    if (buffer.length >= V1_MAX_LENGTH) throw new Error('PROXY v1 line longer than 107 bytes')
    return null
  }
  const length = end + 2
  if (length > V1_MAX_LENGTH) throw new Error(`PROXY v1 line of ${length} bytes exceeds 107`)
  const raw = Buffer.from(buffer.subarray(0, length))
  const line = raw.subarray(0, end).toString('latin1')
  const parts = line.split(' ')
  if (parts[1] === 'UNKNOWN') return { version: 1, length, raw, header: line, protocol: 'UNKNOWN', source: null, destination: null }
  if (parts.length !== 6 || !['TCP4', 'TCP6'].includes(parts[1])) throw new Error(`malformed PROXY v1 line: ${line}`)
  const family = parts[1] === 'TCP4' ? 4 : 6
  for (const address of [parts[2], parts[3]]) {
    if (net.isIP(address) !== family) throw new Error(`bad ${parts[1]} address ${address} in: ${line}`)
  }
  const ports = [parts[4], parts[5]].map((p) => {
    if (!/^(0|[1-9][0-9]{0,4})$/.test(p) || Number(p) > 65535) throw new Error(`bad port ${p} in: ${line}`)
    return Number(p)
  })
  return {
    version: 1,
    length,
    raw,
    header: line,
    protocol: parts[1],
    source: { address: parts[2], port: ports[0] },
    destination: { address: parts[3], port: ports[1] },
  }
}

function parseProxyV2(buffer) {
  const signature = buffer.subarray(0, V2_SIGNATURE.length)
  if (!V2_SIGNATURE.subarray(0, signature.length).equals(signature)) throw new Error('bad PROXY v2 signature')
  if (buffer.length < 16) return null
  const versionCommand = buffer[12]
  const family = buffer[13]
  const addressLength = buffer.readUInt16BE(14)
  const length = 16 + addressLength
  if (buffer.length < length) return null
  if (versionCommand >> 4 !== 2) throw new Error(`PROXY v2 version nibble is ${versionCommand >> 4}`)
  const raw = Buffer.from(buffer.subarray(0, length))
  const body = raw.subarray(16)
  const base = { version: 2, length, raw, versionCommand, family, header: raw.toString('hex') }
  if (versionCommand === 0x20) return { ...base, protocol: 'LOCAL', source: null, destination: null }
  if (versionCommand !== 0x21) throw new Error(`PROXY v2 command byte 0x${versionCommand.toString(16)}`)
  if (family === 0x11 || family === 0x12) {
    if (addressLength < 12) throw new Error('PROXY v2 IPv4 block shorter than 12 bytes')
    return {
      ...base,
      protocol: family === 0x11 ? 'TCP4' : 'UDP4',
      source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) },
      destination: { address: [...body.subarray(4, 8)].join('.'), port: body.readUInt16BE(10) },
    }
  }
  if (family === 0x21 || family === 0x22) {
    if (addressLength < 36) throw new Error('PROXY v2 IPv6 block shorter than 36 bytes')
    const ipv6 = (b) => Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16)).join(':')
    return {
      ...base,
      protocol: family === 0x21 ? 'TCP6' : 'UDP6',
      source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
      destination: { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) },
    }
  }
  throw new Error(`PROXY v2 family byte 0x${family.toString(16)}`)
}

// ---------------------------------------------------------------------------------------------
// Target server

/** Per-connection behaviours for the target: each gets the socket with the header removed. */
export const behaviours = {
  echo: (socket) => socket.pipe(socket),
  /** Reads until the client half-closes, then sends `reply` and ends. */
  replyAfterEnd: (reply) => (socket, record) => {
    socket.on('data', (chunk) => record.received.push(chunk))
    socket.on('end', () => socket.end(reply))
  },
  /** Records what arrives and never writes. */
  sink: (socket, record) => socket.on('data', (chunk) => record.received.push(chunk)),
}

/**
 * A TCP server on 127.0.0.1:0 that parses the PROXY header (`proxy: 'v1' | 'v2' | 'none'`) of
 * every connection, records it in `target.connections`, then hands the socket to `behaviour`.
 * Record: { header, raw, version, source, destination, received[], ended, error, socket }.
 */
export async function startTarget(behaviour = behaviours.echo, { proxy = 'v1', port = 0 } = {}) {
  const connections = []
  const sockets = new Set()
  // allowHalfOpen: a client FIN must not end our side by itself; behaviours decide when to end.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    const record = { socket, header: null, raw: null, version: null, source: null, destination: null, received: [], ended: false, error: null }
    connections.push(record)
    socket.on('error', (err) => {
      record.error = err
    })
    socket.on('end', () => {
      record.ended = true
    })
    if (proxy === 'none') {
      behaviour(socket, record)
      return
    }
    let pending = Buffer.alloc(0)
    const onHeaderBytes = (chunk) => {
      pending = Buffer.concat([pending, chunk])
      let parsed
      try {
        parsed = parseProxyHeader(pending)
      } catch (err) {
        record.error = err
        socket.off('data', onHeaderBytes)
        socket.destroy()
        return
      }
      if (!parsed) return
      socket.off('data', onHeaderBytes)
      socket.pause()
      Object.assign(record, {
        header: parsed.header,
        raw: parsed.raw,
        version: parsed.version,
        source: parsed.source,
        destination: parsed.destination,
        parsed,
      })
      const rest = pending.subarray(parsed.length)
      if (rest.length > 0) socket.unshift(rest)
      // Flowing again before the behaviour runs, so a behaviour may pause() to stop reading;
      // data is only emitted on a later tick, after it has attached its listeners.
      socket.resume()
      behaviour(socket, record)
    }
    socket.on('data', onHeaderBytes)
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    // A deep backlog: the hub may connect thousands at once, and a connection dropped from a
    // full accept queue can come back as a reset.
    server.listen({ port, host: TARGET_ADDRESS, backlog: TARGET_BACKLOG }, resolve)
  })
  return {
    server,
    connections,
    port: server.address().port,
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(() => resolve()))
    },
  }
}

// ---------------------------------------------------------------------------------------------
// Hub and edge

export const SECRET = 'test-secret-7f3a9c'

/**
 * Starts a hub on a free loopback tunnel port; `edges` is the allowed-edges list (may be empty).
 * Returns { hub, hubPort }.
 */
export async function startHub(edges = [], hubOptions = {}) {
  const hub = new RemoteIngressHub()
  await hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1', ...hubOptions })
  try {
    if (edges.length > 0) await hub.updateAllowedEdges(edges)
    const hubPort = (await hub.getStatus()).tunnelPort
    return { hub, hubPort }
  } catch (err) {
    await stopQuietly(hub)
    throw err
  }
}

/**
 * The transport real edges use in this run: the end-to-end suites run once per transport
 * (`npm test` runs them again with REMOTEINGRESS_TEST_TRANSPORT=quic).
 */
export const TEST_TRANSPORT = process.env.REMOTEINGRESS_TEST_TRANSPORT ?? 'tcpTls'
if (!['tcpTls', 'quic'].includes(TEST_TRANSPORT)) {
  throw new Error(`REMOTEINGRESS_TEST_TRANSPORT must be tcpTls or quic, not ${TEST_TRANSPORT}`)
}

/** The edge config every test uses: fast reconnects, no STUN, listeners on 127.0.0.2. */
export function edgeConfig(hubPort, edgeId, secret = SECRET, extra = {}) {
  return {
    hubHost: '127.0.0.1',
    hubPort,
    edgeId,
    secret,
    transportMode: TEST_TRANSPORT,
    bindAddress: EDGE_ADDRESS,
    stunServers: [],
    reconnectMinMs: 50,
    reconnectMaxMs: 200,
    ...extra,
  }
}

/** Starts an edge and resolves once it is connected and its ports are assigned. */
export async function startConnectedEdge(config, timeoutMs = GUARD_MS) {
  const edge = new RemoteIngressEdge()
  const connected = once(edge, 'tunnelConnected', timeoutMs)
  const assigned = once(edge, 'portsAssigned', timeoutMs)
  try {
    await edge.start(config)
    const [, ports] = await Promise.all([connected, assigned])
    return { edge, ports }
  } catch (err) {
    await stopQuietly(edge) // a failed start must not leave a running edge behind
    throw err
  }
}

/**
 * A hub with one edge (`edgeId`, assigned TCP `ports` and, when given, UDP `udpPorts`) connected to it: both sides have said so
 * (edge 'tunnelConnected' + 'portsAssigned', hub 'edgeConnected'), as events from two objects
 * are not ordered with each other. Returns { hub, edge, hubPort, edgeId, stop() }.
 */
export async function startTunnel({ ports, udpPorts, edgeId = 'edge-1', hubOptions = {}, edgeOptions = {} }) {
  const allowed = { id: edgeId, secret: SECRET, listenPorts: ports }
  if (udpPorts !== undefined) allowed.listenPortsUdp = udpPorts // UDP ports only when asked for
  const { hub, hubPort } = await startHub([allowed], hubOptions)
  let edge
  try {
    const hubSawEdge = once(hub, 'edgeConnected', GUARD_MS, (e) => e.edgeId === edgeId)
    ;({ edge } = await startConnectedEdge(edgeConfig(hubPort, edgeId, SECRET, edgeOptions)))
    await hubSawEdge
  } catch (err) {
    await stopQuietly(edge)
    await stopQuietly(hub)
    throw err
  }
  return { hub, edge, hubPort, edgeId, stop: () => stopQuietly(edge, hub) }
}

/** Stops each runner/closes each thing, bounded, ignoring errors (for finally blocks). */
export async function stopQuietly(...things) {
  for (const thing of things) {
    if (!thing) continue
    try {
      if (typeof thing.stop === 'function') {
        if (thing.running === false) continue
        await withTimeout(thing.stop(), GUARD_MS, 'stop() in cleanup')
      } else if (typeof thing.close === 'function') {
        await withTimeout(Promise.resolve(thing.close()), GUARD_MS, 'close() in cleanup')
      } else if (typeof thing.destroy === 'function') {
        thing.destroy()
      }
    } catch (err) {
      console.error(`cleanup: ${err.message}`)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Client sockets

/**
 * Connects to host:port; resolves with the socket once connected, rejects on error.
 * `allowHalfOpen: true` keeps our side writable after a FIN, so a FIN and a reset differ.
 */
export function connect(port, host = EDGE_ADDRESS, timeoutMs = GUARD_MS, { allowHalfOpen = false } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const socket = net.connect({ port, host, allowHalfOpen })
      socket.once('connect', () => {
        socket.off('error', reject)
        resolve(socket)
      })
      socket.once('error', reject)
    }),
    timeoutMs,
    `connect to ${host}:${port}`,
  )
}

/**
 * A TCP server on 127.0.0.1 that writes to every connection as fast as it takes the bytes, for
 * as long as it is open (a download that never ends). Returns the net.Server.
 */
export async function startEndlessServer() {
  const chunk = Buffer.alloc(64 * 1024, 0x61)
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    const pump = () => {
      while (!socket.destroyed && socket.write(chunk)) {}
    }
    socket.on('drain', pump)
    pump()
  })
  await new Promise((resolve) => server.listen(0, TARGET_ADDRESS, resolve))
  return server
}

/** Opens a connection to an echo target through the edge, sends `text`, returns what came back. */
export async function echoOnce(port, text, timeoutMs = GUARD_MS) {
  const client = await connect(port, EDGE_ADDRESS, timeoutMs)
  try {
    const echoed = readBytes(client, Buffer.byteLength(text), timeoutMs)
    client.write(text)
    return (await echoed).toString()
  } finally {
    client.destroy()
  }
}

/**
 * Tries to connect; resolves 'connected' (and closes) or the error code (e.g. ECONNREFUSED).
 * Loopback answers a connect at once (accept or refusal); the bound is only for a hang.
 */
export async function probeConnect(port, host = EDGE_ADDRESS) {
  try {
    const socket = await connect(port, host, 10_000)
    socket.destroy()
    return 'connected'
  } catch (err) {
    return err.code ?? err.message
  }
}

/** Collects everything the socket sends until 'end'; rejects on error or timeout. */
export function readUntilEnd(socket, timeoutMs = GUARD_MS) {
  const chunks = []
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.on('data', (chunk) => chunks.push(chunk))
      socket.once('end', () => resolve(Buffer.concat(chunks)))
      socket.once('error', reject)
    }),
    timeoutMs,
    `'end' on a client socket (got ${chunks.reduce((n, c) => n + c.length, 0)} bytes so far)`,
  )
}

/** Resolves when `n` bytes have arrived on the socket (returns them); rejects on end/error/timeout. */
export function readBytes(socket, n, timeoutMs = GUARD_MS) {
  const chunks = []
  let total = 0
  return withTimeout(
    new Promise((resolve, reject) => {
      const onData = (chunk) => {
        chunks.push(chunk)
        total += chunk.length
        if (total >= n) {
          socket.off('data', onData)
          resolve(Buffer.concat(chunks))
        }
      }
      socket.on('data', onData)
      socket.once('end', () => reject(new Error(`socket ended after ${total} of ${n} bytes`)))
      socket.once('error', reject)
    }),
    timeoutMs,
    `${n} bytes on a socket`,
  )
}

export const sha256 = (buffer) => crypto.createHash('sha256').update(buffer).digest('hex')

// ---------------------------------------------------------------------------------------------
// UDP: PROXY v2 datagram headers, a target that strips them, and client sockets.

/** IPv4 or IPv6 text address -> its 4 or 16 network-order bytes (no embedded-IPv4 forms). */
export function ipBytes(address) {
  if (net.isIP(address) === 4) return Buffer.from(address.split('.').map(Number))
  if (net.isIP(address) !== 6 || address.includes('.')) throw new Error(`not a plain IP address: ${address}`)
  const [head, tail] = address.includes('::') ? address.split('::') : [address, null]
  const groups = (text) => (text ? text.split(':') : [])
  const left = groups(head)
  const right = tail === null ? [] : groups(tail)
  const all = tail === null ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right]
  if (all.length !== 8) throw new Error(`bad IPv6 address: ${address}`)
  const out = Buffer.alloc(16)
  all.forEach((group, i) => out.writeUInt16BE(parseInt(group, 16), i * 2))
  return out
}

/**
 * A PROXY v2 header for a datagram (PROXY command, UDP4 0x12 or UDP6 0x22), built by hand from
 * the spec: signature, 0x21, family, length, source address, destination address, ports.
 */
export function encodeProxyV2Udp(source, destination) {
  const src = ipBytes(source.address)
  const dst = ipBytes(destination.address)
  if (src.length !== dst.length) throw new Error('source and destination families differ')
  const addressLength = src.length === 4 ? 12 : 36
  const out = Buffer.alloc(16 + addressLength)
  V2_SIGNATURE.copy(out, 0)
  out[12] = 0x21
  out[13] = src.length === 4 ? 0x12 : 0x22
  out.writeUInt16BE(addressLength, 14)
  src.copy(out, 16)
  dst.copy(out, 16 + src.length)
  out.writeUInt16BE(source.port, 16 + 2 * src.length)
  out.writeUInt16BE(destination.port, 18 + 2 * src.length)
  return out
}

/**
 * Splits one datagram into { header, payload }: `header` is the parsed PROXY v2 header (see
 * parseProxyHeader) when the datagram starts with the v2 signature, else null and the whole
 * datagram is the payload. A header must lie wholly inside the datagram; a cut one throws.
 */
export function parseProxyDatagram(datagram) {
  const startsWithSignature = datagram.length >= V2_SIGNATURE.length && datagram.subarray(0, V2_SIGNATURE.length).equals(V2_SIGNATURE)
  if (!startsWithSignature) return { header: null, payload: datagram }
  const header = parseProxyHeader(datagram)
  if (!header) throw new Error(`PROXY v2 header cut short: a ${datagram.length}-byte datagram`)
  return { header, payload: datagram.subarray(header.length) }
}

/** What a UDP target does with each datagram: `reply(buffer)` answers its sender. */
export const udpBehaviours = {
  /** Echoes the payload (header removed). */
  echo: (record, reply) => reply(record.payload),
  /** Records only. */
  sink: () => {},
  /** Answers with `answer(payload, record)` (no answer when it returns null). */
  answer: (answer) => (record, reply) => {
    const response = answer(record.payload, record)
    if (response != null) reply(response)
  },
}

const UDP_BUFFER_BYTES = 4 * 1024 * 1024

/**
 * A UDP socket on 127.0.0.1:`port` (0 = free port). Every datagram is recorded in
 * `target.datagrams` as { raw, header (parsed v2 header or null), payload, from: { address,
 * port }, error } and handed to `behaviour(record, reply)` unless it failed to parse.
 */
export async function startUdpTarget(behaviour = udpBehaviours.echo, { port = 0, host = TARGET_ADDRESS } = {}) {
  const socket = dgram.createSocket({ type: net.isIP(host) === 6 ? 'udp6' : 'udp4', recvBufferSize: UDP_BUFFER_BYTES, sendBufferSize: UDP_BUFFER_BYTES })
  const datagrams = []
  const errors = []
  socket.on('error', (err) => errors.push(err))
  socket.on('message', (raw, rinfo) => {
    const record = { raw, header: null, payload: null, from: { address: rinfo.address, port: rinfo.port }, error: null }
    datagrams.push(record)
    try {
      Object.assign(record, parseProxyDatagram(raw))
    } catch (err) {
      record.error = err
      return
    }
    behaviour(record, (reply) => socket.send(reply, rinfo.port, rinfo.address, (err) => err && errors.push(err)))
  })
  await new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(port, host, () => {
      socket.off('error', reject)
      resolve()
    })
  })
  return {
    socket,
    datagrams,
    errors,
    port: socket.address().port,
    close: () => new Promise((resolve) => socket.close(resolve)),
  }
}

/**
 * A UDP client socket bound to `host`:0 (127.0.0.1 by default). Received datagrams are kept in
 * `messages` ({ data, from }, all of them) and queued for nextMessage(). request() sends and
 * waits for the matching reply, sending again up to `attempts` times in all.
 */
export async function startUdpClient({ host = TARGET_ADDRESS } = {}) {
  const socket = dgram.createSocket({ type: net.isIP(host) === 6 ? 'udp6' : 'udp4', recvBufferSize: UDP_BUFFER_BYTES, sendBufferSize: UDP_BUFFER_BYTES })
  const messages = []
  const queue = []
  const waiters = new Set()
  let closed = false
  socket.on('error', () => {})
  socket.on('message', (data, rinfo) => {
    const message = { data, from: { address: rinfo.address, port: rinfo.port } }
    messages.push(message)
    queue.push(message)
    for (const waiter of waiters) {
      const index = queue.findIndex(waiter.filter)
      if (index !== -1) {
        waiters.delete(waiter)
        waiter.resolve(queue.splice(index, 1)[0])
      }
    }
  })
  await new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(0, host, () => {
      socket.off('error', reject)
      resolve()
    })
  })
  const client = {
    socket,
    messages,
    address: socket.address().address,
    port: socket.address().port,
    /** Sends one datagram; resolves once the kernel took it. */
    send(payload, port, toHost = EDGE_ADDRESS) {
      return new Promise((resolve, reject) => socket.send(payload, port, toHost, (err) => (err ? reject(err) : resolve())))
    },
    /** Resolves with the first unconsumed datagram matching `filter` ({ data, from }). */
    nextMessage(filter = () => true, timeoutMs = GUARD_MS, what = 'a datagram') {
      const index = queue.findIndex(filter)
      if (index !== -1) return Promise.resolve(queue.splice(index, 1)[0])
      let waiter
      const promise = new Promise((resolve, reject) => {
        waiter = { filter, resolve, reject }
        waiters.add(waiter)
      })
      return withTimeout(promise, timeoutMs, `${what} at client port ${client.port}`).finally(() => waiters.delete(waiter))
    },
    /**
     * Sends `payload` to `port` and resolves with the reply's data (matching `match`). Each of
     * the `attempts` waits `timeoutMs` for its reply: with one attempt that is a hang guard.
     */
    async request(payload, port, { match = () => true, timeoutMs = GUARD_MS, attempts = 1, toHost = EDGE_ADDRESS } = {}) {
      let lastError
      for (let attempt = 0; attempt < attempts; attempt++) {
        const reply = client.nextMessage((m) => match(m.data), timeoutMs, 'a reply')
        reply.catch(() => {})
        await client.send(payload, port, toHost)
        try {
          return (await reply).data
        } catch (err) {
          lastError = err
        }
      }
      throw lastError
    },
    close() {
      if (closed) return Promise.resolve()
      closed = true
      for (const waiter of waiters) waiter.reject(new Error('client closed'))
      waiters.clear()
      return new Promise((resolve) => socket.close(resolve))
    },
  }
  return client
}

/** Whether a UDP socket can be bound on ::1 (IPv6 loopback present and enabled). */
export async function canBindUdp6Loopback() {
  const socket = dgram.createSocket('udp6')
  try {
    await new Promise((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, '::1', resolve)
    })
    return true
  } catch {
    return false
  } finally {
    try {
      socket.close()
    } catch {}
  }
}

/**
 * A bounded wait for "nothing more happens": only for use after a positive control showed the
 * path works, so a silent failure cannot pass for an absent datagram. On a slow machine the
 * window covers less, so it can only make a check weaker there, never fail it.
 */
export function quietWindow(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// ---------------------------------------------------------------------------------------------
// Raw peers: speak the tunnel protocol by hand, to send and inspect frames byte by byte.

export const FrameType = {
  OPEN: 0x01,
  DATA: 0x02,
  CLOSE: 0x03,
  DATA_BACK: 0x04,
  CLOSE_BACK: 0x05,
  CONFIG: 0x06,
  PING: 0x07,
  PONG: 0x08,
  WINDOW_UPDATE: 0x09,
  WINDOW_UPDATE_BACK: 0x0a,
  UDP_OPEN: 0x0b,
  UDP_DATA: 0x0c,
  UDP_DATA_BACK: 0x0d,
  UDP_CLOSE: 0x0e,
}

export const ALPN = 'remoteingress/1'

/** `[stream_id u32 BE][type u8][len u32 BE][payload]` */
export function encodeFrame(streamId, type, payload = Buffer.alloc(0)) {
  const body = Buffer.from(payload)
  const header = Buffer.alloc(9)
  header.writeUInt32BE(streamId, 0)
  header.writeUInt8(type, 4)
  header.writeUInt32BE(body.length, 5)
  return Buffer.concat([header, body])
}

/**
 * Reads a TLS socket as: one handshake line, then frames. Returns
 * { line: Promise<string>, frames, nextFrame(filter, timeoutMs, what), send(), closed, pingsAnswered }.
 * PINGs are answered with PONG when `answerPings` (otherwise queued like any frame).
 */
function frameConnection(socket, { answerPings }) {
  let buffer = Buffer.alloc(0)
  let line = null
  let closed = false
  let pingsAnswered = 0
  const frames = []
  const waiters = new Set()
  let lineArrived
  const linePromise = new Promise((resolve, reject) => {
    lineArrived = { resolve, reject }
  })
  linePromise.catch(() => {})
  const deliver = () => {
    for (const waiter of waiters) {
      const index = frames.findIndex(waiter.filter)
      if (index !== -1) {
        waiters.delete(waiter)
        waiter.resolve(frames.splice(index, 1)[0])
      }
    }
  }
  socket.on('error', () => {})
  socket.on('data', (chunk) => {
    buffer = Buffer.concat([buffer, chunk])
    if (line === null) {
      const newline = buffer.indexOf('\n')
      if (newline === -1) return
      line = buffer.subarray(0, newline + 1).toString('utf8')
      buffer = buffer.subarray(newline + 1)
      lineArrived.resolve(line)
    }
    while (buffer.length >= 9) {
      const length = buffer.readUInt32BE(5)
      if (buffer.length < 9 + length) break
      const frame = { streamId: buffer.readUInt32BE(0), type: buffer[4], payload: Buffer.from(buffer.subarray(9, 9 + length)) }
      buffer = buffer.subarray(9 + length)
      if (frame.type === FrameType.PING && answerPings) {
        socket.write(encodeFrame(0, FrameType.PONG, frame.payload))
        pingsAnswered++
      } else frames.push(frame)
    }
    deliver()
  })
  socket.on('close', () => {
    closed = true
    lineArrived.reject(new Error('the peer closed the connection before its handshake line'))
    for (const waiter of waiters) waiter.reject(new Error('the peer closed the connection'))
    waiters.clear()
  })
  return {
    socket,
    line: linePromise,
    frames,
    get closed() {
      return closed
    },
    get pingsAnswered() {
      return pingsAnswered
    },
    send(streamId, type, payload) {
      socket.write(encodeFrame(streamId, type, payload))
    },
    /** Resolves with the first received frame matching `filter` (already received ones count). */
    nextFrame(filter = () => true, timeoutMs = GUARD_MS, what = 'a frame') {
      const index = frames.findIndex(filter)
      if (index !== -1) return Promise.resolve(frames.splice(index, 1)[0])
      if (closed) return Promise.reject(new Error(`connection closed while waiting for ${what}`))
      let waiter
      const promise = new Promise((resolve, reject) => {
        waiter = { filter, resolve, reject }
        waiters.add(waiter)
      })
      return withTimeout(promise, timeoutMs, what).finally(() => waiters.delete(waiter))
    },
    close() {
      socket.destroy()
    },
  }
}

/**
 * Connects to the hub over TLS as `edgeId` and returns a frame connection (see frameConnection)
 * plus `answer`, the hub's parsed JSON handshake line. Hub PINGs are answered unless
 * `answerPings` is false.
 */
export async function connectRawEdge(hubPort, edgeId, secret = SECRET, { answerPings = true } = {}) {
  const socket = tls.connect({ host: '127.0.0.1', port: hubPort, rejectUnauthorized: false, ALPNProtocols: [ALPN] })
  const connection = frameConnection(socket, { answerPings })
  await once(socket, 'secureConnect', GUARD_MS)
  socket.write(`EDGE ${edgeId} ${secret}\n`)
  connection.answer = JSON.parse(await withTimeout(connection.line, GUARD_MS, 'the hub handshake answer'))
  return connection
}

/**
 * A hand-driven hub: a TLS server on 127.0.0.1:0 with the right ALPN. For each edge it reads
 * the `EDGE <id> <secret>` line and answers with `answer(authLine)` (a string sent as is), then
 * exposes the frames. `sessions` lists the frame connections, each with `authLine`.
 */
export async function startRawHub({ answer, answerPings = false }) {
  const { certPem, keyPem } = remoteingress.generateHubCertificate()
  const sessions = []
  const server = tls.createServer({ cert: certPem, key: keyPem, ALPNProtocols: [ALPN] }, (socket) => {
    const session = frameConnection(socket, { answerPings })
    sessions.push(session)
    session.line.then(
      (line) => {
        session.authLine = line
        socket.write(answer(line))
      },
      () => {},
    )
  })
  server.on('tlsClientError', () => {})
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  return {
    server,
    sessions,
    port: server.address().port,
    async close() {
      for (const session of sessions) session.close()
      await new Promise((resolve) => server.close(() => resolve()))
    },
  }
}

// ---------------------------------------------------------------------------------------------
// STUN (RFC 8489), written by hand from the spec: fake servers, a counting relay, and coturn.

const STUN_MAGIC_COOKIE = Buffer.from('2112a442', 'hex')

export const StunType = {
  BINDING_REQUEST: 0x0001,
  BINDING_SUCCESS: 0x0101,
  BINDING_ERROR: 0x0111,
}

export const StunAttribute = {
  MAPPED_ADDRESS: 0x0001,
  XOR_MAPPED_ADDRESS: 0x0020,
}

/** A STUN message: 20-byte header (type, length, cookie, `txid`), then each { type, value }, padded to 4. */
export function stunMessage(type, txid, attributes = []) {
  const body = Buffer.concat(
    attributes.map(({ type: attributeType, value }) => {
      const header = Buffer.alloc(4)
      header.writeUInt16BE(attributeType, 0)
      header.writeUInt16BE(value.length, 2)
      return Buffer.concat([header, value, Buffer.alloc((4 - (value.length % 4)) % 4)])
    }),
  )
  const header = Buffer.alloc(20)
  header.writeUInt16BE(type, 0)
  header.writeUInt16BE(body.length, 2)
  STUN_MAGIC_COOKIE.copy(header, 4)
  Buffer.from(txid).copy(header, 8)
  return Buffer.concat([header, body])
}

/** A MAPPED-ADDRESS-style value (family, port, address); XORed as in XOR-MAPPED-ADDRESS when `txid` is given. */
export function stunAddressValue(address, port, txid = null) {
  const ip = ipBytes(address)
  const value = Buffer.alloc(4 + ip.length)
  value[1] = ip.length === 4 ? 0x01 : 0x02
  const key = Buffer.concat([STUN_MAGIC_COOKIE, Buffer.from(txid ?? Buffer.alloc(12))])
  value.writeUInt16BE(txid ? port ^ 0x2112 : port, 2)
  for (let i = 0; i < ip.length; i++) value[4 + i] = txid ? ip[i] ^ key[i] : ip[i]
  return value
}

/** A Binding success response carrying `xorMapped` and/or `mapped` ({ address, port }). */
export function stunBindingSuccess(txid, { xorMapped, mapped } = {}) {
  const attributes = []
  if (mapped) attributes.push({ type: StunAttribute.MAPPED_ADDRESS, value: stunAddressValue(mapped.address, mapped.port) })
  if (xorMapped) attributes.push({ type: StunAttribute.XOR_MAPPED_ADDRESS, value: stunAddressValue(xorMapped.address, xorMapped.port, txid) })
  return stunMessage(StunType.BINDING_SUCCESS, txid, attributes)
}

/** { type, txid, attributes: [{ type, value }] } of a STUN message, or null if it is not one. */
export function parseStunMessage(buffer) {
  if (buffer.length < 20 || buffer[0] & 0xc0 || !buffer.subarray(4, 8).equals(STUN_MAGIC_COOKIE)) return null
  const length = buffer.readUInt16BE(2)
  if (buffer.length !== 20 + length) return null
  const attributes = []
  let at = 20
  for (let count = 0; at < buffer.length && count < 64; count++) {
    if (at + 4 > buffer.length) return null
    const type = buffer.readUInt16BE(at)
    const valueLength = buffer.readUInt16BE(at + 2)
    if (at + 4 + valueLength > buffer.length) return null
    attributes.push({ type, value: Buffer.from(buffer.subarray(at + 4, at + 4 + valueLength)) })
    at += 4 + valueLength + ((4 - (valueLength % 4)) % 4)
  }
  return { type: buffer.readUInt16BE(0), txid: Buffer.from(buffer.subarray(8, 20)), attributes }
}

/** The { address, port } of a parsed success response (XOR-MAPPED-ADDRESS first), or null. */
export function stunMappedAddress(message) {
  const pick = (type) => message.attributes.find((a) => a.type === type)
  const xor = pick(StunAttribute.XOR_MAPPED_ADDRESS)
  const plain = pick(StunAttribute.MAPPED_ADDRESS)
  const attribute = xor ?? plain
  if (!attribute || attribute.value.length < 8) return null
  const key = Buffer.concat([STUN_MAGIC_COOKIE, message.txid])
  const family = attribute.value[1]
  const ip = Buffer.from(attribute.value.subarray(4, family === 1 ? 8 : 20))
  if (xor) for (let i = 0; i < ip.length; i++) ip[i] ^= key[i]
  const port = attribute.value.readUInt16BE(2) ^ (xor ? 0x2112 : 0)
  const address = family === 1 ? [...ip].join('.') : Array.from({ length: 8 }, (_, i) => ip.readUInt16BE(i * 2).toString(16)).join(':')
  return { address, port }
}

/** What a fake STUN server sends back for a request ({ message, txid, from }): a list of replies. */
export const stunAnswers = {
  /** Nothing, ever. */
  silent: () => [],
  /** A proper answer: XOR-MAPPED-ADDRESS `address` with the request's source port. */
  mapped: (address) => (request) => [stunBindingSuccess(request.txid, { xorMapped: { address, port: request.from.port } })],
  /** Only MAPPED-ADDRESS, as an RFC 3489 server answers. */
  mappedOnly: (address) => (request) => [stunBindingSuccess(request.txid, { mapped: { address, port: request.from.port } })],
}

/**
 * A fake STUN server on 127.0.0.1:0. Each datagram is recorded in `requests` as
 * { message (parsed or null), txid, from, at } and answered with what `answer(request)` returns:
 * Buffers, or { data, fromOtherPort: true } to send from a second socket instead.
 */
export async function startFakeStunServer(answer = stunAnswers.silent) {
  const bind = async () => {
    const socket = dgram.createSocket('udp4')
    socket.on('error', () => {})
    await new Promise((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, TARGET_ADDRESS, () => {
        socket.off('error', reject)
        resolve()
      })
    })
    return socket
  }
  const socket = await bind()
  const other = await bind()
  const requests = []
  let current = answer
  const flushes = new Map()
  socket.on('message', (data, rinfo) => {
    const marker = flushes.get(data.toString('latin1'))
    if (marker) return marker()
    const message = parseStunMessage(data)
    const request = { message, txid: message?.txid ?? null, from: { address: rinfo.address, port: rinfo.port }, at: Date.now() }
    requests.push(request)
    if (!message || message.type !== StunType.BINDING_REQUEST) return
    for (const reply of current(request) ?? []) {
      const via = reply.fromOtherPort ? other : socket
      via.send(reply.data ?? reply, rinfo.port, rinfo.address, () => {})
    }
  })
  return {
    port: socket.address().port,
    otherPort: other.address().port,
    requests,
    /** Binding requests received so far. */
    get bindingRequests() {
      return requests.filter((r) => r.message?.type === StunType.BINDING_REQUEST)
    },
    /**
     * Transactions (rounds) so far, in order: the first Binding request of each transaction id.
     * A retransmit (same id) is part of its round, however late the answer made it.
     */
    get rounds() {
      const seen = new Set()
      return this.bindingRequests.filter((r) => {
        const id = r.txid.toString('hex')
        if (seen.has(id)) return false
        seen.add(id)
        return true
      })
    },
    /**
     * Resolves once every datagram sent to this server before the call has been recorded: a
     * marker from another socket queues behind them (loopback delivers in order of sending), so
     * whatever was sent before, e.g. before an edge's stop() resolved, is counted by then.
     */
    async flush() {
      const marker = `flush-${crypto.randomBytes(8).toString('hex')}`
      const sender = dgram.createSocket('udp4')
      sender.on('error', () => {})
      try {
        const seen = new Promise((resolve) => flushes.set(marker, resolve))
        await new Promise((resolve) => sender.bind(0, TARGET_ADDRESS, resolve))
        sender.send(marker, socket.address().port, TARGET_ADDRESS, () => {})
        await withTimeout(seen, GUARD_MS, 'the flush marker at the fake STUN server')
      } finally {
        flushes.delete(marker)
        await new Promise((resolve) => sender.close(resolve))
      }
    },
    setAnswer(next) {
      current = next
    },
    close: () => Promise.all([socket, other].map((s) => new Promise((resolve) => s.close(resolve)))),
  }
}

/**
 * A UDP relay on 127.0.0.1:0 in front of `upstreamPort`: forwards each datagram from one
 * socket and sends replies back to the client whose transaction id they carry (the last client
 * otherwise). `forwarded` counts the datagrams relayed upstream.
 */
export async function startStunRelay(upstreamPort, upstreamHost = TARGET_ADDRESS) {
  const sockets = []
  for (let i = 0; i < 2; i++) {
    const socket = dgram.createSocket('udp4')
    socket.on('error', () => {})
    await new Promise((resolve) => socket.bind(0, TARGET_ADDRESS, resolve))
    sockets.push(socket)
  }
  const [front, back] = sockets
  const clients = new Map()
  let lastClient = null
  const relay = { port: front.address().port, forwarded: 0 }
  front.on('message', (data, rinfo) => {
    lastClient = rinfo
    if (data.length >= 20) clients.set(data.subarray(8, 20).toString('hex'), rinfo)
    if (clients.size > 1000) clients.clear()
    relay.forwarded++
    back.send(data, upstreamPort, upstreamHost, () => {})
  })
  back.on('message', (data) => {
    const client = (data.length >= 20 && clients.get(data.subarray(8, 20).toString('hex'))) || lastClient
    if (client) front.send(data, client.port, client.address, () => {})
  })
  relay.close = () => Promise.all(sockets.map((s) => new Promise((resolve) => s.close(resolve))))
  return relay
}

/** An executable named `name` on PATH or in the usual system directories, or null. */
export function findExecutable(name) {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin', '/usr/local/sbin']
  for (const dir of dirs) {
    if (!dir) continue
    const candidate = path.join(dir, name)
    try {
      fs.accessSync(candidate, fs.constants.X_OK)
      return candidate
    } catch {}
  }
  return null
}

/** A port free for both UDP and TCP on 127.0.0.1 right now (for a server that binds both). */
export async function freeUdpAndTcpPort() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const socket = dgram.createSocket('udp4')
    const port = await new Promise((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(0, TARGET_ADDRESS, () => resolve(socket.address().port))
    })
    const tcpFree = await new Promise((resolve) => {
      const server = net.createServer()
      server.once('error', () => resolve(false))
      server.listen(port, TARGET_ADDRESS, () => server.close(() => resolve(true)))
    })
    await new Promise((resolve) => socket.close(resolve))
    if (tcpFree) return port
  }
  throw new Error('no port free for both UDP and TCP after 20 tries')
}

/** Sends Binding requests to 127.0.0.1:`port` until one is answered; resolves with the mapped address. Bounded. */
export async function probeStun(port, { timeoutMs = GUARD_MS, intervalMs = 100 } = {}) {
  const socket = dgram.createSocket('udp4')
  socket.on('error', () => {})
  await new Promise((resolve) => socket.bind(0, TARGET_ADDRESS, resolve))
  const txid = crypto.randomBytes(12)
  let timer
  try {
    const answered = new Promise((resolve) => {
      socket.on('message', (data) => {
        const message = parseStunMessage(data)
        if (message?.type === StunType.BINDING_SUCCESS && message.txid.equals(txid)) resolve(stunMappedAddress(message))
      })
    })
    const send = () => socket.send(stunMessage(StunType.BINDING_REQUEST, txid), port, TARGET_ADDRESS, () => {})
    send()
    timer = setInterval(send, intervalMs)
    return await withTimeout(answered, timeoutMs, `a STUN answer from 127.0.0.1:${port}`)
  } finally {
    clearInterval(timer)
    await new Promise((resolve) => socket.close(resolve))
  }
}

/**
 * Starts coturn (`turnserver` at `binary`) as a STUN-only server on 127.0.0.1 and resolves
 * once it answers a Binding request: { port, pid, close() }. close() stops it by pid.
 */
export async function startCoturn(binary) {
  let lastError
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freeUdpAndTcpPort()
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remoteingress-coturn-'))
    const args = ['-n', '--stun-only', '--listening-ip=127.0.0.1', `--listening-port=${port}`, '--no-tls', '--no-dtls', '--no-cli',
      '--log-file=stdout', `--pidfile=${path.join(dir, 'turnserver.pid')}`]
    const child = spawn(binary, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk) => (stderr = (stderr + chunk).slice(-4000)))
    child.on('error', (err) => (lastError = err))
    const exited = new Promise((resolve) => child.once('exit', resolve))
    const close = async () => {
      if (child.pid && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGTERM')
        } catch {}
        await withTimeout(exited, 5000, 'turnserver to exit').catch(() => {
          try {
            process.kill(child.pid, 'SIGKILL')
          } catch {}
        })
      }
      fs.rmSync(dir, { recursive: true, force: true })
    }
    try {
      await Promise.race([
        probeStun(port),
        exited.then((code) => {
          throw new Error(`turnserver exited with ${code} at start: ${stderr}`)
        }),
      ])
      return { port, pid: child.pid, close }
    } catch (err) {
      lastError = err
      await close()
    }
  }
  throw lastError
}

// ---------------------------------------------------------------------------------------------
// Resource counts and socket endings, for leak and restart tests

/** This process's open file descriptors (entries of /proc/self/fd) and threads (/proc/self/status). */
export function processCounts() {
  const fds = fs.readdirSync('/proc/self/fd').length
  const threads = Number(/^Threads:\s+(\d+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1])
  return { fds, threads }
}

/**
 * Waits (bounded) until this process has at most `before.fds + fdSlack` descriptors and
 * `before.threads + threadSlack` threads, as sockets closed on a later event-loop turn leave
 * the table; returns the last counts. Throws with both counts if they do not come back.
 */
export async function countsComeBack(before, { fdSlack = 0, threadSlack = 0, timeoutMs = GUARD_MS, what = 'counts' } = {}) {
  let last
  try {
    await waitFor(
      () => {
        last = processCounts()
        return last.fds <= before.fds + fdSlack && last.threads <= before.threads + threadSlack
      },
      { timeoutMs, intervalMs: 50, what },
    )
  } catch {
    throw new Error(
      `${what}: fds ${before.fds} -> ${last.fds} (slack ${fdSlack}), threads ${before.threads} -> ${last.threads} (slack ${threadSlack})`,
    )
  }
  return last
}

/**
 * How a socket finishes, watched from now on: resolves at 'close' with { how, bytes }, where
 * `how` is 'reset' (ECONNRESET), another error code (e.g. 'ECONNREFUSED'), 'end' (a clean FIN)
 * or 'closed', and `bytes` counts the data received meanwhile. Rejects after `timeoutMs`.
 */
export function socketEnding(socket, timeoutMs = GUARD_MS) {
  let bytes = 0
  let ended = false
  let error = null
  return withTimeout(
    new Promise((resolve) => {
      socket.on('data', (chunk) => (bytes += chunk.length))
      socket.on('end', () => (ended = true))
      socket.on('error', (err) => (error ??= err.code ?? err.message))
      socket.once('close', () => {
        const how = error === 'ECONNRESET' ? 'reset' : error ?? (ended ? 'end' : 'closed')
        resolve({ how, bytes })
      })
    }),
    timeoutMs,
    `a socket to close (${bytes} bytes so far)`,
  )
}
