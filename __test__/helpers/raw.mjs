// Raw peers: speak the tunnel protocol by hand, to send and inspect frames byte by byte
// (FrameType, ALPN, encodeFrame, connectRawEdge, startRawHub).
import tls from 'node:tls'
import { remoteingress } from './env.mjs'
import { GUARD_MS, withTimeout, once } from './timing.mjs'
import { SECRET } from './tunnel.mjs'

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
  GOAWAY: 0x0f,
  OPEN_ACK: 0x10,
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
