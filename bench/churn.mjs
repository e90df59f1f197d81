#!/usr/bin/env node
// Short-connection churn: N connections in a row through one tunnel, each a small request and
// reply, with hub and edge memory (RSS) read before, during and after.
//
//   node bench/churn.mjs [--connections 10000] [--concurrency 1]
//
// Hub and edge run as CLI child processes so their memory is their own; the target is an
// in-process echo server on 127.0.0.1, the edge listens on 127.0.0.2. Bounded by count and by
// a 10-minute deadline; only the processes started here are ended.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'

const { values: opts } = parseArgs({
  options: { connections: { type: 'string', default: '10000' }, concurrency: { type: 'string', default: '1' } },
})
const TOTAL = Number(opts.connections)
const CONCURRENCY = Number(opts.concurrency)
const DEADLINE = Date.now() + 10 * 60_000
const CLI = path.join(path.dirname(new URL(import.meta.url).pathname), '..', 'bin', 'remoteingress.js')
const WORK = fs.mkdtempSync(path.join(os.tmpdir(), 'ri-churn-'))
const children = []

const rssKiB = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1])
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function connectable(host, port) {
  for (let i = 0; i < 300; i++) {
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host, port }, () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    await sleep(100)
  }
  throw new Error(`${host}:${port} never accepted`)
}

/** Echo target that skips the PROXY v1 line. */
const target = net.createServer((socket) => {
  let headerDone = false
  socket.on('data', (chunk) => {
    if (!headerDone) {
      const end = chunk.indexOf('\r\n')
      if (end < 0) return
      headerDone = true
      chunk = chunk.subarray(end + 2)
    }
    if (chunk.length) socket.write(chunk)
  })
  socket.on('end', () => socket.end())
  socket.on('error', () => {})
})
await new Promise((r) => target.listen(0, '127.0.0.1', r))
const port = target.address().port

function oneRequest(i) {
  return new Promise((resolve) => {
    const payload = `request ${i} ${'x'.repeat(200)}`
    const s = net.connect({ host: '127.0.0.2', port }, () => s.end(payload))
    let got = ''
    s.setEncoding('utf8')
    s.on('data', (d) => { got += d })
    s.on('end', () => resolve(got === payload))
    s.on('error', () => resolve(false))
  })
}

try {
  fs.writeFileSync(path.join(WORK, 'edges.json'), JSON.stringify([{ id: 'churn', secret: 'churn-secret', listenPorts: [port] }]))
  const spawnCli = (args, name) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', fs.openSync(path.join(WORK, `${name}.log`), 'w')] })
    children.push(child)
    return child
  }
  const hub = spawnCli(['hub', '--edges', path.join(WORK, 'edges.json'), '--tunnel-port', '0', '--bind', '127.0.0.1'], 'hub')
  // The hub picks a free port; read it from its log.
  let hubPort
  for (let i = 0; i < 300 && !hubPort; i++) {
    hubPort = /tunnelPort=(\d+)/.exec(fs.readFileSync(path.join(WORK, 'hub.log'), 'utf8'))?.[1]
    if (!hubPort) await sleep(100)
  }
  if (!hubPort) throw new Error('hub did not start')
  const edge = spawnCli(['edge', '--hub-host', '127.0.0.1', '--hub-port', hubPort, '--edge-id', 'churn', '--secret', 'churn-secret', '--bind', '127.0.0.2', '--no-stun'], 'edge')
  await connectable('127.0.0.2', port)
  await sleep(500)
  const sample = (label) => {
    const row = { label, hubKiB: rssKiB(hub.pid), edgeKiB: rssKiB(edge.pid) }
    console.log(`${label.padEnd(28)} hub ${String(row.hubKiB).padStart(7)} KiB   edge ${String(row.edgeKiB).padStart(7)} KiB`)
    return row
  }
  sample('before')
  let ok = 0
  let failed = 0
  const startedAt = Date.now()
  let next = 0
  const worker = async () => {
    while (next < TOTAL && Date.now() < DEADLINE) {
      const i = next++
      if (await oneRequest(i)) ok++
      else failed++
      if ((i + 1) % Math.max(1, Math.floor(TOTAL / 4)) === 0) sample(`after ${i + 1} connections`)
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  const seconds = (Date.now() - startedAt) / 1000
  console.log(`${ok} ok, ${failed} failed, ${(ok / seconds).toFixed(0)} connections/s (concurrency ${CONCURRENCY})`)
  await sleep(3000)
  sample('3 s after the last one')
  if (failed > 0 || ok !== TOTAL) process.exitCode = 1
} finally {
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM')
  target.close()
  fs.rmSync(WORK, { recursive: true, force: true })
}
