// An independent peer for the documented 4.13 wire protocol (upstream README, "Wire Protocol"
// and "QoS & Flow Control"), written from that text only: its own frame codec on node:tls and
// Buffer, none of the product's code nor helpers/raw.mjs. One TLS connection without ALPN;
// the edge sends `EDGE <id> <secret>\n`, the hub answers one JSON line, then frames
// [stream_id u32 BE][type u8][length u32 BE][payload]. connect413Edge plays the edge,
// start413Hub the hub. Each side records every frame it receives, with what it found outside
// the documentation (`violations`), answers PINGs (edge), keeps per-stream send credit (the
// documented 4 MB window, plus WINDOW_UPDATE increments) and returns credit for what it consumed.
import tls from 'node:tls'
import { remoteingress } from './env.mjs'
import { GUARD_MS, withTimeout } from './timing.mjs'

export const T413 = {
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
const NAMES = Object.fromEntries(Object.entries(T413).map(([name, type]) => [type, name]))
export const frameName = (type) => NAMES[type] ?? `0x${type.toString(16)}`

/** The documented per-stream window: 4 MB while at most 50 streams are active. */
export const WINDOW_413 = 4 * 1024 * 1024
/** Size of the DATA / DATA_BACK frames this peer sends. */
export const CHUNK_413 = 64 * 1024
const HEADER = 9
const MAX_LINE = 64 * 1024

/** The frame types each side sends (`data`, `credit`, `close`, `datagram`) and receives (`...In`). */
const ROLE_TYPES = {
  edge: {
    data: T413.DATA, dataIn: T413.DATA_BACK, credit: T413.WINDOW_UPDATE, creditIn: T413.WINDOW_UPDATE_BACK,
    close: T413.CLOSE, datagram: T413.UDP_DATA,
  },
  hub: {
    data: T413.DATA_BACK, dataIn: T413.DATA, credit: T413.WINDOW_UPDATE_BACK, creditIn: T413.WINDOW_UPDATE,
    close: T413.CLOSE_BACK, datagram: T413.UDP_DATA_BACK,
  },
}

/** What each side may receive, by the documented directions. */
const RECEIVES = {
  edge: new Set([T413.DATA_BACK, T413.CLOSE_BACK, T413.CONFIG, T413.PING, T413.WINDOW_UPDATE_BACK, T413.UDP_DATA_BACK, T413.UDP_CLOSE]),
  hub: new Set([T413.OPEN, T413.DATA, T413.CLOSE, T413.PONG, T413.WINDOW_UPDATE, T413.UDP_OPEN, T413.UDP_DATA, T413.UDP_CLOSE]),
}

export function encodeFrame413(streamId, type, payload = Buffer.alloc(0)) {
  const header = Buffer.alloc(HEADER)
  header.writeUInt32BE(streamId, 0)
  header[4] = type
  header.writeUInt32BE(payload.length, 5)
  return Buffer.concat([header, payload])
}

const u32 = (n) => {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(n)
  return b
}

/**
 * One side of a 4.13 tunnel on `socket` (role 'edge' or 'hub'). First a line (the hub's answer
 * for an edge, the auth line for a hub), then frames. See the methods for what it offers.
 */
class Peer413 {
  constructor(socket, role, { answerPings }) {
    this.socket = socket
    this.role = role
    this.types = ROLE_TYPES[role]
    this.answerPings = answerPings
    this.frames = [] // every frame received: { streamId, type, payload }
    this.violations = [] // what arrived outside the documentation, as text
    this.bytesReceived = 0 // application bytes received, line included
    this.pingsAnswered = 0
    this.closed = false
    this.line = null // the first line, without its '\n' (null until / unless it arrives)
    this.sendCredit = new Map() // stream -> bytes we may still send
    this.creditReceived = new Map() // stream -> sum of WINDOW_UPDATE(_BACK) increments received
    this.dataSent = new Map() // stream -> DATA(_BACK) bytes sent
    this.dataReceived = new Map() // stream -> [Buffer] of DATA(_BACK) payloads
    this.pingsSent = 0
    this.queue = []
    this.waiters = new Set()
    this.creditWaiters = new Set()
    this.buffer = Buffer.alloc(0)
    this.lineSeen = false
    let lineResolve
    /** Resolves with the first line (text without '\n'), or null if the connection ended first. */
    this.firstLine = new Promise((resolve) => (lineResolve = resolve))
    this.resolveLine = lineResolve
    this.whenClosed = new Promise((resolve) => socket.once('close', resolve)).then(() => {
      this.closed = true
      this.resolveLine(null)
      for (const waiter of [...this.waiters, ...this.creditWaiters]) waiter.reject(new Error(`4.13 ${role} peer: connection closed`))
    })
    socket.on('error', (err) => (this.error = err))
    socket.on('data', (chunk) => this.onData(chunk))
  }

  onData(chunk) {
    this.bytesReceived += chunk.length
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk
    if (!this.lineSeen) {
      const end = this.buffer.indexOf(0x0a)
      if (end === -1) {
        if (this.buffer.length > MAX_LINE) this.fail(`first line longer than ${MAX_LINE} bytes`)
        return
      }
      this.lineSeen = true
      this.line = this.buffer.subarray(0, end).toString('utf8')
      this.buffer = this.buffer.subarray(end + 1)
      this.resolveLine(this.line)
    }
    while (this.buffer.length >= HEADER) {
      const length = this.buffer.readUInt32BE(5)
      if (this.buffer.length < HEADER + length) break
      const frame = {
        streamId: this.buffer.readUInt32BE(0),
        type: this.buffer[4],
        payload: Buffer.from(this.buffer.subarray(HEADER, HEADER + length)),
      }
      this.buffer = this.buffer.subarray(HEADER + length)
      this.onFrame(frame)
    }
  }

  fail(text) {
    this.violations.push(text)
    this.socket.destroy()
  }

  onFrame(frame) {
    const { streamId, type, payload } = frame
    this.frames.push(frame)
    const name = frameName(type)
    const expected = RECEIVES[this.role].has(type) || (type === T413.PONG && this.pingsSent > 0)
    if (!expected) this.violations.push(`${this.role} received ${name} (stream ${streamId}, ${payload.length} bytes)`)
    if ([T413.CLOSE, T413.CLOSE_BACK, T413.UDP_CLOSE].includes(type) && payload.length !== 0) {
      this.violations.push(`${name} on stream ${streamId} with a ${payload.length}-byte payload (documented: empty)`)
    }
    if ([T413.WINDOW_UPDATE, T413.WINDOW_UPDATE_BACK].includes(type) && payload.length !== 4) {
      this.violations.push(`${name} on stream ${streamId} with a ${payload.length}-byte payload (documented: u32)`)
    }
    if ([T413.CONFIG, T413.PING, T413.PONG].includes(type) && streamId !== 0) {
      this.violations.push(`${name} on stream ${streamId} (documented: stream 0)`)
    }

    if (type === T413.PING && this.answerPings) {
      this.send(0, T413.PONG, payload)
      this.pingsAnswered++
      return
    }
    // Send credit: the stream starts with the documented window, WINDOW_UPDATE adds to it.
    if (type === T413.OPEN && this.role === 'hub') this.sendCredit.set(streamId, WINDOW_413)
    if (type === this.types.creditIn && payload.length === 4) {
      const increment = payload.readUInt32BE(0)
      this.creditReceived.set(streamId, (this.creditReceived.get(streamId) ?? 0) + increment)
      this.sendCredit.set(streamId, (this.sendCredit.get(streamId) ?? 0) + increment)
      for (const waiter of this.creditWaiters) waiter.check()
    }
    // Data we receive is consumed at once: its credit goes straight back.
    if (type === this.types.dataIn && payload.length > 0) {
      if (!this.dataReceived.has(streamId)) this.dataReceived.set(streamId, [])
      this.dataReceived.get(streamId).push(payload)
      this.send(streamId, this.types.credit, u32(payload.length))
    }

    this.queue.push(frame)
    for (const waiter of this.waiters) {
      const index = this.queue.findIndex(waiter.filter)
      if (index !== -1) {
        this.waiters.delete(waiter)
        waiter.resolve(this.queue.splice(index, 1)[0])
      }
    }
  }

  /** The first unconsumed received frame matching `filter` (PINGs answered here are not queued). */
  nextFrame(filter = () => true, timeoutMs = GUARD_MS, what = 'a frame') {
    const index = this.queue.findIndex(filter)
    if (index !== -1) return Promise.resolve(this.queue.splice(index, 1)[0])
    if (this.closed) return Promise.reject(new Error(`4.13 ${this.role} peer closed before ${what}`))
    let waiter
    const promise = new Promise((resolve, reject) => {
      waiter = { filter, resolve, reject }
      this.waiters.add(waiter)
    })
    return withTimeout(promise, timeoutMs, `${what} at the 4.13 ${this.role} peer`).finally(() => this.waiters.delete(waiter))
  }

  send(streamId, type, payload = Buffer.alloc(0)) {
    if (!this.socket.destroyed) this.socket.write(encodeFrame413(streamId, type, payload))
  }

  /** Sends `bytes` on a stream as DATA (edge) / DATA_BACK (hub) in CHUNK_413 frames, within its credit. */
  async sendData(streamId, bytes) {
    const type = this.types.data
    for (let offset = 0; offset < bytes.length; offset += CHUNK_413) {
      const chunk = bytes.subarray(offset, offset + CHUNK_413)
      if ((this.sendCredit.get(streamId) ?? 0) < chunk.length) await this.waitCredit(streamId, chunk.length)
      this.sendCredit.set(streamId, this.sendCredit.get(streamId) - chunk.length)
      this.dataSent.set(streamId, (this.dataSent.get(streamId) ?? 0) + chunk.length)
      this.send(streamId, type, chunk)
    }
  }

  waitCredit(streamId, n) {
    let waiter
    const promise = new Promise((resolve, reject) => {
      waiter = { reject, check: () => (this.sendCredit.get(streamId) ?? 0) >= n && resolve() }
      this.creditWaiters.add(waiter)
    })
    return withTimeout(promise, GUARD_MS, `send credit on stream ${streamId}`).finally(() => this.creditWaiters.delete(waiter))
  }

  /** Everything received as DATA / DATA_BACK on a stream so far. */
  dataOf(streamId) {
    return Buffer.concat(this.dataReceived.get(streamId) ?? [])
  }

  /** CLOSE (edge) / CLOSE_BACK (hub), empty as documented. */
  closeStream(streamId) {
    this.send(streamId, this.types.close)
  }

  /** Sends UDP_DATA (edge) / UDP_DATA_BACK (hub) on a session. */
  sendDatagram(sessionId, bytes) {
    this.send(sessionId, this.types.datagram, bytes)
  }

  udpClose(sessionId) {
    this.send(sessionId, T413.UDP_CLOSE)
  }

  /** Sends a PING with `payload` on stream 0; resolves with the PONG echoing it. */
  ping(payload, timeoutMs = GUARD_MS) {
    this.pingsSent++
    const pong = this.nextFrame((f) => f.type === T413.PONG && f.payload.equals(payload), timeoutMs, `the PONG to a ${payload.length}-byte PING`)
    this.send(0, T413.PING, payload)
    return pong
  }

  end() {
    this.socket.end()
  }

  close() {
    this.socket.destroy()
    return this.whenClosed
  }
}

/**
 * An edge: TLS to 127.0.0.1:`hubPort` without ALPN, sends the auth line. Resolves once TLS is
 * up (or the connection failed: then `tlsError` is set and the peer is closed). `answer`
 * resolves with the parsed JSON answer, or null when the hub closed without a line.
 */
export async function connect413Edge(hubPort, edgeId, secret, { answerPings = true, host = '127.0.0.1' } = {}) {
  const socket = tls.connect({ host, port: hubPort, rejectUnauthorized: false })
  const peer = new Peer413(socket, 'edge', { answerPings })
  peer.answer = peer.firstLine.then((line) => (line === null ? null : JSON.parse(line)))
  peer.answer.catch(() => {})
  const secured = await withTimeout(
    new Promise((resolve) => {
      socket.once('secureConnect', () => resolve(true))
      socket.once('close', () => resolve(false))
    }),
    GUARD_MS,
    'the TLS handshake of the 4.13 edge',
  )
  if (!secured) {
    peer.tlsError = peer.error ?? new Error('closed during the TLS handshake')
    return peer
  }
  peer.alpnProtocol = socket.alpnProtocol
  socket.write(`EDGE ${edgeId} ${secret}\n`)
  /** Opens a TCP stream: OPEN with the PROXY v1 line; the stream may send a window at once. */
  peer.open = (streamId, proxyLine) => {
    peer.sendCredit.set(streamId, WINDOW_413)
    peer.send(streamId, T413.OPEN, Buffer.from(proxyLine, 'latin1'))
  }
  /** Opens a UDP session: UDP_OPEN with a PROXY v2 header. */
  peer.udpOpen = (sessionId, proxyV2Header) => peer.send(sessionId, T413.UDP_OPEN, proxyV2Header)
  return peer
}

/**
 * A hub: TLS server on 127.0.0.1:0 with a generated certificate, no ALPN. For each edge it reads
 * the auth line and writes `answer(authLine, session)`: an object (sent as one JSON line), a
 * string (sent as is) or null (the connection is closed). `sessions` holds every edge's
 * session: a peer with `authLine`, sendConfig(obj) and the common methods.
 */
export async function start413Hub({ answer, answerPings = false } = {}) {
  const { certPem, keyPem, fingerprint } = remoteingress.generateHubCertificate()
  const sessions = []
  const sockets = new Set()
  const server = tls.createServer({ cert: certPem, key: keyPem }, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    const session = new Peer413(socket, 'hub', { answerPings })
    session.alpnProtocol = socket.alpnProtocol
    session.sendConfig = (config) => session.send(0, T413.CONFIG, Buffer.from(JSON.stringify(config)))
    sessions.push(session)
    session.firstLine.then((line) => {
      if (line === null) return
      session.authLine = `${line}\n`
      const reply = answer(session.authLine, session)
      if (reply == null) socket.destroy()
      else socket.write(typeof reply === 'string' ? reply : `${JSON.stringify(reply)}\n`)
    })
  })
  server.on('tlsClientError', () => {})
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    server,
    sessions,
    port: server.address().port,
    /** The key's fingerprint, for an edge that pins it. */
    fingerprint,
    /** All violations seen by any session. */
    violations: () => sessions.flatMap((s) => s.violations),
    async close() {
      for (const socket of sockets) socket.destroy()
      await new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
