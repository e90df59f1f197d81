// Processes, executables and ports: findExecutable (for external servers such as nginx and
// coturn), freeUdpAndTcpPort, and this process's resource counts for leak and restart tests
// (processCounts, countsComeBack).
import net from 'node:net'
import dgram from 'node:dgram'
import path from 'node:path'
import fs from 'node:fs'
import { TARGET_ADDRESS } from './env.mjs'
import { GUARD_MS, waitFor } from './timing.mjs'

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

// ---------------------------------------------------------------------------------------------
// Resource counts, for leak and restart tests

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
