// TCP clients and servers on loopback: the PROXY-header-parsing target (startTarget with its
// behaviours), startEndlessServer, client sockets (connect, echoOnce, probeConnect), readers
// (readUntilEnd, readBytes, sha256) and socketEnding (how a socket finished).
import net from 'node:net'
import crypto from 'node:crypto'
import { EDGE_ADDRESS, TARGET_ADDRESS } from './env.mjs'
import { GUARD_MS, withTimeout } from './timing.mjs'
import { parseProxyHeader } from './proxy.mjs'

/** Accept queue of test targets (the kernel caps it at net.core.somaxconn). */
const TARGET_BACKLOG = 4096

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
// Client sockets

/**
 * Connects to host:port; resolves with the socket once connected, rejects on error.
 * `allowHalfOpen: true` keeps our side writable after a FIN, so a FIN and a reset differ;
 * `localAddress` is the client's own address (any 127.x.y.z, to be one of many sources).
 */
export function connect(port, host = EDGE_ADDRESS, timeoutMs = GUARD_MS, { allowHalfOpen = false, localAddress } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const socket = net.connect({ port, host, allowHalfOpen, localAddress })
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

/** Sends `text` over an open connection to an echo target; resolves with what came back. */
export async function echoOver(socket, text, timeoutMs = GUARD_MS) {
  // A socket that ended or died between two exchanges would never answer.
  if (socket.destroyed || socket.readableEnded) throw new Error('the connection is closed')
  const echoed = readBytes(socket, Buffer.byteLength(text), timeoutMs)
  socket.write(text)
  return (await echoed).toString()
}

/**
 * Opens a connection to an echo target through the edge (from `localAddress` when given), sends
 * `text`, returns what came back.
 */
export async function echoOnce(port, text, timeoutMs = GUARD_MS, { localAddress } = {}) {
  const client = await connect(port, EDGE_ADDRESS, timeoutMs, { localAddress })
  try {
    return await echoOver(client, text, timeoutMs)
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
// Socket endings

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
